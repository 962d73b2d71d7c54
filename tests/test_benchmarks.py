"""The evaluation jobs under benchmarks/ run on the tiny model and write official formats."""

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


def test_mmvet_eval_job_writes_answers_grades_and_scores(demo_assets, tmp_path: Path) -> None:
    job = load_script("mmvet_eval")
    out = tmp_path / "eval"
    rc = job.main(
        [
            "--model",
            str(demo_assets["model"]),
            "--benchmark",
            str(demo_assets["benchmark"]),
            "--out",
            str(out),
            "--limit",
            "6",
            "--max-new-tokens",
            "8",
        ]
    )
    assert rc == 0
    answers = json.loads((out / "base.json").read_text())
    assert list(answers) == [f"v1_{i}" for i in range(6)]
    grades = json.loads((out / "base_rule-grade-1runs.json").read_text())
    assert set(grades) == set(answers)
    assert all(g["model"] == ["rule"] and len(g["score"]) == 1 for g in grades.values())
    scores = json.loads((out / "base_scores.json").read_text())
    expected = 100 * sum(g["score"][0] for g in grades.values()) / 6
    assert scores["mmvet/total"] == expected and scores["judge"] == "rule"


def test_mmvet_callback_evaluates_after_the_last_epoch_or_step() -> None:
    from types import SimpleNamespace

    from lightning_aug_dpo import MMVetEvalCallback

    cb = MMVetEvalCallback(data_path="mm-vet.json", every_n_epochs=5)

    def trainer(epoch: int, max_epochs, max_steps: int = -1, step: int = 0) -> SimpleNamespace:
        return SimpleNamespace(
            current_epoch=epoch, max_epochs=max_epochs, max_steps=max_steps, global_step=step
        )

    assert cb._due(trainer(4, 10)) and not cb._due(trainer(3, 10))
    assert cb._due(trainer(2, 3))  # last epoch
    assert not cb._due(trainer(0, None, max_steps=10, step=4))
    assert cb._due(trainer(0, None, max_steps=10, step=10))  # step-limited run ends
    assert not cb._due(trainer(1, -1))  # unlimited epochs: only every n-th
