"""The evaluation jobs under benchmarks/ run on the tiny model and write official formats.

More job tests (MM-Vet, LLaVA-Bench, POPE, ``score`` subcommands) are in test_eval_jobs.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_job_writes_answers_grades_and_scores(demo_assets, tmp_path: Path) -> None:
    job = load_script("toy")
    out = tmp_path / "eval"
    argv = ["--model", str(demo_assets["model"]), "--dtype", "float32", "--out", str(out),
            "--num-questions", "6", "--max-new-tokens", "4"]  # fmt: skip
    assert job.main(argv) == 0
    answers = json.loads((out / "answers.json").read_text())
    assert list(answers) == [f"v1_{i}" for i in range(6)]
    grades = json.loads((out / "grades.json").read_text())
    assert set(grades) == set(answers)
    assert all(g["model"] == ["rule"] and len(g["score"]) == 1 for g in grades.values())
    scores = json.loads((out / "scores.json").read_text())
    expected = 100 * sum(g["score"][0] for g in grades.values()) / 6
    assert scores["metrics"]["mmvet/total"] == expected and scores["judge"]["model"] == "rule"
    assert (out / "data" / "mm-vet.json").is_file()
