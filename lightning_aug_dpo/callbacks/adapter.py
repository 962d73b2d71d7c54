"""Checkpoints that carry a PEFT adapter directory beside each ``.ckpt``."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_aug_dpo.checkpoint_io import use_atomic_checkpoints


def adapter_dir_for(ckpt_path: str | Path) -> Path:
    """``epoch=0-step=8.ckpt`` -> ``epoch=0-step=8-adapter/``."""
    path = Path(ckpt_path)
    return path.with_name(path.stem + "-adapter")


class AdapterCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` that also exports the adapter in PEFT format.

    The ``.ckpt`` holds only trainable tensors and optimizer state (for resuming); the
    ``-adapter/`` folder loads with plain ``peft.PeftModel.from_pretrained``. Takes every
    argument of ``ModelCheckpoint``.

    Both are written atomically (a temporary name beside them, then a rename): the ``.ckpt``
    through :class:`AtomicCheckpointIO`, which this callback installs on the Trainer when it
    uses Lightning's default one, the adapter through ``AugDPOModule.save_adapter``.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        use_atomic_checkpoints(trainer)  # before a resume reads, and before the first save
        super().setup(trainer, pl_module, stage)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        module = trainer.lightning_module
        # finetune: full has no adapter: the .ckpt holds the trained model (merged/ at the end)
        if trainer.is_global_zero and getattr(module, "has_adapter", True):
            module.save_adapter(adapter_dir_for(filepath))

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        # save_last="link": last.ckpt links to the newest checkpoint; link its adapter as well.
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
        ModelCheckpoint._link_checkpoint(
            trainer, str(adapter_dir_for(filepath)), str(adapter_dir_for(linkpath))
        )

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            shutil.rmtree(adapter_dir_for(filepath), ignore_errors=True)
