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
    assert summary["identical_rate_pct"] == 25.0 and "identical_rate" not in summary
    assert summary["rollout_eos_rate_pct"] is None and summary["rollout_tokens_per_s"] is None
    printed = capsys.readouterr().out
    assert "prompts (distinct)" in printed and "prompt visits (all epochs)" in printed

    trainer.datamodule = None  # no datamodule: the distinct count is unknown, not guessed
    assert RunSummary().summary(trainer, module)["prompts"] is None


def test_summary_is_in_percent_and_holds_the_starting_models_scores(tmp_path: Path) -> None:
    import torch

    from lightning_aug_dpo import ToyWorldCallback

    toy = ToyWorldCallback(split_dir=str(tmp_path / "test"), before=True)
    # as the scorers report them: toy description shares as fractions, POPE / MM-Vet in percent
    toy.before_metrics = {"toy/chair_i": 0.3, "toy/coverage": 0.5, "toy/pope/mean/f1": 60.0,
                          "toy/words_per_answer": 17.0}  # fmt: skip
    logged = {"toy/chair_i": 0.25, "toy/coverage": 0.625, "toy/pope/mean/f1": 62.5,
              "mmvet/total": 31.5, "mmvet/complete": 1.0, "llava_bench/failed": 2.0}  # fmt: skip
    trainer = SimpleNamespace(
        loggers=[], default_root_dir=str(tmp_path), global_step=4, is_global_zero=True,
        datamodule=None, callbacks=[toy],
        callback_metrics={k: torch.tensor(v) for k, v in logged.items()},
    )  # fmt: skip
    metrics = {"pairs/candidates": 8.0, "pairs/kept": 6.0, "pairs/identical": 2.0,
               "pairs/finished": 12.0, "pairs/rollout_seconds": 2.0,
               "rewards/accuracies": 0.75, "loss": 0.6}  # fmt: skip
    module = SimpleNamespace(train_metrics=SimpleNamespace(compute=lambda: metrics))
    summary = RunSummary().summary(trainer, module)  # type: ignore[arg-type]
    # every rate and score in percent, under a key ending in _pct; no key left in a fraction
    assert summary["identical_rate_pct"] == 25.0  # 2 of 8 candidates
    assert summary["rollout_eos_rate_pct"] == 75.0  # 12 of 2 x 8 answers finished
    assert summary["final_epoch_reward_accuracy_pct"] == 75.0
    assert summary["toy/chair_i_pct"] == 25.0 and summary["toy/coverage_pct"] == 62.5
    assert summary["toy/pope/mean/f1_pct"] == 62.5 and summary["mmvet/total_pct"] == 31.5
    assert summary["mmvet/complete"] == 1.0 and summary["llava_bench/failed"] == 2.0  # no scores
    assert summary["final_epoch_loss"] == 0.6  # not a share: its own unit
    assert not {"identical_rate", "toy/chair_i", "mmvet/total"} & set(summary)
    # the starting model's scores, in the same unit (its headline only)
    assert summary["before"] == {
        "toy/chair_i_pct": 30.0, "toy/coverage_pct": 50.0, "toy/pope/mean/f1_pct": 60.0,
    }  # fmt: skip
    toy.before_metrics = None  # not scored (before: false, or a resumed run): no before
    assert "before" not in RunSummary().summary(trainer, module)  # type: ignore[arg-type]
