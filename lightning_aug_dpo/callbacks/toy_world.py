"""The toy world at epoch end (and under ``validate``): exact, judge-free hallucination metrics.

The toy world (:mod:`lightning_aug_dpo.data.toy_world`) records every scene, so an answer is
scored by parsing, not by a judge (:mod:`lightning_aug_dpo.eval.toy_world`): CHAIR_i / CHAIR_s,
coverage, colour / size / position / count errors on the long-form descriptions, and POPE's
accuracy / precision / recall / F1 / yes-ratio on the yes/no probes of the same images.

Writes ``answers.jsonl`` (``{id, prompt, answer}``) and ``scores.json`` under
``<run dir>/eval/toy/epoch=N/``; logs ``toy/<metric>`` and ``toy/pope/<split>/<metric>``.
With ``before: true`` the starting model is evaluated too, before the first step (into
``eval/toy/before/``), and the last evaluation prints and writes the before -> after table
(``eval/toy/before_after.md`` and ``.json``): what training changed, on held-out data, in
percent, with the change of each metric, which way is better, whether the change is an
improvement, and what answers that ignore the image score on the same split ("always yes" to
every probe, "say nothing" in every description). With a
:class:`~lightning_aug_dpo.callbacks.pair_audit.PairAuditCallback` in the run, two lines under
the table say what the training pairs taught and how the answers moved along it (computed by
:func:`shortcut_lines`: "the rejected answer names more objects in 59% of the differing training
pairs ...; after training, objects named per description fell 2.08 -> 2.06").
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from lightning_aug_dpo.atomic import write_json, write_text
from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.callbacks.pair_audit import PairAuditCallback
from lightning_aug_dpo.eval.pipeline import finish_toy
from lightning_aug_dpo.eval.toy_world import (
    ToyBenchmark,
    as_percent,
    compare_toy,
    format_before_after,
    load_toy_benchmark,
    toy_prompts,
    trivial_baselines,
)
from lightning_aug_dpo.runs import run_dir

# What a description holds on average, beside the percentages: how much the model says.
PER_ANSWER = {"objects named": "toy/mentions_per_answer", "words": "toy/words_per_answer"}
# The pair audit's features that a held-out metric measures: (feature, label, metric).
SHORTCUT_METRICS = (
    ("objects named", "objects named per description", "toy/mentions_per_answer"),
    ("length", "words", "toy/words_per_answer"),
)
UNMOVED = 0.005  # a relative change below 0.5% is no move


def shortcut_lines(
    report: Mapping[str, Any], before: Mapping[str, float], after: Mapping[str, float]
) -> list[str]:
    """What the training pairs taught (the pair audit's ``report``) and how the held-out answers
    moved along it (``before`` / ``after``: the toy metrics), in two sentences."""
    features = {k: f for k, f in report["features"].items() if f["accuracy"] is not None}
    if not features:
        return []
    lengths, truth = report["lengths"], report.get("truth")
    said = []
    if truth:
        st = truth["stats"]
        said.append(
            f"the rejected answer names more objects in {st['rejected_names_more']:.0%} of the "
            f"{st['pairs_scored']:,} differing training pairs (fewer in "
            f"{st['rejected_names_fewer']:.0%})"
        )
    said.append(
        f"{'is' if truth else 'the rejected answer is'} longer in "
        f"{lengths['rejected_longer']:.0%} (shorter in {lengths['rejected_shorter']:.0%})"
    )
    best = max(features, key=lambda k: features[k]["accuracy"])
    first = (
        f"What the pairs taught: {' and '.join(said)}; the rule that fits them best: "
        f"{features[best]['rule']}, right on {features[best]['accuracy']:.0%} of them."
    )
    moves, along, rules = [], [], []
    for feature, label, key in SHORTCUT_METRICS:
        if feature not in features or key not in before or key not in after:
            continue
        b, a = float(before[key]), float(after[key])
        change = (a - b) / b if b else 0.0
        if abs(change) < UNMOVED:
            moves.append(f"{label} stayed at {b:.2f}")
            continue
        moves.append(f"{label} {'fell' if a < b else 'rose'} {b:.2f} -> {a:.2f} ({change:+.1%})")
        along.append((a < b) == (features[feature]["prefer"] == "lower"))
        rules.append(f"{features[feature]['rule']}: {features[feature]['accuracy']:.0%}")
    if not moves:
        return [first]
    if not along:
        why = "the answers did not move along the pairs' shortcuts"
    elif all(along):
        why = f"the way the pairs' shortcuts point ({'; '.join(rules)})"
    elif not any(along):
        why = f"against the pairs' shortcuts ({'; '.join(rules)})"
    else:
        why = f"partly along the pairs' shortcuts ({'; '.join(rules)})"
    return [first, f"After training (held-out): {', '.join(moves)}: {why}."]


class ToyWorldCallback(BenchmarkCallback):
    """A toy-world split (``split_dir``: ``OUT/val`` or ``OUT/test`` of the world writer).

    Args:
        split_dir: folder with ``descriptions.jsonl`` (and ``pope/`` unless ``pope`` is off).
        image_dir: the world's image folder (default: ``images/`` beside ``split_dir``, where
            the writer puts it).
        limit: only the first ``limit`` descriptions and the probes of their images.
        pope: also ask the yes/no probes (two per image in each of the three samplings).
        max_new_tokens: answer length; 48 holds the longest true description (three objects
            with size, colour, shape and position: some 32 words, roughly 40 LLaMA tokens).
        batch_size: questions per generation call (toy answers are short: large batches).
        every_n_epochs, on_validate: as :class:`BenchmarkCallback`.
        before: also evaluate the starting model before the first training step, and print
            the before -> after table at the last evaluation.
    """

    benchmark = "toy"
    needs_judge = False

    def __init__(
        self,
        split_dir: str,
        image_dir: str | None = None,
        limit: int | None = None,
        pope: bool = True,
        max_new_tokens: int = 48,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        on_validate: bool = True,
        before: bool = False,
    ) -> None:
        super().__init__(
            split_dir,
            None,
            every_n_epochs,
            limit,
            max_new_tokens,
            batch_size,
            runs=1,
            on_validate=on_validate,
        )
        self.image_dir = Path(image_dir) if image_dir else self.data_dir.parent / "images"
        self.pope = pope
        self.before = before
        self.before_metrics: dict[str, float] | None = None

    def load(self) -> ToyBenchmark:
        return load_toy_benchmark(self.data_dir, self.image_dir, self.limit, self.pope)

    def prompts(self, bench: ToyBenchmark) -> tuple[dict[Any, str], dict[Any, Path]]:
        # The probes are asked as written, without POPE's short-answer suffix: the toy SFT
        # split teaches "Yes, there is ..." / "No, there is no ..." answers to the bare question.
        return toy_prompts(bench)

    def finish(self, bench: ToyBenchmark, answers: Any, out: Path) -> dict[str, Any]:
        return finish_toy(bench, answers, out, {"model": "policy", "split": str(self.data_dir)})

    def state_dict(self) -> dict[str, Any]:
        # a resumed run keeps the starting model's scores (its model has trained since)
        return {"before_metrics": self.before_metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before_metrics = state_dict.get("before_metrics")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The starting model on the same questions (LoRA adapters are still the identity)."""
        if not self.before or self.before_metrics is not None:
            return
        if trainer.global_step > 0:  # resumed from a checkpoint saved without them
            rank_zero_info("toy world: resumed run, the starting model cannot be scored again")
            return
        answers = self.answer(trainer, pl_module)
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            out = run_dir(trainer) / "eval" / self.benchmark / "before"
            model = {"model": "starting model", "split": str(self.data_dir)}
            metrics = finish_toy(self.bench(), answers, out, model)["metrics"]
        self.before_metrics = trainer.strategy.broadcast(metrics, src=0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        last = self._last(trainer)
        if self.before_metrics and last and self.last_record and trainer.is_global_zero:
            root = run_dir(trainer) / "eval" / self.benchmark
            after = self.last_record["metrics"]
            audit = next((c for c in trainer.callbacks if isinstance(c, PairAuditCallback)), None)
            pairs = audit.report() if audit is not None else None
            shortcut = shortcut_lines(pairs, self.before_metrics, after) if pairs else []
            report = self.before_after(self.before_metrics, after, trainer.current_epoch, shortcut)
            write_text(root / "before_after.md", report["text"] + "\n")
            write_json(root / "before_after.json", {k: v for k, v in report.items() if k != "text"})
            rank_zero_info(report["text"])

    def before_after(
        self,
        before: Mapping[str, float],
        after: Mapping[str, float],
        epoch: int,
        shortcut: list[str] | None = None,
    ) -> dict[str, Any]:
        """The before -> after report: ``text`` (the printed table with its notes) and, for
        ``before_after.json``, every headline value in percent (changes in percentage points),
        which way is better, the verdict and the trivial baselines of this split; ``shortcut``:
        the lines of :func:`shortcut_lines`, printed under the table."""
        bench = self.bench()
        baselines = trivial_baselines(bench)
        compared = compare_toy(before, after)
        probes = 0 if bench.pope is None else len(bench.pope.items)
        asked = f"{len(bench.questions)} descriptions" + (f", {probes:,} probes" if probes else "")
        title = f"toy world, held-out {self.data_dir} ({asked}), before -> after:"
        table = format_before_after(before, after, baselines)
        notes = [
            "change = after - before, in percentage points; 'better': which way is an "
            "improvement; 'verdict': whether the change is one. One run, one seed: "
            "benchmarks/toy_world.py repeats the experiment over seeds, with controls.",
        ]
        counts = [
            f"{label} per description: {before[key]:.2f} -> {after[key]:.2f}"
            for label, key in PER_ANSWER.items() if key in before and key in after
        ]  # fmt: skip
        if counts and not shortcut:  # (the shortcut lines say the same, and why)
            notes.append("; ".join(counts) + ".")
        if "always yes" in baselines:
            notes.append("always yes: answering 'yes' to every probe, whatever the image shows.")
        if "say nothing" in baselines:
            notes.append("say nothing: naming no object scores CHAIR 0 and coverage 0, so a lower "
                         "CHAIR counts only where coverage holds.")  # fmt: skip
        if bench.pope is None:
            notes.append("POPE: the yes/no probes were not asked (pope: false).")

        def column(field: str) -> dict[str, Any]:
            return {k: _rounded(c[field]) for k, c in compared.items()}

        return {
            "text": "\n".join(
                [title, table, *(textwrap.fill(n, 96) for n in [*(shortcut or []), *notes])]
            ),
            "unit": "percent",
            "split": str(self.data_dir),
            "descriptions": len(bench.questions),
            "probes": probes,
            **{field: column(field) for field in ("better", "before", "after", "change")},
            "verdict": column("verdict"),
            "baselines": {
                name: {k: _rounded(as_percent(k, v)) for k, v in metrics.items() if k in compared}
                for name, metrics in baselines.items()
            },
            "shortcut": list(shortcut or []),
            "per_description": {  # counts, not percent
                label: {"before": _rounded(before[key]), "after": _rounded(after[key])}
                for label, key in PER_ANSWER.items()
                if key in before and key in after
            },
            # every metric, in the scorer's units (description shares as fractions)
            "scores": {"before": "before/scores.json", "after": f"epoch={epoch}/scores.json"},
        }


def _rounded(value: Any) -> Any:
    # float32 noise from logged tensors (39.33333456) says nothing: 4 decimals of a percent
    return round(value, 4) if isinstance(value, float) else value
