"""RunSummary's prompt counts: distinct prompts beside the visits over all epochs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from lightning_aug_dpo import RunSummary


def test_summary_counts_distinct_prompts_and_visits(tmp_path: Path, capsys) -> None:
    # 3 distinct pairs listed twice (pairs_repeat 2), visited over 2 epochs: 12 visits
    rows = [SimpleNamespace(id=i) for i in ("a", "b", "c")] * 2
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), global_step=2, callback_metrics={},
        is_global_zero=True, datamodule=SimpleNamespace(train_prompts=rows),
    )  # fmt: skip
    metrics = {"pairs/prompts": 12.0, "pairs/candidates": 12.0, "pairs/kept": 9.0,
               "pairs/identical": 3.0}  # fmt: skip
    module = SimpleNamespace(train_metrics=SimpleNamespace(compute=lambda: metrics))
    RunSummary().on_fit_end(trainer, module)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["prompts"], summary["prompt_visits"]) == (3, 12)
    assert (summary["candidate_pairs"], summary["pairs_kept"], summary["pairs_identical"]) == (
        12, 9, 3,
    )  # fmt: skip
    assert summary["identical_rate"] == 0.25
    assert summary["rollout_eos_rate"] is None and summary["rollout_tokens_per_s"] is None
    printed = capsys.readouterr().out
    assert "prompts (distinct)" in printed and "prompt visits (all epochs)" in printed

    trainer.datamodule = None  # no datamodule: the distinct count is unknown, not guessed
    assert RunSummary().summary(trainer, module)["prompts"] is None
