"""Offline mode: ``lightning-aug-dpo predict`` writes the rollout pairs to a JSONL file.

Next to the pairs file ``P`` the writer keeps ``P.done``: the ids of the prompts whose pairs are
all written, one per line, appended after each batch's rows. It is the commit record that makes
a rerun resume: rows of a prompt missing from ``P.done`` (a batch cut off by a kill) are dropped
and that prompt is rolled out again, with the same seed and therefore the same pairs; prompts
listed there are not rolled out again, including those whose pairs were all filtered out.

At the end the writer prints a summary and writes it to ``P.summary.json``: the prompts rolled
out by this run and those resumed, candidate pairs, pairs kept, identical answers, pairs dropped
per filter reason, rollout throughput, and the rows the file holds. Then the pair audit
(:mod:`lightning_aug_dpo.audit`) reads the whole file: its headline and verdict lines ("DPO can
satisfy 78% of these pairs by preferring the shorter answer") join the summary under ``audit``,
and the full report goes to ``P.audit.json`` and ``P.audit.md``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_aug_dpo.atomic import write_json, write_lines, write_text
from lightning_aug_dpo.audit import audit_pairs
from lightning_aug_dpo.audit_format import format_markdown, summary_of
from lightning_aug_dpo.audit_truth import find_scenes, load_scenes
from lightning_aug_dpo.callbacks.summary import pair_statistics, print_summary
from lightning_aug_dpo.data.pairs import load_pairs
from lightning_aug_dpo.data.rollouts import prompt_id_of
from lightning_aug_dpo.types import PairStats

log = logging.getLogger(__name__)


class PairsWriter(BasePredictionWriter):
    """Append each kept pair as one JSON line: id, image, prompt, chosen, rejected, augmentation.

    Under DDP each rank appends to its own shard (``.rankN`` inserted before the suffix); at the
    end rank 0 merges the shards into ``output_path``, dropping the rows Lightning's distributed
    sampler duplicated to even out the ranks (same id), and removes them.

    A rerun with ``resume: true`` (the default) keeps what was written, merges the shards of an
    interrupted DDP run, and tells the DataModule (``skip_prompt_ids``) which prompts are done.
    ``resume: false`` starts a fresh file.

    The pair statistics of the run (each batch's ``PairStats``, summed over ranks) end in a
    console table and in ``P.summary.json`` beside the pairs file (see :func:`summary_path`),
    with the pair audit of the whole file (``audit``; the report in ``P.audit.json`` / ``.md``).
    Where the data's image folder has the toy world's ``scenes.json`` in or beside it, the audit
    also scores both answers of each pair against the scenes.

    Args:
        output_path: the JSONL file.
        resume: continue an existing file instead of overwriting it.
        audit: audit the pairs at the end (:func:`~lightning_aug_dpo.audit.audit_pairs`).
        audit_threshold: a feature gets a verdict line from this accuracy up.
    """

    def __init__(
        self,
        output_path: str,
        resume: bool = True,
        audit: bool = True,
        audit_threshold: float = 0.65,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        self.resume = resume
        self.audit = audit
        self.audit_threshold = audit_threshold
        self.scenes: dict[str, Any] | None = None  # the toy world's scene records, if any
        self.resumed_prompts = 0  # prompts found done at the start of this run
        self.totals: Counter[str] = Counter()  # this rank's PairStats sums since setup
        self.last_summary: dict[str, object] | None = None  # rank 0, after predict

    def _path(self, trainer: pl.Trainer) -> Path:
        if trainer.world_size == 1:
            return self.output_path
        return self.output_path.with_suffix(f".rank{trainer.global_rank}{self.output_path.suffix}")

    def _shards(self) -> list[Path]:
        pattern = f"{self.output_path.stem}.rank*{self.output_path.suffix}"
        return sorted(self.output_path.parent.glob(pattern))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if trainer.is_global_zero:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            if self.resume:
                merge_shards([self.output_path, *self._shards()], self.output_path)
            else:
                for path in [self.output_path, *self._shards()]:
                    path.unlink(missing_ok=True)
                    done_path(path).unlink(missing_ok=True)
        self.totals = Counter()
        self.last_summary = None
        if self.audit and trainer.is_global_zero:  # a bad scene file stops the run here, not late
            hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None)
            found = find_scenes(getattr(hparams, "image_folder", None))
            self.scenes = load_scenes(found) if found else None
        trainer.strategy.barrier("pairs_writer_setup")
        done = read_done(self.output_path)
        self.resumed_prompts = len(done)
        if done and trainer.is_global_zero:
            log.info("%s: resuming, %d prompts already done", self.output_path, len(done))
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "skip_prompt_ids"):
            datamodule.skip_prompt_ids = done

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._path(trainer).parent.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        path = self._path(trainer)
        rows = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prediction)
        with path.open("a", encoding="utf-8") as f:
            f.write(rows)
            f.flush()
            os.fsync(f.fileno())
        meta = getattr(batch, "meta", {})
        with done_path(path).open("a", encoding="utf-8") as f:
            f.write("".join(f"{prompt_id}\n" for prompt_id in meta.get("prompt_ids", [])))
        stats = meta.get("stats")
        if isinstance(stats, PairStats):
            self.count(stats)

    def count(self, stats: PairStats) -> None:
        """Add one batch's statistics to this rank's totals (drops as ``dropped/<reason>``)."""
        for f in fields(stats):
            if f.name != "dropped":
                self.totals[f.name] += getattr(stats, f.name)
        for reason, n in stats.dropped.items():
            self.totals[f"dropped/{reason}"] += n

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        totals = self.totals
        if trainer.world_size > 1:
            # Once at the end, not per step: predict ranks may run different batch counts, so
            # a per-step collective (as training's metrics use) could wait forever.
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, dict(self.totals))
            totals = sum((Counter(t) for t in gathered), Counter())
            trainer.strategy.barrier("pairs_writer_merge")  # every shard is complete
            if trainer.is_global_zero:
                merge_shards([self.output_path, *self._shards()], self.output_path)
            trainer.strategy.barrier("pairs_writer_merged")
        if trainer.is_global_zero:
            self._finish(totals)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # With every prompt already done Lightning skips the predict loop and on_predict_end;
        # the summary must still say so, not leave the previous run's in place.
        if stage == "predict" and self.last_summary is None and trainer.is_global_zero:
            self._finish(self.totals)

    def _finish(self, totals: Counter[str]) -> None:
        self.last_summary = self.summary(totals)
        report = self.audit_file() if self.audit else None
        if report is not None:
            self.last_summary["audit"] = summary_of(report)
        # atomic: a kill here leaves the previous summary whole
        write_json(summary_path(self.output_path), self.last_summary)
        shown, verdicts = dict(self.last_summary), []
        if report is not None:  # the table shows the numbers, the verdicts follow as sentences
            shown["audit"] = dict(shown["audit"])
            verdicts = shown["audit"].pop("verdicts")
        print_summary("lightning-aug-dpo: predict summary", shown)
        for line in verdicts:
            print(f"pair audit: {line}")

    def audit_file(self) -> dict[str, Any] | None:
        """Audit every pair of the file (resumed rows included) and write the report beside it
        (``P.audit.json``, ``P.audit.md``); ``None`` when the file holds no pair."""
        if not self.output_path.is_file():
            return None
        pairs = load_pairs(self.output_path, on_bad_row="skip").pairs
        if not pairs:
            return None
        report = audit_pairs(pairs, scenes=self.scenes, threshold=self.audit_threshold)
        report = {"pairs_path": str(self.output_path), **report}
        write_json(audit_path(self.output_path), report)
        write_text(
            audit_path(self.output_path, ".md"), format_markdown(report, str(self.output_path))
        )
        return report

    def summary(self, totals: Counter[str]) -> dict[str, object]:
        """The run's pair statistics (``totals`` summed over ranks) and the file's size."""
        dropped = {
            k.removeprefix("dropped/"): int(n)
            for k, n in sorted(totals.items())
            if k.startswith("dropped/")
        }
        return {
            "pairs_path": str(self.output_path),
            "prompts": int(totals["prompts"]),  # rolled out by this run, each once
            "prompts_resumed": self.resumed_prompts,  # done by an earlier run, skipped
            **pair_statistics(totals),
            "pairs_dropped": dropped,
            "pairs_in_file": len(_complete_lines(self.output_path)),  # resumed rows included
        }


def done_path(path: Path) -> Path:
    """The commit record beside a pairs file: ``pairs.jsonl`` -> ``pairs.jsonl.done``."""
    return path.with_name(path.name + ".done")


def summary_path(path: Path) -> Path:
    """The predict summary beside a pairs file: ``pairs.jsonl`` -> ``pairs.jsonl.summary.json``
    (named after the file, so pairs files sharing a folder keep their own summaries)."""
    return path.with_name(path.name + ".summary.json")


def audit_path(path: Path, suffix: str = ".json") -> Path:
    """The pair audit beside a pairs file: ``pairs.jsonl`` -> ``pairs.jsonl.audit.json``."""
    return path.with_name(f"{path.name}.audit{suffix}")


def _complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` that a writer finished (a kill can cut off only the last one)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]  # after the last "\n": unfinished


def read_done(path: Path) -> set[str]:
    """Prompt ids committed for the pairs file ``path``."""
    return set(_complete_lines(done_path(path)))


def merge_shards(shards: list[Path], output_path: Path) -> int:
    """Merge pairs files into ``output_path`` (which may be one of them) with their commit
    records: rows of uncommitted prompts are dropped, the first occurrence of each id wins, and
    every input other than ``output_path`` is removed. Returns the number of rows written."""
    done: list[str] = []
    committed: set[str] = set()
    for shard in shards:
        if shard.is_file() and not done_path(shard).exists():
            # A file from elsewhere (or an older version) without a record: all of it counts.
            ids = [prompt_id_of(json.loads(line)) for line in _complete_lines(shard)]
        else:
            ids = _complete_lines(done_path(shard))
        for prompt_id in ids:
            if prompt_id not in committed:
                committed.add(prompt_id)
                done.append(prompt_id)
    seen: set[str] = set()
    rows: list[str] = []
    for shard in shards:
        for number, line in enumerate(_complete_lines(shard), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{shard}: line {number} is not valid JSON ({err.msg}); the file was edited "
                    "or damaged: fix or remove the line, or rerun predict with resume: false"
                ) from err
            if row["id"] not in seen and prompt_id_of(row) in committed:
                seen.add(row["id"])
                rows.append(line)
    if shards and (output_path.exists() or any(s.exists() for s in shards)):
        write_lines(output_path, rows)
        write_lines(done_path(output_path), done)
    for shard in shards:
        if shard != output_path:
            shard.unlink(missing_ok=True)
            done_path(shard).unlink(missing_ok=True)
    return len(rows)
