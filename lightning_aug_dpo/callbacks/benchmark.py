"""Shared machinery of the benchmark callbacks (MM-Vet, LLaVA-Bench, POPE).

At the end of every ``every_n_epochs``-th training epoch (and the last one), and once under
``lightning-aug-dpo validate``:

1. every rank answers its share of the questions (``eval.generate``: greedy, batched, sharded
   round-robin, gathered to all ranks);
2. rank 0 writes the answers, grades them with the judge and scores them under
   ``<run dir>/eval/<benchmark>/epoch=N/`` (``eval.pipeline``); an earlier epoch left incomplete
   by a judge outage is graded again first, resuming from the judge's reply cache
   (``<run dir>/eval/<benchmark>/judge_cache.jsonl`` unless the judge has its own);
3. rank 0's metrics are broadcast and logged by every rank (``<benchmark>/...``).

A judge outage never stops training: the epoch's ``scores.json`` says ``complete: false``,
``<benchmark>/complete`` is logged as 0 and no score is logged for that epoch.

Every score file and summary line names the judge (``judge_name`` in ``scores.json``, the title
line of the printed table, the outage warning): scores by different judges are not comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS, generate_answers
from lightning_aug_dpo.eval.judges import Judge, RuleJudge
from lightning_aug_dpo.eval.pipeline import read_scores
from lightning_aug_dpo.runs import run_dir


class BenchmarkCallback(Callback, ABC):
    """Base class; subclasses set ``benchmark`` and implement the four hooks below.

    Args:
        data_dir: the benchmark's official download folder.
        judge: the grader (``class_path`` in YAML); default: the offline :class:`RuleJudge`.
        every_n_epochs: evaluate after every n-th training epoch (and always after the last).
        limit: only the first ``limit`` questions (quick checks); ``null`` for all.
        max_new_tokens: answer length (LLaVA-1.5's protocol: 1024).
        batch_size: questions per generation call.
        runs: grading runs (scores are means over runs; the std is logged in ``scores.json``).
        on_validate: also evaluate under ``lightning-aug-dpo validate``.
    """

    benchmark = "benchmark"
    needs_judge = True

    def __init__(
        self,
        data_dir: str,
        judge: Judge | None = None,
        every_n_epochs: int = 1,
        limit: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 8,
        runs: int = 1,
        on_validate: bool = True,
    ) -> None:
        if every_n_epochs < 1 or runs < 1 or batch_size < 1:
            raise ValueError("every_n_epochs, runs and batch_size must be at least 1")
        self.data_dir = Path(data_dir)
        self.judge = judge if judge is not None else RuleJudge()
        self.every_n_epochs = every_n_epochs
        self.limit = limit
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.runs = runs
        self.on_validate = on_validate
        self._bench: Any = None
        self.last_record: dict[str, Any] | None = None

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def load(self) -> Any:
        """The benchmark (loader of ``eval``), limited to ``self.limit`` questions."""

    @abstractmethod
    def prompts(self, bench: Any) -> tuple[dict[Any, str], dict[Any, Path]]:
        """``({id: question text}, {id: image path})`` in benchmark order."""

    @abstractmethod
    def finish(self, bench: Any, answers: dict[Any, str] | None, out: Path) -> dict[str, Any]:
        """Rank 0: write, grade and score into ``out`` (answers ``None``: read from ``out``)."""

    # ------------------------------------------------------------------ machinery
    def bench(self) -> Any:
        if self._bench is None:
            self._bench = self.load()
        return self._bench

    @staticmethod
    def _last(trainer: pl.Trainer) -> bool:
        """Whether this training epoch is the run's last (by ``max_epochs`` or ``max_steps``)."""
        epoch = trainer.current_epoch + 1
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        last_epoch = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs
        last_step = max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps
        return last_epoch or last_step

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or self._last(trainer)

    def _attach_cache(self, root: Path) -> None:
        # Only model judges have a cache; respect one configured by the user.
        if getattr(self.judge, "cache", "none") is None:
            self.judge.set_cache(root / "judge_cache.jsonl")

    def _resume_incomplete(self, root: Path, current: Path) -> None:
        for scores in sorted(root.glob("epoch=*/scores.json")):
            folder = scores.parent
            record = read_scores(folder)
            if folder == current or record is None or record.get("complete", True):
                continue
            redone = self.finish(self.bench(), None, folder)
            state = "complete" if redone["complete"] else f"still incomplete ({redone['error']})"
            judge = redone.get("judge_name")
            rank_zero_info(f"{self.benchmark}: re-graded {folder} (judge: {judge}): {state}")

    @torch.no_grad()
    def answer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[Any, str]:
        """Every question of the benchmark answered by the model (a collective: all ranks)."""
        questions, images = self.prompts(self.bench())
        return generate_answers(
            pl_module,  # type: ignore[arg-type]
            questions,
            images,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Generate on all ranks, grade on rank 0, broadcast and return the metrics."""
        bench = self.bench()
        answers = self.answer(trainer, pl_module)
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            root = run_dir(trainer) / "eval" / self.benchmark
            out = root / f"epoch={trainer.current_epoch}"
            self._attach_cache(root)
            self._resume_incomplete(root, out)
            record = self.finish(bench, answers, out)
            self.last_record = record
            metrics = {k: float(v) for k, v in record["metrics"].items()}
            if record["complete"]:
                rank_zero_info(f"{self.benchmark} ({out}):\n{record.get('table', '')}")
            else:
                rank_zero_warn(
                    f"{self.benchmark}: grading of {out} is incomplete ({record['error']}); "
                    f"judge: {record.get('judge_name')}; no score logged this epoch, grading "
                    "resumes from the cache next time"
                )
        return trainer.strategy.broadcast(metrics, src=0)

    def _log(self, pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due(trainer):
            self._log(pl_module, self.evaluate(trainer, pl_module))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        validating = trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking
        if self.on_validate and validating:
            self._log(pl_module, self.evaluate(trainer, pl_module))
