"""The pair audit in the training loop (PairAuditCallback) and under the toy world's before ->
after table; on the demo's recipe it finds the mention shortcut."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_audit import blurry_pairs

from lightning_aug_dpo import PairAuditCallback
from lightning_aug_dpo.audit import audit_pairs
from lightning_aug_dpo.callbacks.toy_world import shortcut_lines
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.toy_world import write_toy_world
from lightning_aug_dpo.types import PreferenceBatch

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


class Logged:
    """A logger that records what it is given."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


def batch_of(rows: list[dict]) -> PreferenceBatch:
    ids = torch.zeros((len(rows), 1), dtype=torch.long)
    return PreferenceBatch(torch.zeros(len(rows)), ids, ids, ids, ids, ids, ids,
                           meta={"rows": rows})  # fmt: skip


def test_the_callback_logs_every_n_steps_and_prints_the_verdict_once(tmp_path, caplog) -> None:
    callback = PairAuditCallback(every_n_steps=2, window=20, scenes=None)
    logger, module = Logged(), None
    trainer = SimpleNamespace(global_step=1, is_global_zero=True, current_epoch=0,
                              loggers=[logger], default_root_dir=str(tmp_path))  # fmt: skip
    rows = blurry_pairs(24)
    for step, start in ((1, 0), (2, 8), (2, 16)):  # the second step-2 call: accumulation
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch_of(rows[start : start + 8]), 0)
    assert len(logger.logged) == 1 and len(callback.pairs) == 20  # the window keeps 20
    step, metrics = logger.logged[0]
    assert step == 2
    assert metrics["train/pairs/length_acc"] == 1.0 and metrics["train/pairs/audited"] == 16
    assert metrics["train/pairs/rejected_longer"] == 1.0
    trainer.loggers = []  # run_dir: the trainer's default_root_dir
    with caplog.at_level("INFO"):
        callback.on_train_epoch_end(trainer, module)
        callback.on_train_epoch_end(trainer, module)  # the second epoch prints nothing
    printed = [r.getMessage() for r in caplog.records if "pair audit" in r.getMessage()]
    assert len(printed) == 1 and "preferring the shorter answer" in printed[0]
    assert json.loads((tmp_path / "pair_audit.json").read_text())["differing"] == 20
    assert callback.state_dict() == {"printed": True}
    with pytest.raises(ValueError, match="every_n_steps=0"):
        PairAuditCallback(every_n_steps=0)


def test_shortcut_lines_say_what_the_pairs_taught_and_how_answers_moved() -> None:
    report = audit_pairs(blurry_pairs())
    before = {"toy/words_per_answer": 20.0, "toy/mentions_per_answer": 2.0}
    lines = shortcut_lines(report, before, {**before, "toy/words_per_answer": 18.0})
    assert lines[0].startswith("What the pairs taught: the rejected answer is longer in 100%")
    assert lines[1] == (
        "After training (held-out): words fell 20.00 -> 18.00 (-10.0%): the way the pairs' "
        "shortcuts point (prefer the shorter answer: 100%)."
    )
    lines = shortcut_lines(report, before, {**before, "toy/words_per_answer": 21.0})
    assert "words rose 20.00 -> 21.00 (+5.0%): against the pairs' shortcuts" in lines[1]
    assert (
        "words stayed at 20.00: the answers did not move"
        in shortcut_lines(report, before, before)[1]
    )


def test_the_demo_recipe_shows_the_mention_shortcut_in_the_loop(tmp_path: Path) -> None:
    """The demo (configs/demo.yaml: its pool, noise 500, greedy reference rollouts of the toy
    base) for one epoch on half its prompts (256 of its 512, for time): the audit in the loop
    finds that the rejected answer names more objects in most differing pairs (measured: 60%,
    fewer in 2%; on all 512, 59% and 2%), against the scene records, and the before -> after
    table says so under it."""
    world = tmp_path / "world"
    write_toy_world(world, {"test": 4}, splits=("pool", "test"))  # the demo's pool
    run = tmp_path / "runs"
    callbacks = [
        {"class_path": "lightning_aug_dpo.PairAuditCallback", "init_args": {"every_n_steps": 4}},
        {"class_path": "lightning_aug_dpo.ToyWorldCallback",
         "init_args": {"split_dir": str(world / "test"), "pope": False, "before": True,
                       "max_new_tokens": 48}},
    ]  # fmt: skip
    cli = cli_main([
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"), *CPU,
        "--data.init_args.data_path", str(world / "pool.jsonl"),
        "--data.init_args.image_folder", str(world / "images"),
        "--data.init_args.num_prompts", "256", "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
        "--trainer.callbacks", json.dumps(callbacks),
    ])  # fmt: skip
    folder = Path(cli.trainer.log_dir)
    report = json.loads((folder / "pair_audit.json").read_text())
    truth = report["truth"]["stats"]
    assert truth["pairs_scored"] == report["differing"] > 60
    assert truth["rejected_names_more"] > 0.5 > 0.1 > truth["rejected_names_fewer"]
    assert truth["rejected_chair_i"] > truth["chosen_chair_i"]
    assert report["features"]["objects named"]["prefer"] == "lower"
    assert any("names fewer objects" in line for line in report["verdicts"])
    with open(folder / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/pairs/objects_acc")]
    assert [int(r["step"]) for r in logged] == [4, 8, 12, 16]
    assert float(logged[-1]["train/pairs/rejected_names_more"]) > 0.5
    table = json.loads((folder / "eval" / "toy" / "before_after.json").read_text())
    assert table["shortcut"][0].startswith("What the pairs taught: the rejected answer names more")
    assert "toy/pope/mean/f1" not in table["before"]  # POPE off: no column, no baseline
    assert "POPE-F1" not in (folder / "eval" / "toy" / "before_after.md").read_text()
