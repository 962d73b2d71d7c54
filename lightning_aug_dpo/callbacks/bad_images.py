"""End-of-epoch summary of the images a DataModule skipped (``on_bad_image: skip``)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl

log = logging.getLogger("lightning_aug_dpo.data.datamodule")


class BadImageTracker:
    """A DataModule's images skipped by its workers (``on_bad_image: skip``): each file warned
    about once per run (on the DataModule's own logger), all of them listed once per epoch by
    :class:`BadImageSummary`, which :meth:`attach_bad_image_summary` adds to the trainer."""

    # set by the DataModule's __init__
    bad_images: dict[str, str]  # path -> reason, skipped since the last summary
    _warned_images: set[str]  # each bad file is warned about once per run

    def _record_bad_images(self, skipped: list[tuple[str, str]]) -> int:
        """Remember this batch's skipped images for the epoch summary; warn once per file."""
        for path, reason in skipped:
            self.bad_images[path] = reason
            if path not in self._warned_images:
                self._warned_images.add(path)
                logging.getLogger(type(self).__module__).warning(
                    "skipping unreadable image %s (%s)", path, reason
                )
        return len(skipped)

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
        trainer.callbacks.append(BadImageSummary())


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

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "epoch")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":  # during fit, the training epoch's summary has these
            self._report(trainer, "validation epoch")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "test epoch")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "predict epoch")
