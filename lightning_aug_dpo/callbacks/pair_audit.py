"""The pair audit in the training loop: which shortcut the live pairs carry, as they are made.

:class:`PairAuditCallback` keeps the texts of the last ``window`` training pairs (each batch's
``PreferenceBatch.meta["rows"]``: prompt, chosen, rejected, image), audits them every
``every_n_steps`` optimizer steps with :func:`~lightning_aug_dpo.audit.audit_pairs` and logs
``train/pairs/...`` metrics (:func:`~lightning_aug_dpo.audit_format.metrics_of`) at that global
step, to every logger of the run: ``length_acc`` (how well length alone tells chosen from
rejected), ``rejected_longer``, ``length_diff``, ``words_acc``, ``flips/<family>`` and, where the
toy world's scene records exist, ``objects_acc``, ``rejected_names_more``, ``chosen_chair_i``
and ``rejected_chair_i``. At the end of the first epoch it prints its verdict lines once ("DPO
can satisfy 78% of these pairs by preferring the shorter answer") and writes
``pair_audit.json`` / ``.md`` in the run directory. Under DDP each rank audits its own pairs;
rank 0 logs, prints and writes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_aug_dpo.atomic import write_json, write_text
from lightning_aug_dpo.audit import audit_pairs
from lightning_aug_dpo.audit_format import format_markdown, metrics_of
from lightning_aug_dpo.audit_stats import DEFAULT_OPENINGS, PairText
from lightning_aug_dpo.audit_truth import find_scenes, load_scenes
from lightning_aug_dpo.runs import run_dir
from lightning_aug_dpo.types import PreferenceBatch

AUTO = "auto"  # the scenes.json in or beside the data's image folder, if there is one


class PairAuditCallback(Callback):
    """Audit the training pairs every ``every_n_steps`` steps; print the verdict once.

    Args:
        every_n_steps: log the ``train/pairs/...`` audit metrics at multiples of this step.
        window: pairs kept (the newest); the audit reads these.
        threshold: a feature gets a verdict line from this accuracy up.
        min_pairs: fewer differing pairs give no verdict.
        flag_words: words or phrases counted on each side (a "flagged words" feature).
        openings: families of openings (default ``[["yes", "no"], ["there is", "there are"]]``).
        scenes: a scene file ``{image: toy-world scene}`` for exact quality per side; ``"auto"``:
            the toy world's ``scenes.json`` in or beside the data's ``image_folder``; ``None``.
        print_verdict: print the verdict lines at the end of the first epoch.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        window: int = 4096,
        threshold: float = 0.65,
        min_pairs: int = 10,
        flag_words: list[str] | None = None,
        openings: list[list[str]] | None = None,
        scenes: str | None = AUTO,
        print_verdict: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or window < 1:
            raise ValueError(
                f"PairAuditCallback: every_n_steps={every_n_steps}, window={window}; give >= 1"
            )
        if not 0.5 < threshold <= 1.0:
            raise ValueError(f"PairAuditCallback: threshold={threshold}; give a share in (0.5, 1]")
        self.every_n_steps = every_n_steps
        self.threshold = threshold
        self.min_pairs = min_pairs
        self.flag_words = list(flag_words or [])
        self.openings = [list(o) for o in (openings or DEFAULT_OPENINGS)]
        self.scenes_from = scenes
        self.print_verdict = print_verdict
        self.pairs: deque[PairText] = deque(maxlen=window)
        self.scenes: dict[str, Any] | None = None
        self.last_report: dict[str, Any] | None = None
        self.printed = False
        self._last_step: int | None = None
        self.seen = 0  # pairs added in all
        self._report_size = -1  # self.seen when last_report was made

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.scenes_from is None:
            return
        # a missing or malformed scene file stops the run before the first step
        if self.scenes_from == AUTO:
            hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None)
            found = find_scenes(getattr(hparams, "image_folder", None))
        else:
            found = self.scenes_from
        self.scenes = load_scenes(found) if found else None

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Keep the texts of a batch's pair rows (``PreferenceBatch.meta["rows"]``)."""
        for row in rows:
            self.pairs.append(
                PairText(str(row["prompt"]), str(row["chosen"]), str(row["rejected"]),
                         str(row.get("image") or ""))
            )  # fmt: skip
        self.seen += len(rows)

    def report(self) -> dict[str, Any] | None:
        """The audit of the pairs kept now (cached until new pairs arrive); None before any."""
        if not self.pairs:
            return self.last_report
        if self._report_size != self.seen or self.last_report is None:
            self.last_report = audit_pairs(
                list(self.pairs),
                scenes=self.scenes,
                flag_words=self.flag_words,
                openings=self.openings,
                threshold=self.threshold,
                min_pairs=self.min_pairs,
            )
            self._report_size = self.seen
        return self.last_report

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not isinstance(batch, PreferenceBatch):
            return
        self.add(list(batch.meta.get("rows", [])))
        step = trainer.global_step
        # once per optimizer step (accumulation calls this hook several times per step)
        if step == self._last_step or step % self.every_n_steps or not self.pairs:
            return
        self._last_step = step
        report = self.report()
        if report is not None:
            # straight to the loggers, at this step only: a value logged through the module from
            # a batch-end hook would be repeated on every later step of the epoch
            metrics = metrics_of(report)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.printed or not self.pairs:
            return
        self.printed = True
        report = self.report() if trainer.is_global_zero else None
        if report is None:
            return
        root = run_dir(trainer)
        source = f"training pairs of epoch {trainer.current_epoch}, last {len(self.pairs):,} kept"
        write_json(root / "pair_audit.json", report)
        write_text(root / "pair_audit.md", format_markdown(report, source))
        if self.print_verdict:
            lines = [*report["verdicts"], *([report["truth_line"]] if report["truth_line"] else [])]
            rank_zero_info("\n".join([f"pair audit ({source}):", *(f"  {x}" for x in lines)]))

    def state_dict(self) -> dict[str, Any]:
        return {"printed": self.printed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.printed = bool(state_dict.get("printed", False))
