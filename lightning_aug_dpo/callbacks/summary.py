"""End-of-run summary: a rich table on the console and ``summary.json`` in the run dir.

:class:`RunSummary` summarises ``fit``; ``predict`` (offline pairs) is summarised by
:class:`~lightning_aug_dpo.callbacks.pairs_writer.PairsWriter` with the same helpers.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.runs import run_dir

# Table labels where the JSON key alone would be ambiguous.
LABELS = {
    "prompts": "prompts (distinct)",
    "prompt_visits": "prompt visits (all epochs)",
}


def pair_statistics(counts: Mapping[str, float]) -> dict[str, object]:
    """The summary's pair fields from run totals keyed as ``PairStats`` fields
    (``candidates``, ``kept``, ``identical``, ``chosen_tokens``, ...); missing keys count 0."""
    candidates = counts.get("candidates", 0.0)
    seconds = counts.get("rollout_seconds", 0.0)
    tokens = counts.get("chosen_tokens", 0.0) + counts.get("rejected_tokens", 0.0)
    return {
        "candidate_pairs": int(candidates),
        "pairs_kept": int(counts.get("kept", 0.0)),
        "pairs_identical": int(counts.get("identical", 0.0)),
        "identical_rate": counts.get("identical", 0.0) / candidates if candidates else 0.0,
        # rollout figures only where answers were generated (not for pairs read from a file)
        "rollout_eos_rate": counts.get("finished", 0.0) / (2 * candidates)
        if candidates and seconds
        else None,
        # under DDP the seconds are summed over ranks: this is one process's throughput
        "rollout_tokens_per_s": tokens / seconds if seconds else None,
    }


def print_summary(title: str, summary: Mapping[str, object]) -> None:
    """Print ``summary`` as a two-column table; a dict value gives one row per entry."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        label = LABELS.get(key, key.replace("_", " "))
        if isinstance(value, Mapping) and value:
            for sub, item in value.items():
                table.add_row(f"{label}: {sub}", _text(item))
        elif isinstance(value, Mapping):
            table.add_row(label, "none")
        else:
            table.add_row(label, _text(value))
    Console().print(table)


def _text(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def distinct_prompts(trainer: pl.Trainer) -> int | None:
    """Distinct training prompts (or pairs) of the run's datamodule; ``None`` if unknown."""
    rows = getattr(getattr(trainer, "datamodule", None), "train_prompts", None)
    if not rows:
        return None
    # ids, not the length: pairs_repeat lists each pair several times
    return len({row.id for row in rows})


# The toy world logs ~40 values; the summary keeps the headline (eval/toy/ has them all).
TOY_HEADLINE = (
    "toy/chair_i",
    "toy/chair_s",
    "toy/coverage",
    "toy/count_errors",
    "toy/pope/mean/f1",
    "toy/pope/adversarial/f1",
)


class RunSummary(Callback):
    """Prompts seen, pairs kept and dropped, final reward accuracy and benchmark scores.

    ``prompts`` is the number of distinct training prompts (pairs, when training from a pairs
    file); ``prompt_visits`` counts every time one was rolled out or read, over all epochs.
    """

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, object]:
        stats = pl_module.train_metrics.compute()
        out: dict[str, object] = {
            "run_dir": str(run_dir(trainer)),
            "optimizer_steps": trainer.global_step,
            "prompts": distinct_prompts(trainer),
            "prompt_visits": int(stats.get("pairs/prompts", 0.0)),
        }
        pairs = {k.removeprefix("pairs/"): v for k, v in stats.items() if k.startswith("pairs/")}
        out.update(pair_statistics(pairs))
        out.update(
            {
                "final_epoch_loss": stats.get("loss"),
                "final_epoch_reward_accuracy": stats.get("rewards/accuracies"),
                "final_epoch_reward_margin": stats.get("rewards/margins"),
            }
        )
        for name, value in trainer.callback_metrics.items():
            if name.startswith(("mmvet/", "llava_bench/")) or name in TOY_HEADLINE:
                out[name] = float(value)
        # The module writes the adapter in its own on_fit_end, which runs after the callbacks'.
        out["adapter"] = str(run_dir(trainer) / "adapter")
        return out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        # atomic: a run killed here leaves no half summary that reads as a finished run's
        write_json(run_dir(trainer) / "summary.json", summary)
        print_summary("lightning-aug-dpo: run summary", summary)
