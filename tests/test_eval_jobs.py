"""Standalone jobs: generate/grade/score with resume, ``score`` subcommands (parity through the
CLI), ``--help`` completeness, and no API key in any output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lightning_aug_dpo.eval.stub_server import StubChatServer

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT / "benchmarks"))
import llava_bench as llava_job  # noqa: E402
import mmvet as mmvet_job  # noqa: E402
import pope as pope_job  # noqa: E402
import toy as toy_job  # noqa: E402
import toy_world_eval as toy_world_job  # noqa: E402

KEY_ENV = "LAD_JOB_TEST_KEY"
SECRET = "sk-job-test-secret-42"


@pytest.fixture
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference files not found at {REF}")
    return REF


def test_mmvet_job_resumes_without_the_model(demo_assets, tmp_path: Path, capsys) -> None:
    data, out = str(demo_assets["benchmark"].parent), tmp_path / "out"
    argv = ["--data-dir", data, "--out", str(out), "--limit", "3"]
    model = ["--model", str(demo_assets["model"]), "--dtype", "float32", "--max-new-tokens", "3"]
    assert mmvet_job.main([*argv, *model]) == 0
    first = json.loads((out / "scores.json").read_text())
    assert first["complete"] and first["questions"] == 3 and "mmvet/rec" in first["metrics"]
    # answers are complete: a rerun grades again without --model (no model is loaded)
    assert mmvet_job.main(argv) == 0
    assert json.loads((out / "scores.json").read_text())["metrics"] == first["metrics"]
    # a missing answer needs the model: the job says so
    answers = json.loads((out / "answers.json").read_text())
    answers.pop("v1_2")
    (out / "answers.json").write_text(json.dumps(answers))
    with pytest.raises(SystemExit, match="give --model"):
        mmvet_job.main(argv)
    assert "total" in capsys.readouterr().out


def test_mmvet_job_bad_data_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert mmvet_job.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "mm-vet.json: MM-Vet question file not found; point data_dir" in capsys.readouterr().err


def test_mmvet_score_subcommand_reproduces_llava_7b(ref: Path, tmp_path: Path, capsys) -> None:
    grades = ref / "mmvet" / "llava-v1.5" / "llava-v1.5-7b_gpt-4-grade-3runs.json"
    out = tmp_path / "scores.json"
    argv = [
        "score",
        "--grades",
        str(grades),
        "--index",
        str(ref / "mmvet" / "capability_index.json"),
    ]
    assert mmvet_job.main([*argv, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^total\s+218\s+31\.1\s+0\.2$", table, re.M)
    scores = json.loads(out.read_text())
    assert round(scores["total"], 1) == 31.1 and len(scores["combinations"]) == 16
    assert round(scores["capabilities"]["math"]["mean"], 1) == 7.7
    assert scores["judge"] == {"models": ["gpt-4"]}


def test_llava_score_subcommand_reproduces_llava_7b(ref: Path, tmp_path: Path, capsys) -> None:
    reviews = [
        str(ref / "llava_bench" / "llava-v1.5" / f"llava-v1.5-7b-eval{i}.jsonl") for i in (1, 2, 3)
    ]
    out = tmp_path / "s.json"
    questions = str(ref / "llava_bench" / "questions.jsonl")
    argv = ["score", "--questions", questions, "--reviews", *reviews, "--out", str(out)]
    assert llava_job.main(argv) == 0
    assert re.search(
        r"^overall\s+65\.4\s+0\.7\s+64\.7\s+65\.3\s+66\.3$", capsys.readouterr().out, re.M
    )
    assert round(json.loads(out.read_text())["overall"], 1) == 65.4


def _llava_data(root: Path) -> Path:
    root.mkdir()
    rows = [{"question_id": q, "image": "a.jpg", "text": f"Q{q}?", "category": c}
            for q, c in ((0, "conv"), (1, "complex"))]  # fmt: skip
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "context.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "A cat."}) + "\n")
    (root / "answers_gpt4.jsonl").write_text(
        "".join(json.dumps({"question_id": q, "text": "A cat."}) + "\n" for q in (0, 1))
    )
    (root / "images").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "images" / "a.jpg")
    return root


def test_llava_job_with_an_http_judge_never_writes_the_key(
    demo_assets, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    data, out = _llava_data(tmp_path / "data"), tmp_path / "out"
    with StubChatServer(lambda body: "8 6\nok") as server:
        argv = ["--data-dir", str(data), "--out", str(out), "--model", str(demo_assets["model"]),
                "--dtype", "float32", "--max-new-tokens", "3", "--judge", "openai",
                "--judge-base-url", server.base_url, "--judge-model", "judge-x",
                "--judge-api-key-env", KEY_ENV, "--runs", "2"]  # fmt: skip
        assert llava_job.main(argv) == 0
        assert llava_job.main(argv) == 0  # rerun: answers and reviews all come from disk
        assert len(server.requests) == 4  # 2 questions x 2 runs, once
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    scores = json.loads((out / "scores.json").read_text())
    assert scores["metrics"]["llava_bench/overall"] == 75.0
    assert scores["judge"]["model"] == "judge-x" and scores["judge"]["api_key_env"] == KEY_ENV
    assert scores["judge"]["llava_rules"]["source"] == "lightning_aug_dpo:llava-bench-v1"
    assert len((out / "reviews-run2.jsonl").read_text().splitlines()) == 2
    captured = capsys.readouterr()
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(encoding="utf-8"), path
    assert SECRET not in captured.out + captured.err


def test_llava_job_outage_exits_2_and_resumes(demo_assets, tmp_path: Path) -> None:
    data, out = _llava_data(tmp_path / "data"), tmp_path / "out"
    with StubChatServer(lambda body: "8 6\nok") as server:
        argv = ["--data-dir", str(data), "--out", str(out), "--model", str(demo_assets["model"]),
                "--dtype", "float32", "--max-new-tokens", "2", "--judge", "openai",
                "--judge-base-url", server.base_url, "--judge-model", "j",
                "--judge-max-retries", "0", "--judge-concurrency", "1"]  # fmt: skip
        server.fail_next("500")
        assert llava_job.main(argv) == 2
        assert not json.loads((out / "scores.json").read_text())["complete"]
        assert llava_job.main(argv) == 0


def test_pope_job(demo_assets, tmp_path: Path) -> None:
    rows = [{"question_id": i, "image": "c.jpg", "text": f"Is there a thing {i}?",
             "label": "yes" if i % 2 else "no"} for i in range(4)]  # fmt: skip
    (tmp_path / "coco_pope_popular.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "coco").mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "coco" / "c.jpg")
    out = tmp_path / "out"
    argv = ["--data-dir", str(tmp_path), "--image-dir", str(tmp_path / "coco"), "--out", str(out),
            "--splits", "popular", "--model", str(demo_assets["model"]), "--dtype", "float32",
            "--max-new-tokens", "2"]  # fmt: skip
    assert pope_job.main(argv) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["scores"]) == {"popular", "mean"}
    assert scores["metrics"]["pope/popular/yes_ratio"] in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert len((out / "answers-popular.jsonl").read_text().splitlines()) == 4


def _help(script: str, capsys) -> str:
    if script in ("mmvet", "llava_bench"):  # the acceptance commands, as a user runs them
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout
    job = {"pope": pope_job, "toy": toy_job, "toy_world_eval": toy_world_job}[script]
    try:
        assert job.main(["--help"]) == 0
    except SystemExit as exit:
        assert exit.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", ["mmvet", "llava_bench", "toy", "pope", "toy_world_eval"])
def test_help_describes_every_option(script: str, capsys) -> None:
    text = _help(script, capsys)
    options = set(re.findall(r"^\s+(--[a-z-]+)", text, re.M))
    data = "--split-dir" if script == "toy_world_eval" else "--data-dir"
    model = {"--model", "--model-class", "--model-arg", "--adapter", "--max-new-tokens"}
    assert {*model, "--out", data} <= options
    assert "LLaVA-1.5 format" not in text  # every family, not LLaVA's only
    # every option has a description: no option line is followed directly by another option
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if re.match(r"^\s+--[a-z-]+( [A-Z_{},.\[\] ]+)?$", line):
            assert not re.match(r"^\s+-", lines[i + 1]), f"{script}: {line.strip()} undocumented"
    if script in ("mmvet", "llava_bench"):
        assert "score" in text and "--judge-api-key-env" in text and "--runs" in text
