"""The OpenAI-compatible judge on the official ``openai`` client, against the loopback stub server
(a real HTTP server on 127.0.0.1): one retry budget and one backoff schedule over the client's
and the judge's retries, the key (explicit, read at each request, absent from debug logs), the
optional dependency, and the judge named beside every score and in every summary line."""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lightning_aug_dpo import MMVetCallback
from lightning_aug_dpo.eval import (
    HFJudge,
    JudgeError,
    JudgeUnavailable,
    OpenAIJudge,
    RuleJudge,
    load_llava_bench,
    load_mmvet_dir,
    read_scores,
)
from lightning_aug_dpo.eval.pipeline import finish_llava_bench, finish_mmvet
from lightning_aug_dpo.eval.stub_server import StubChatServer

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "LAD_OPENAI_JUDGE_TEST_KEY"


def judge(server: StubChatServer, **kwargs) -> OpenAIJudge:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_retries", 4)
    kwargs.setdefault("api_key_env", KEY_ENV)
    return OpenAIJudge(base_url=server.base_url, model="judge-model", **kwargs)


# ---------------------------------------------------------------- retries


def test_the_judges_backoff_replaces_the_clients_schedule() -> None:
    with StubChatServer(lambda body: "1.0") as server:
        server.fail_next("500", "500", "500")
        j = judge(server, max_retries=3)
        start = time.monotonic()
        assert j.grade("q", "a", "p").score == 1.0
        elapsed = time.monotonic() - start
    # the client's own schedule would wait (0.5 + 1 + 2) s x [0.75, 1] >= 2.6 s
    assert j.requests_sent == 4 and len(server.requests) == 4 and elapsed < 1.5


def test_retry_after_is_honoured_and_capped_by_max_backoff() -> None:
    with StubChatServer(lambda body: "1.0", retry_after="0.6") as server:
        server.fail_next("429")
        start = time.monotonic()
        judge(server, max_backoff=60.0).grade("q", "a", "p1")
        waited = time.monotonic() - start
        server.fail_next("429")
        start = time.monotonic()
        judge(server, max_backoff=0.05).grade("q", "a", "p2")
        capped = time.monotonic() - start
    assert len(server.requests) == 4 and waited >= 0.6 and capped < 0.45


def test_one_retry_budget_for_the_client_and_the_judge() -> None:
    """A 500 is retried by the client; a 200 that is no chat completion and a 425 (which the
    client does not retry) by the judge; ``max_retries`` bounds them all together."""
    with StubChatServer(lambda body: "0.5") as server:
        server.fail_next("500", "garbage", "425", "500", "500")
        j = judge(server, max_retries=3)
        with pytest.raises(JudgeUnavailable, match=r"after 4 attempts; last error HTTP 500"):
            j.grade("q", "a", "p")
        assert len(server.requests) == 4 and j.requests_sent == 4
        server.faults.clear()
        server.fail_next("garbage", "425", "not_chat")
        assert judge(server, max_retries=3).grade("q", "a", "p").score == 0.5
        assert len(server.requests) == 8


# ---------------------------------------------------------------- the key


