"""End-of-run summary: a rich table on the console and ``summary.json`` in the run dir.

:class:`RunSummary` summarises ``fit``; ``predict`` (offline pairs) is summarised by
:class:`~lightning_aug_dpo.callbacks.pairs_writer.PairsWriter` with the same helpers.

One unit in ``summary.json``: every rate, share, accuracy and benchmark score is in percent and
its key ends in ``_pct`` (``identical_rate_pct``, ``toy/chair_i_pct``, ``mmvet/total_pct``).
The sources differ (pair rates, reward accuracy and the toy world's description metrics are
computed as fractions; POPE, MM-Vet and LLaVA-Bench in percent), so each is converted here;
keys without the suffix are counts, losses, margins or throughputs in their own units.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.eval.toy_world import as_percent
from lightning_aug_dpo.runs import run_dir

PCT = "_pct"  # the suffix of every value in percent
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
        label = _label(key)
        if isinstance(value, Mapping) and value:
            for sub, item in value.items():
                table.add_row(f"{label}: {_label(sub)}", _text(item))
        elif isinstance(value, Mapping):
            table.add_row(label, "none")
        else:
            table.add_row(label, _text(value))
    Console().print(table)


def _label(key: str) -> str:
    if key.endswith(PCT):
        return _label(key.removesuffix(PCT)) + " (%)"
    if "/" in key:  # a metric name (toy/chair_i): as logged, so it can be searched for
        return key
    return LABELS.get(key, key.replace("_", " "))


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
# Benchmark values that are no score: a 0/1 flag and a count of unparsed reviews.
NOT_SCORES = ("/complete", "/failed")


def benchmark_percent(name: str, value: float) -> tuple[str, float]:
    """A logged benchmark metric as its summary key and value: scores in percent under a
    ``_pct`` key; flags and counts as they are. MM-Vet, LLaVA-Bench and POPE score in percent
    already; the toy world's description metrics are fractions."""
    if name.endswith(NOT_SCORES):
        return name, value
    return name + PCT, round(as_percent(name, value), 4)


def as_percent_fields(out: dict[str, object], fractions: tuple[str, ...]) -> None:
    """Replace each fraction ``out[key]`` by ``out[key + "_pct"]`` in percent, in place and in
    order (``None`` stays ``None``: a figure the run could not measure)."""
    for key in list(out):
        value = out.pop(key)
        if key in fractions:
            key += PCT
            value = None if value is None else round(100.0 * float(value), 4)  # type: ignore[arg-type]
        out[key] = value


def _is_summarised(name: str) -> bool:
    return name.startswith(("mmvet/", "llava_bench/")) or name in TOY_HEADLINE


def starting_model_scores(trainer: pl.Trainer) -> dict[str, float]:
    """The starting model's benchmark scores where a callback measured them before the first
    step (``ToyWorldCallback(before=True)`` keeps them in ``before_metrics``)."""
    out: dict[str, float] = {}
    for callback in getattr(trainer, "callbacks", None) or []:
        before = getattr(callback, "before_metrics", None)
        if isinstance(before, Mapping):
            out.update(
                benchmark_percent(k, float(v)) for k, v in before.items() if _is_summarised(k)
            )
    return out


def finish_progress_bar(trainer: pl.Trainer) -> None:
    """Stop a live progress bar now: ``RichProgressBar`` stops at teardown, after
    ``on_fit_end``, and its last frame would be printed under the summary table."""
    stop = getattr(getattr(trainer, "progress_bar_callback", None), "_stop_progress", None)
    if callable(stop):
        stop()


class RunSummary(Callback):
    """Prompts seen, pairs kept and dropped, final reward accuracy and benchmark scores: after
    training, and before it (``before``) where a callback scored the starting model.

    ``prompts`` is the number of distinct training prompts (pairs, when training from a pairs
    file); ``prompt_visits`` counts every time one was rolled out or read, over all epochs.
    Rates and scores are in percent, under keys ending in ``_pct``.
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
        accuracy = stats.get("rewards/accuracies")
        out.update(
            {
                "final_epoch_loss": stats.get("loss"),
                "final_epoch_reward_accuracy": None if accuracy is None else float(accuracy),
                "final_epoch_reward_margin": stats.get("rewards/margins"),
            }
        )
        # pair_statistics and the reward accuracy count in fractions (the predict summary
        # keeps them so); here everything is in percent
        as_percent_fields(
            out, ("identical_rate", "rollout_eos_rate", "final_epoch_reward_accuracy")
        )
        for name, value in trainer.callback_metrics.items():
            if _is_summarised(name):
                key, converted = benchmark_percent(name, float(value))
                out[key] = converted
        before = starting_model_scores(trainer)
        if before:
            out["before"] = before
        # The module writes the adapter in its own on_fit_end, which runs after the callbacks'.
        out["adapter"] = str(run_dir(trainer) / "adapter")
        return out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        finish_progress_bar(trainer)
        # atomic: a run killed here leaves no half summary that reads as a finished run's
        write_json(run_dir(trainer) / "summary.json", summary)
        print_summary("lightning-aug-dpo: run summary", summary)
