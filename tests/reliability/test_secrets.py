"""Secrets: with a judge key in the environment, no file a run writes and nothing it prints holds
the key, while the judge provably sends it (the loopback stub server records every
``Authorization`` header, and echoes the key in its error bodies as a careless server would).

``find_key`` searches bytes for the key as written, a long piece of it, UTF-16 and base64 (three
alignments), and inside zip members (``.ckpt`` files are zips); ``test_the_grep_finds_planted_keys``
is its negative control. The LLaVA-Bench job is covered in ``tests/test_eval_jobs.py``
(``test_llava_job_with_an_http_judge_never_writes_the_key``); the MM-Vet job is covered here.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import secrets
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightning_aug_dpo.eval import JudgeError, JudgeUnavailable, OpenAIJudge
from lightning_aug_dpo.eval.stub_server import StubChatServer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo_mmvet.yaml"
KEY_ENV = "LAD_SECRETS_TEST_KEY"
ECHO = "Incorrect API key provided: {auth}"  # the stub's error body, with the header it received


def new_key() -> str:
    """A distinctive key, new for each test."""
    return f"sk-test-{secrets.token_hex(16)}"


def key_forms(key: str) -> dict[str, bytes]:
    """Byte patterns that betray ``key``: raw, a 20-character piece, UTF-16 and base64 (each of
    the three alignments of the key in the encoded data; the blocks mixed with neighbours are
    left out)."""
    raw = key.encode("utf-8")
    forms = {"raw": raw, "piece": raw[8:28], "utf-16": key.encode("utf-16-le")}
    for shift in range(3):
        forms[f"base64+{shift}"] = base64.b64encode(b"\0" * shift + raw)[4:-4]
    return forms


def find_key(data: bytes, key: str) -> list[str]:
    """The forms of ``key`` found in ``data`` (and in its members, when it is a zip file)."""
    found = [name for name, form in key_forms(key).items() if form in data]
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                found += [f"{member}:{name}" for name in find_key(archive.read(member), key)]
    return found


def scan(root: Path, key: str) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Every regular file under ``root`` (symlinks not followed): ``({relative path: path},
    {relative path: forms of the key found})``."""
    files: dict[str, Path] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                files[str(path.relative_to(root))] = path
    hits = {
        rel: found for rel, path in files.items() if (found := find_key(path.read_bytes(), key))
    }
    return files, hits


