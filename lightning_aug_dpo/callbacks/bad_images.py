"""End-of-epoch summary of the images a DataModule skipped (``on_bad_image: skip``)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl

log = logging.getLogger("lightning_aug_dpo.data.datamodule")


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
