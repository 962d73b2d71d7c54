"""Judges against a real OpenAI-protocol HTTP server on loopback, and a real local HF model.

The stub server (``eval/stub_server.py``) is a ``ThreadingHTTPServer`` on 127.0.0.1 started by
each test; it answers 429, 5xx, slowly, with garbage or by dropping the connection on request.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from lightning_aug_dpo.eval import (
    Grade,
    HFJudge,
    JudgeCache,
    JudgeError,
    JudgeUnavailable,
    LLaVABenchItem,
    MMVetItem,
    OpenAIJudge,
    grade_mmvet,
    grade_mmvet_outcome,
    review_llava_bench,
    runs_of,
    score_llava_bench,
    write_grades,
)
from lightning_aug_dpo.eval.prompts import MMVET_PROMPT, MMVET_RETRY_SUFFIX
from lightning_aug_dpo.eval.stub_server import StubChatServer

KEY_ENV = "LAD_TEST_JUDGE_KEY"
SECRET = "sk-test-0123456789-very-secret"

ITEMS = {
    f"v1_{i}": MMVetItem(f"v1_{i}", f"{i}.png", f"Q{i}?", f"A{i} <AND> B{i}", ("rec",))
    for i in range(4)
}
ANSWERS = {qid: f"pred {qid}" for qid in ITEMS}
LLAVA_ITEM = LLaVABenchItem(0, "a.jpg", "What is it?", "conv", "A dog.", "A dog.", "g0")


def judge(server: StubChatServer, **kwargs) -> OpenAIJudge:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_retries", 4)
    kwargs.setdefault("api_key_env", KEY_ENV)
    return OpenAIJudge(base_url=server.base_url, model="judge-model", **kwargs)


def test_mmvet_grade_request_follows_the_official_protocol() -> None:
    with StubChatServer(lambda body: "0.7 because") as server:
        grade = judge(server).grade("How many?", "2<AND>3", "two and three", run=1)
    assert grade == Grade(0.7, "0.7", "stub-judge")  # the model the server reports
    (body,) = server.requests
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == (
        "judge-model",
        0.0,
        3,
        1,
    )
    assert body["messages"] == [
        {"role": "user", "content": MMVET_PROMPT + "\nHow many? | 2 <AND> 3 | two and three | "}
    ]


def test_retries_429_5xx_dropped_and_garbage_then_succeeds() -> None:
    with StubChatServer(lambda body: "1.0") as server:
        server.fail_next("429", "500", "drop", "garbage", "503")
        j = judge(server, max_retries=5)
        assert j.grade("q", "a", "p").score == 1.0
    assert j.requests_sent == 6 and len(server.requests) == 6


def test_slow_reply_times_out_and_is_retried() -> None:
    with StubChatServer(lambda body: "0.5", slow_seconds=1.0) as server:
        server.fail_next("slow")
        j = judge(server, timeout=0.3)
        start = time.monotonic()
        assert j.grade("q", "a", "p").score == 0.5
    assert j.requests_sent == 2 and time.monotonic() - start < 1.0


def test_outage_raises_unavailable_after_all_retries() -> None:
    with StubChatServer() as server:
        server.fail_next(*["503"] * 10)
        with pytest.raises(JudgeUnavailable, match=r"no usable reply after 3 attempts.*HTTP 503"):
            judge(server, max_retries=2).grade("q", "a", "p")
        assert len(server.requests) == 3


def test_unreachable_server_is_an_outage() -> None:
    with StubChatServer() as server:
        url = server.base_url
    j = OpenAIJudge(base_url=url, model="m", max_retries=1, backoff=0.01, timeout=1)
    with pytest.raises(JudgeUnavailable, match=r"URLError|ConnectionRefused"):
        j.grade("q", "a", "p")


def test_refused_request_fails_at_once_without_leaking_the_key(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with StubChatServer() as server:
        server.fail_next("401")
        with pytest.raises(JudgeError, match=f"HTTP 401 .*key read from \\${KEY_ENV}") as info:
            judge(server).grade("q", "a", "p")
    assert len(server.requests) == 1 and SECRET not in str(info.value)


def test_unparsable_replies_retry_hotter_then_score_zero() -> None:
    with StubChatServer(lambda body: "Correct!") as server:
        grade = judge(server).grade("q", "a", "p")
    assert grade == Grade(0.0, "Correct!", "stub-judge")
    assert [b["temperature"] for b in server.requests] == [0.0, 0.5, 1.0, 1.5, 2.0]
    contents = [b["messages"][0]["content"] for b in server.requests]
    assert not contents[0].endswith(MMVET_RETRY_SUFFIX)
    assert all(c.endswith(MMVET_RETRY_SUFFIX) for c in contents[1:])


def test_unparsable_then_valid_reply() -> None:
    replies = iter(["hmm", "1.5", "0.3"])  # 1.5 is outside [0, 1]: also unparsable
    with StubChatServer(lambda body: next(replies)) as server:
        assert judge(server).grade("q", "a", "p") == Grade(0.3, "0.3", "stub-judge")
    assert len(server.requests) == 3


def test_llava_review_and_failed_parse() -> None:
    replies = iter(["8 6\nAssistant 2 is vaguer.", "I cannot decide."])
    with StubChatServer(lambda body: next(replies)) as server:
        j = judge(server)
        good = j.review(LLAVA_ITEM, "a cat", run=0)
        bad = j.review(LLAVA_ITEM, "a cat", run=1)
    assert (good.scores, good.failed, good.model) == ([8.0, 6.0], False, "stub-judge")
    assert (bad.scores, bad.failed) == ([-1.0, -1.0], True)
    assert len(server.requests) == 2  # LLaVA-Bench does not retry an unparsable review
    body = server.requests[0]
    assert (body["temperature"], body["max_tokens"]) == (0.2, 1024)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "[Assistant 2]\na cat\n\n[End of Assistant 2]" in body["messages"][1]["content"]


def test_review_outcome_scores_and_counts_failures(tmp_path: Path) -> None:
    items = {q: LLaVABenchItem(q, "a.jpg", "Q", "conv", "A dog.", "ref", f"g{q}") for q in range(3)}

    def respond(body: dict) -> str:
        return "garbage" if "answer 2" in body["messages"][1]["content"] else "8 4\nok"

    with StubChatServer(respond) as server:
        outcome = review_llava_bench(
            judge(server), items, {q: f"answer {q}" for q in items}, runs=2
        )
    assert outcome.complete
    rows = runs_of(outcome)
    assert [r["answer1_id"] for r in rows[0]] == ["g0", "g1", "g2"]
    scores = score_llava_bench(rows, question_ids=items)
    assert scores.mean["overall"] == 50.0 and scores.failed == 2


def test_cache_makes_a_rerun_free_and_runs_distinct(tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    with StubChatServer(lambda body: f"0.{body['seed'] + 1}") as server:
        first = grade_mmvet(judge(server, cache_path=str(cache)), ITEMS, ANSWERS, runs=2)
        assert len(server.requests) == 8
        second = grade_mmvet(judge(server, cache_path=str(cache)), ITEMS, ANSWERS, runs=2)
        assert len(server.requests) == 8  # nothing sent again
    assert first == second
    assert [g.score for g in first["v1_0"]] == [0.1, 0.2]  # run index -> seed -> distinct
    assert len(JudgeCache(cache)) == 8
    with cache.open("a") as handle:  # a torn last line (killed process) is ignored
        handle.write('{"key": "abc", "val')
    assert len(JudgeCache(cache)) == 8


def test_outage_mid_grading_keeps_partial_results_and_resumes(tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    calls = {"n": 0}

    def respond(body: dict) -> str:
        calls["n"] += 1
        if calls["n"] == 2:  # the endpoint goes down after answering twice
            server.fail_next(*["503"] * 20)
        return "1.0"

    with StubChatServer(respond) as server:
        outcome = grade_mmvet_outcome(
            judge(server, cache_path=str(cache), max_retries=1, concurrency=1), ITEMS, ANSWERS
        )
        assert not outcome.complete and "HTTP 503" in outcome.error
        assert outcome.pending == ["v1_2", "v1_3"]
        assert [outcome.results[q][0].score for q in ("v1_0", "v1_1")] == [1.0, 1.0]
        server.faults.clear()
        sent = len(server.requests)
        resumed = grade_mmvet_outcome(judge(server, cache_path=str(cache)), ITEMS, ANSWERS)
        assert resumed.complete and len(server.requests) == sent + 2  # only the pending two


def test_concurrency_is_bounded() -> None:
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def respond(body: dict) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return "1.0"

    items = {f"v1_{i}": ITEMS["v1_0"] for i in range(12)}
    with StubChatServer(respond) as server:
        grade_mmvet(judge(server, concurrency=3), items, {q: "p" for q in items})
    assert state["max"] == 3


def test_api_key_only_in_the_header(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    cache = tmp_path / "cache.jsonl"
    with StubChatServer(lambda body: "0.5") as server:
        j = judge(server, cache_path=str(cache))
        grades = grade_mmvet(j, ITEMS, ANSWERS)
        write_grades(tmp_path / "grades.json", grades)
        (tmp_path / "identity.json").write_text(json.dumps(j.identity()))
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert all(SECRET not in json.dumps(body) for body in server.requests)
    for path in tmp_path.iterdir():
        assert SECRET not in path.read_text(), path
    assert j.identity()["api_key_env"] == KEY_ENV
    assert SECRET not in repr(vars(j))


def test_official_prompt_file_is_used_and_recorded(tmp_path: Path) -> None:
    prompt = tmp_path / "mmvet_prompt.txt"
    prompt.write_text("OFFICIAL PROMPT\nQuestion | Ground truth | Prediction | Correctness\n")
    with StubChatServer(lambda body: "1.0") as server:
        j = judge(server, mmvet_prompt_file=str(prompt))
        j.grade("q", "a", "p")
    text = server.requests[0]["messages"][0]["content"]
    assert (
        text == "OFFICIAL PROMPT\nQuestion | Ground truth | Prediction | Correctness\nq | a | p | "
    )
    assert j.identity()["mmvet_prompt"]["source"] == f"file:{prompt}"
    assert OpenAIJudge(base_url="http://x", model="m").identity()["mmvet_prompt"]["source"] == (
        "lightning_aug_dpo:mmvet-v1"
    )


# ---------------------------------------------------------------- local HF judge


@pytest.fixture(scope="module")
def tiny_causal_lm(tiny_llava_dir: Path, tmp_path_factory) -> Path:
    """A real tiny Llama causal LM (the tiny LLaVA's text half), saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-lm")
    torch.manual_seed(0)
    LlamaForCausalLM(AutoConfig.from_pretrained(tiny_llava_dir).text_config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llava_dir).save_pretrained(out)
    return out


def test_hf_judge_runs_a_local_model(tiny_causal_lm: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache.jsonl"
    j = HFJudge(str(tiny_causal_lm), cache_path=str(cache))
    messages = [{"role": "user", "content": "Is a red bus red?"}]
    reply = j.chat(messages, 0.0, 4, 0)
    # greedy: exactly what generate() gives for the chat-templated prompt
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
    expected = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert reply.text == expected and reply.model == tiny_causal_lm.name
    # a random model does not reply a number: 5 attempts (cached), then 0.0
    grade = j.grade("q", "a", "p")
    assert grade.score == 0.0 and grade.model == tiny_causal_lm.name
    assert len(JudgeCache(cache)) == 5
    review = HFJudge(str(tiny_causal_lm), llava_max_tokens=4).review(LLAVA_ITEM, "a dog")
    assert review.failed and review.scores == [-1.0, -1.0]


def test_hf_judge_bad_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match="cannot load a causal LM judge"):
        HFJudge(str(tmp_path / "missing")).chat([{"role": "user", "content": "x"}], 0.0, 2, 0)