def judge_env(key: str, tmp_path: Path) -> dict[str, str]:
    """The subprocess environment: the key, and a fresh HOME and TMPDIR (scanned as well)."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    return {
        **os.environ,
        KEY_ENV: key,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
    }


def judge(server: StubChatServer, **kwargs: Any) -> OpenAIJudge:
    """An ``OpenAIJudge`` on ``server`` reading the key from ``KEY_ENV``; no retries."""
    kwargs.setdefault("max_retries", 0)
    return OpenAIJudge(base_url=server.base_url, model="m", api_key_env=KEY_ENV, **kwargs)


# ---------------------------------------------------------------- the grep's negative control


def test_the_grep_finds_planted_keys(tmp_path: Path) -> None:
    """The search cannot pass by missing the key: every planted form is found, and only it."""
    key = new_key()
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "clean.txt").write_text(f"no key here, only {KEY_ENV} and sk-test-")
    (plant / "log.txt").write_text(f"prefix {key} suffix")
    (plant / "cut.txt").write_text(f"prefix {key[:30]}")
    (plant / "wide.bin").write_bytes(b"\x00\x01" + f"x{key}".encode("utf-16-le"))
    for shift in range(3):
        encoded = base64.b64encode(b"ab"[:shift] + f"Bearer {key}\n".encode())
        (plant / f"b64_{shift}.txt").write_bytes(b"auth=" + encoded)
    torch.save({"hyper_parameters": {"note": f"key={key}"}}, plant / "model.ckpt")
    files, hits = scan(plant, key)
    assert len(files) == 8 and "clean.txt" not in hits
    assert hits["log.txt"] == ["raw", "piece"]
    assert hits["cut.txt"] == ["piece"]  # a truncated key is still a leak
    assert hits["wide.bin"] == ["utf-16"]
    assert [hits[f"b64_{s}.txt"] for s in range(3)] == [["base64+1"], ["base64+2"], ["base64+0"]]
    assert hits["model.ckpt"] == ["raw", "piece", "model/data.pkl:raw", "model/data.pkl:piece"]


# ---------------------------------------------------------------- the judge's error paths


def test_judge_errors_never_carry_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """401 (a JudgeError at once), 503 and a 200 that is not a chat completion (JudgeUnavailable),
    a refused connection: the server echoes the key in each error body, placed so that the judge's
    cut of the body (300 characters; 200 of a non-chat reply) falls 6 characters before its end."""
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    echo_start = len(ECHO.format(auth="Bearer "))
    messages = []
    with StubChatServer() as server:
        for fault, start, cut, error in (
            ("401", len('{"error": {"message": "'), 300, JudgeError),
            ("503", len('{"error": {"message": "'), 300, JudgeUnavailable),
            ("not_chat", len("{'error': {'message': '"), 200, JudgeUnavailable),
        ):
            server.error_detail = "x" * (cut - start - echo_start - len(key) + 6) + ECHO
            server.fail_next(fault)
            with pytest.raises(error) as info:
                judge(server).grade("q", "a", "p")
            messages.append(str(info.value))
        url = server.base_url
    assert set(server.auth_headers) == {f"Bearer {key}"}  # the key was sent, in the header
    assert "HTTP 401" in messages[0] and f"key read from ${KEY_ENV}" in messages[0]
    assert "HTTP 503" in messages[1] and "not a chat-completion reply" in messages[2]
    assert all("Incorrect API key provided: Bearer ***" in m for m in messages)
    refused = OpenAIJudge(base_url=url, model="m", api_key_env=KEY_ENV, max_retries=0, timeout=2)
    with pytest.raises(JudgeUnavailable, match=r"URLError|Connection") as info:
        refused.grade("q", "a", "p")  # the server is closed
    messages.append(str(info.value))
    for message in messages:
        assert not find_key(message.encode(), key), message


# ---------------------------------------------------------------- a real fit, through the CLI


def llava_bench_dir(root: Path) -> Path:
    """A two-question LLaVA-Bench folder in the official layout."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (24, 16), (200, 0, 0)).save(root / "images" / "a.jpg")
    rows = [{"question_id": q, "image": "a.jpg", "text": f"Q{q}?", "category": c}
            for q, c in ((0, "conv"), (1, "detail"))]  # fmt: skip
    refs = [{"question_id": q, "text": "A red square.", "answer_id": f"g{q}"} for q in (0, 1)]
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "context.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "Red."}) + "\n")
    (root / "answers_gpt4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return root


def judge_config(server: StubChatServer) -> dict[str, Any]:
    """The YAML/JSON of an ``OpenAIJudge`` on ``server``: no retries, one request at a time."""
    return {"class_path": "lightning_aug_dpo.eval.OpenAIJudge",
            "init_args": {"base_url": server.base_url, "model": "stub", "api_key_env": KEY_ENV,
                          "max_retries": 0, "concurrency": 1}}  # fmt: skip


def test_a_fit_with_a_judge_key_never_writes_or_prints_it(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    """``lightning-aug-dpo fit`` on the demo (2 steps) with MM-Vet and LLaVA-Bench graded by
    OpenAIJudge over HTTP, AdapterCheckpoint (every step, last), CSV and TensorBoard loggers,
    RunSummary and the pair gallery. The LLaVA-Bench server answers 401 with the key echoed in its
    body: the epoch is incomplete and the error is written and printed, scrubbed."""
    key = new_key()
    work = tmp_path / "work"
    work.mkdir()
    (work / "demo_assets").symlink_to(demo_assets["model"].parent)
    bench = llava_bench_dir(tmp_path / "llava_bench")
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "demo"}}]  # fmt: skip
    try:
        import tensorboard  # noqa: F401

        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": "runs", "name": "tb"}})  # fmt: skip
    except ImportError:
        pass
    with (
        StubChatServer(lambda body: "0.5") as mmvet,
        StubChatServer(lambda body: "8 6\nfine", error_detail=ECHO) as llava,
    ):
        llava.fail_next("401")
        callbacks = [
            {"class_path": "lightning_aug_dpo.AdapterCheckpoint",
             "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_last": True}},
            {"class_path": "lightning_aug_dpo.MMVetCallback",
             "init_args": {"data_dir": "demo_assets/data/mmvet", "limit": 3, "max_new_tokens": 4,
                           "judge": judge_config(mmvet)}},
            {"class_path": "lightning_aug_dpo.LLaVABenchCallback",
             "init_args": {"data_dir": str(bench), "max_new_tokens": 4,
                           "judge": judge_config(llava)}},
            {"class_path": "lightning_aug_dpo.PairGalleryCallback",
             "init_args": {"every_n_steps": 1, "max_pairs": 4}},
            {"class_path": "lightning_aug_dpo.RunSummary"},
        ]  # fmt: skip
        cmd = [sys.executable, "-m", "lightning_aug_dpo", "fit", "--config", str(CONFIG),
               "--data.init_args.num_prompts=8", "--data.init_args.num_val_prompts=0",
               "--data.init_args.batch_size=4", "--trainer.max_epochs=1",
               f"--trainer.logger={json.dumps(loggers)}", "--trainer.callbacks=[]",
               *(f"--trainer.callbacks+={json.dumps(c)}" for c in callbacks)]  # fmt: skip
        env = judge_env(key, tmp_path)
        result = subprocess.run(cmd, cwd=work, capture_output=True, timeout=300, env=env)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr[-3000:]
    # the key was used: every request of both judges carried it
    assert len(mmvet.requests) == 3 and set(mmvet.auth_headers) == {f"Bearer {key}"}
    assert len(llava.requests) >= 1 and set(llava.auth_headers) == {f"Bearer {key}"}

    run = work / "runs" / "demo" / "version_0"
    files, hits = scan(tmp_path, key)  # the run's folder, HOME and TMPDIR; the inputs too
    assert hits == {}
    assert not find_key(result.stdout, key) and not find_key(result.stderr, key)

    # what was searched: the run's files, none empty, and the output that was printed
    expected = {"config.yaml", "hparams.yaml", "metrics.csv", "summary.json", "gallery.html",
                "checkpoints/last.ckpt", "checkpoints/epoch=0-step=2.ckpt",
                "checkpoints/epoch=0-step=2-adapter/adapter_model.safetensors",
                "adapter/adapter_model.safetensors", "eval/mmvet/epoch=0/answers.json",
                "eval/mmvet/epoch=0/grades.json", "eval/mmvet/epoch=0/scores.json",
                "eval/mmvet/judge_cache.jsonl", "eval/llava_bench/epoch=0/answers.jsonl",
                "eval/llava_bench/epoch=0/scores.json"}  # fmt: skip
    searched = {str(path.relative_to(run)) for path in files.values() if path.is_relative_to(run)}
    assert expected <= searched, expected - searched
    assert all(path.stat().st_size > 0 for path in files.values())
    if len(loggers) == 2:
        assert any(rel.startswith("work/runs/tb/version_0/") and "tfevents" in rel for rel in files)
    assert json.loads((run / "eval/mmvet/epoch=0/scores.json").read_text())["complete"]
    assert (run / "config.yaml").read_text().count(f"api_key_env: {KEY_ENV}") == 2
    # the 401 and its echoed key: written and printed, scrubbed
    llava_scores = json.loads((run / "eval/llava_bench/epoch=0/scores.json").read_text())
    assert not llava_scores["complete"] and "HTTP 401" in llava_scores["error"]
    assert "Incorrect API key provided: Bearer ***" in llava_scores["error"]
    assert "Incorrect API key provided: Bearer ***" in stderr
    assert "MM-Vet (3 questions" in stdout + stderr and "run summary" in stdout