def test_the_key_is_explicit_read_at_each_request_and_absent_without_one(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-implicit")  # never used unless configured
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin")
    monkeypatch.setenv(KEY_ENV, "sk-first")
    with StubChatServer(lambda body: "0.5") as server:
        j = judge(server)
        j.grade("q", "a", "p1")
        monkeypatch.setenv(KEY_ENV, "sk-second")  # a rotated key reaches the next request
        j.grade("q", "a", "p2")
        monkeypatch.delenv(KEY_ENV)  # unset: no header at all
        j.grade("q", "a", "p3")
        judge(server, api_key_env=None).grade("q", "a", "p4")
        judge(server, api_key_env="OPENAI_API_KEY").grade("q", "a", "p5")
    assert server.auth_headers == [
        "Bearer sk-first", "Bearer sk-second", None, None, "Bearer sk-implicit"
    ]  # fmt: skip


def test_the_clients_debug_logs_never_carry_the_key(monkeypatch, caplog) -> None:
    key = f"sk-test-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    for name in ("openai", "httpx2", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)
    with StubChatServer(lambda body: "0.5", error_detail="echo {auth}") as server:
        judge(server).grade("q", "a", "p")
        server.fail_next("500", "401")
        with pytest.raises(JudgeError, match=r"HTTP 401 .*echo Bearer \*\*\*") as info:
            judge(server).grade("q", "a", "p2")
    assert set(server.auth_headers) == {f"Bearer {key}"}
    assert any(r.name.startswith("openai") for r in caplog.records)  # the client did log
    assert key not in caplog.text and key not in str(info.value)


def test_without_openai_the_package_imports_and_the_judge_says_how_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        import lightning_aug_dpo.eval as ev
        assert "openai" not in sys.modules, "importing the package imported openai"
        sys.modules["openai"] = None  # as if it were not installed
        assert ev.RuleJudge().grade("q", "a", "a").score == 1.0
        try:
            ev.OpenAIJudge(base_url="http://127.0.0.1:9/v1", model="m")
        except ev.JudgeError as err:
            print(err)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OpenAIJudge needs the openai package" in result.stdout
    assert "pip install 'lightning_aug_dpo[judge]'" in result.stdout


# ---------------------------------------------------------------- the judge beside every score


def mmvet_dir(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(root / "images" / "a.png")
    rows = {f"v1_{i}": {"imagename": "a.png", "question": f"Q{i}?", "answer": "red",
                        "capability": ["rec"]} for i in range(2)}  # fmt: skip
    (root / "mm-vet.json").write_text(json.dumps(rows))
    return root


def llava_dir(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(root / "images" / "a.jpg")
    rows = [{"question_id": q, "image": "a.jpg", "text": f"Q{q}?", "category": "conv"}
            for q in (0, 1)]  # fmt: skip
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "context.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "Red."}) + "\n")
    refs = [{"question_id": q, "text": "Red.", "answer_id": f"g{q}"} for q in (0, 1)]
    (root / "answers_gpt4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return root


def test_scores_and_summaries_name_the_judge_beside_the_official_files(tmp_path: Path) -> None:
    bench = load_mmvet_dir(mmvet_dir(tmp_path / "mmvet"))
    answers = {"v1_0": "red", "v1_1": "blue"}
    rule = finish_mmvet(bench, answers, RuleJudge(), tmp_path / "rule")
    assert (rule["judge_name"], rule["judge_models"]) == ("rule", ["rule"])
    assert rule["table"].splitlines()[0] == "MM-Vet (2 questions, 1 grading run; judge: rule)"
    assert read_scores(tmp_path / "rule")["judge_name"] == "rule"
    assert HFJudge("models/judge-7b").label() == "hf:models/judge-7b"

    out = tmp_path / "http"

    def respond(body: dict) -> str:  # LLaVA-Bench reviews have a system message
        return "8 4\nok" if len(body["messages"]) == 2 else "0.5"

    with StubChatServer(respond) as server:
        record = finish_mmvet(bench, answers, judge(server), out)
        llava = finish_llava_bench(
            load_llava_bench(llava_dir(tmp_path / "llava")), {0: "red", 1: "red"},
            judge(server), tmp_path / "llava_out",
        )  # fmt: skip
        server.fail_next("401")
        failed = finish_mmvet(bench, answers, judge(server), tmp_path / "failed")
    scores = read_scores(out)
    assert (scores["judge_name"], scores["judge_models"]) == ("openai:judge-model", ["stub-judge"])
    assert scores["judge"]["model"] == "judge-model" and scores["scores"]["total"] == 50.0
    judged = "judge: openai:judge-model (replies from stub-judge))"
    assert record["table"].splitlines()[0] == f"MM-Vet (2 questions, 1 grading run; {judged}"
    # the official files keep the official structures: the judge's name is not added to them
    assert json.loads((out / "answers.json").read_text()) == answers
    grades = json.loads((out / "grades.json").read_text())
    assert grades["v1_0"] == {"model": ["stub-judge"], "content": ["0.5"], "score": [0.5]}
    assert llava["judge_name"] == "openai:judge-model" and llava["judge_models"] == ["stub-judge"]
    assert llava["table"].splitlines()[0].endswith(f"0 failed reviews; {judged}")
    assert llava["scores"]["overall"] == 50.0
    row = json.loads((tmp_path / "llava_out" / "reviews-run1.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "question_id", "answer1_id", "answer2_id", "category", "content",
                        "tuple", "model", "failed"}  # fmt: skip
    # an outage still says which judge it was
    assert not failed["complete"] and failed["judge_name"] == "openai:judge-model"


class RedModel:
    """Answers ``"red"``: just enough of a module for ``generate_answers``."""

    def preprocess_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(len(images), 3, 4, 4)

    def generate(self, pixels, questions, max_new_tokens=64, use_reference=True) -> list[str]:
        return ["red"] * len(questions)


def test_the_callbacks_warning_names_the_judge(tmp_path: Path) -> None:
    trainer = SimpleNamespace(
        global_rank=0, world_size=1, is_global_zero=True, current_epoch=0, loggers=[],
        default_root_dir=str(tmp_path / "run"),
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )  # fmt: skip
    with StubChatServer(lambda body: "1.0") as server:
        server.fail_next("401")
        cb = MMVetCallback(data_dir=str(mmvet_dir(tmp_path / "mmvet")), judge=judge(server))
        with pytest.warns(UserWarning, match=r"incomplete \(.*HTTP 401.*judge: openai:judge-model"):
            assert cb.evaluate(trainer, RedModel()) == {"mmvet/complete": 0.0}
