"""What an epoch's batches held: the images a DataModule skipped (``on_bad_image: skip``), the
pairs it kept and why the others went; a summary per epoch, and a stop when nothing is left.

A run must never "succeed" on nothing: an epoch that kept no pair, or whose unusable images pass
``data.max_bad_fraction``, stops the run with :class:`TrainingDataError` naming every reason's
count ("missing: 1024 of 1024"), before any checkpoint or adapter of that epoch is written.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from lightning_aug_dpo.errors import TrainingDataError
from lightning_aug_dpo.types import PairStats

log = logging.getLogger("lightning_aug_dpo.data.datamodule")
MIN_IMAGES_TO_JUDGE = 32  # before the epoch ends, judge the bad-image share only on this many


def short_reason(reason: str) -> str:
    """``corrupt (OSError: ...)`` -> ``corrupt``: reasons are counted by kind."""
    return reason.split(" (")[0]


def tally_message(tally: Counter, what: str) -> str:
    """``what`` with every reason's count against the prompts seen: ``missing: 3 of 8``."""
    total = tally["prompts"]
    parts = [f"kept: {tally['kept']} of {total}"]
    for key, count in sorted(tally.items()):
        if ":" in key and count:
            parts.append(f"{key.split(':', 1)[1]}: {count} of {total}")
    return f"{what} ({', '.join(parts)})"


class BadImageTracker:
    """A DataModule's images skipped by its workers (``on_bad_image: skip``): each file warned
    about once per run (on the DataModule's own logger), all of them listed once per epoch by
    :class:`BadImageSummary`, which :meth:`attach_bad_image_summary` adds to the trainer."""

    # set by the DataModule's __init__
    bad_images: dict[str, str]  # path -> reason, skipped since the last summary
    _warned_images: set[str]  # each bad file is warned about once per run
    hparams: Any  # max_bad_fraction
    trainer: Any

    @property
    def tally(self) -> Counter:
        """This epoch's counts: ``prompts`` (readable or not), ``kept``,
        ``bad_image:<reason>`` and ``dropped:<reason>``."""
        if not hasattr(self, "_tally"):
            self._tally: Counter = Counter()
        return self._tally

    def _record_bad_images(self, skipped: list[tuple[str, str]]) -> int:
        """Remember this batch's skipped images for the epoch summary; warn once per file."""
        for path, reason in skipped:
            if self._counting():
                self.tally[f"bad_image:{short_reason(reason)}"] += 1
            self.bad_images[path] = reason
            if path not in self._warned_images:
                self._warned_images.add(path)
                logging.getLogger(type(self).__module__).warning(
                    "skipping unreadable image %s (%s)", path, reason
                )
        return len(skipped)

    def _counting(self) -> bool:
        """Training and predicting batches are counted; validation ones are not."""
        trainer = getattr(self, "trainer", None)
        return trainer is None or bool(trainer.training or trainer.predicting)

    def _tally_batch(self, stats: PairStats, skipped: int) -> None:
        """Add one batch's pair counts; stop early, in a single process, when the bad images
        already pass ``data.max_bad_fraction`` (several ranks wait for the epoch's end)."""
        if not self._counting():
            return
        self.tally["prompts"] += stats.prompts + skipped
        self.tally["kept"] += stats.kept
        for reason, count in stats.dropped.items():
            self.tally[f"dropped:{reason}"] += count
        if not (dist.is_available() and dist.is_initialized()):
            self.check_tally(self.tally, final=False)

    def check_tally(self, tally: Counter, final: bool) -> None:
        """Raise :class:`TrainingDataError` when ``tally`` (an epoch's, possibly summed over
        ranks) kept nothing (``final``) or holds too many bad images."""
        bad = sum(n for key, n in tally.items() if key.startswith("bad_image:"))
        limit = self.hparams.get("max_bad_fraction")
        enough = final or tally["prompts"] >= MIN_IMAGES_TO_JUDGE
        if limit is not None and bad and enough and bad > limit * tally["prompts"]:
            what = f"{bad} of {tally['prompts']} images are unusable, over "
            what += f"data.max_bad_fraction={limit}"
            raise TrainingDataError(
                tally_message(tally, what)
                + ". Nothing more is trained and no adapter is written. Fix: check "
                "data.image_folder (the folder the rows' image paths are relative to)"
            )
        if final and tally["prompts"] and not tally["kept"]:
            raise TrainingDataError(
                tally_message(tally, "no pair was kept this epoch")
                + ". Nothing was trained and no adapter is written. Fix: see the counts: a "
                "stronger augmentation for identical answers, data.image_folder for bad images, "
                "data.filters or model.max_length for dropped pairs"
            )

    def end_epoch_tally(self, trainer: pl.Trainer) -> None:
        """Sum the epoch's counts over ranks, check them, and start the next epoch's."""
        tally = self.tally
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, dict(tally))
            tally = sum((Counter(t) for t in gathered), Counter())
        self._tally = Counter()
        self.check_tally(tally, final=True)

    def bad_image_summary(self) -> str | None:
        """One line listing the images skipped since the last call (then forgets them);
        ``None`` if there were none."""
        if not self.bad_images:
            return None
        bad, self.bad_images = sorted(self.bad_images.items()), {}
        listed = ", ".join(f"{path} ({reason})" for path, reason in bad)
        return f"skipped {len(bad)} unreadable images this epoch: {listed}"

    def attach_bad_image_summary(self) -> None:
        """Add a :class:`BadImageSummary` to the trainer so each epoch ends with a summary
        (a DataModule gets no epoch hooks of its own)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or any(isinstance(c, BadImageSummary) for c in trainer.callbacks):
            return
        # first: its stop must come before a checkpoint callback saves the epoch
        trainer.callbacks.insert(0, BadImageSummary())


class BadImageSummary(pl.Callback):
    """Logs the datamodule's ``bad_image_summary()`` at the end of each epoch.

    ``AugPairDataModule.setup`` adds one to the trainer; adding it to ``trainer.callbacks``
    yourself works too (it is not added twice). During ``fit``, images skipped by validation
    are reported with the training epoch they belong to. Each rank reports its own files. Any
    datamodule with a ``bad_image_summary() -> str | None`` method is served.
    """

    def _report(self, trainer: pl.Trainer, what: str) -> None:
        summarize = getattr(getattr(trainer, "datamodule", None), "bad_image_summary", None)
        summary = summarize() if callable(summarize) else None
        if summary is not None:
            log.warning("%s %d: %s", what, trainer.current_epoch, summary)

    def _check(self, trainer: pl.Trainer) -> None:
        end = getattr(getattr(trainer, "datamodule", None), "end_epoch_tally", None)
        if callable(end):
            end(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tally = getattr(getattr(trainer, "datamodule", None), "tally", None)
        if tally is not None:
            tally.clear()  # a validation pass between epochs counts nothing here

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "epoch")
        self._check(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":  # during fit, the training epoch's summary has these
            self._report(trainer, "validation epoch")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "test epoch")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "predict epoch")
        self._check(trainer)