# ---------------------------------------------------------------- the MM-Vet job, as a script


def test_the_mmvet_job_with_a_judge_key_never_writes_or_prints_it(
    demo_assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``benchmarks/mmvet.py --judge openai``, run as a script: a 401 echoing the key (exit 2,
    grading incomplete, the error printed scrubbed); then the rerun (in-process, output captured
    at the file descriptors) resumes and completes."""
    key = new_key()
    out = tmp_path / "out"
    env = judge_env(key, tmp_path)
    script = ROOT / "benchmarks" / "mmvet.py"
    with StubChatServer(lambda body: "0.5", error_detail=ECHO) as server:
        server.fail_next("401")
        args = ["--data-dir", str(demo_assets["benchmark"].parent), "--out", str(out),
                "--limit", "3", "--judge", "openai", "--judge-base-url", server.base_url,
                "--judge-model", "stub", "--judge-api-key-env", KEY_ENV,
                "--judge-max-retries", "0", "--judge-concurrency", "1"]  # fmt: skip
        model = ["--model", str(demo_assets["model"]), "--dtype", "float32",
                 "--max-new-tokens", "3"]  # fmt: skip
        first = subprocess.run(
            [sys.executable, str(script), *args, *model], capture_output=True, timeout=300, env=env
        )
        assert first.returncode == 2, first.stderr.decode()[-3000:]
        monkeypatch.setenv(KEY_ENV, key)
        spec = importlib.util.spec_from_file_location("mmvet_job_secrets", script)
        assert spec is not None and spec.loader is not None
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        assert job.main(args) == 0  # answers are on disk: no model needed
    second = capfd.readouterr()
    assert set(server.auth_headers) == {f"Bearer {key}"}
    assert len(server.requests) == 4  # the 401, then each question graded once (cached)
    printed = first.stdout.decode()
    assert "grading incomplete" in printed and "HTTP 401" in printed
    assert "Incorrect API key provided: Bearer ***" in printed
    assert "total" in second.out
    for output in (first.stdout, first.stderr, second.out.encode(), second.err.encode()):
        assert not find_key(output, key)
    files, hits = scan(tmp_path, key)
    assert hits == {}
    written = {"out/answers.json", "out/grades.json", "out/scores.json", "out/judge_cache.jsonl"}
    assert written <= set(files)
    assert json.loads((out / "scores.json").read_text())["complete"]


@pytest.mark.parametrize(
    "url",
    [
        "https://user:sk-test-abc@api.example.com/v1",
        "https://api.example.com/v1?api-key=sk-test-abc",
    ],
)
def test_a_key_in_the_judge_url_is_refused(url: str) -> None:
    # The URL is recorded in config.yaml and grade files: a key there would be written out.
    with pytest.raises(ValueError, match=r"base_url carries credentials.*api_key_env") as error:
        OpenAIJudge(base_url=url, model="gpt-4")
    assert "sk-test-abc" not in str(error.value)
    assert OpenAIJudge(base_url="http://127.0.0.1:8000/v1/", model="m").base_url.endswith("/v1")
