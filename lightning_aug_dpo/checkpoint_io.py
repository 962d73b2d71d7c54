"""``.ckpt`` files written atomically and read with ``torch.load(weights_only=True)``.

Why not Lightning's own ``TorchCheckpointIO`` (lightning 2.6.6): its ``_atomic_save`` writes the
serialised checkpoint inside an fsspec transaction, and for a local path fsspec's transaction
file is a ``tempfile.mkstemp()`` in the SYSTEM temp folder, moved into place by ``shutil.move``
at commit. When that folder is on another filesystem than the checkpoint (a tmpfs ``/tmp``, a
node-local scratch disk), the move is a copy into the final name: a kill during it leaves a
truncated ``.ckpt`` that ``ckpt_path=last`` then picks. Nothing is fsynced either. And it loads
with ``weights_only=None``: torch's default, which the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
environment variable turns off.

:class:`AtomicCheckpointIO` writes beside the destination and renames (``atomic.atomic_path``),
and loads with ``weights_only=True`` unless the caller passes ``weights_only=False`` itself
(``Trainer.fit(..., weights_only=False)``: only for a checkpoint from a trusted source). Our
checkpoints need nothing more: trainable tensors, optimizer and scheduler state, loop, callback
and DataModule state are tensors and plain Python values (tested in tests/reliability).

The CLI installs it on every Trainer it builds (:func:`use_atomic_checkpoints`), and so does
``AdapterCheckpoint`` in its ``setup``; elsewhere pass ``plugins=[AtomicCheckpointIO()]``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.core import strip_protocol
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_aug_dpo.atomic import atomic_path

log = logging.getLogger(__name__)


def _first_line(err: BaseException, marker: str = "") -> str:
    """The line of ``err``'s message holding ``marker`` (else its first line): torch's messages
    run to a page of advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    hits = [line for line in lines if marker and marker in line]
    return (hits or lines or [type(err).__name__])[0]


@contextlib.contextmanager
def explain_load_errors(path: _PATH) -> Iterator[None]:
    """Turn ``torch.load``'s errors for a damaged or unsafe checkpoint into a ``ValueError``
    that names the file and what to do."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused by torch.load(weights_only=True): the checkpoint holds objects "
            f"other than tensors and plain values ({_first_line(err, 'Unsupported global')}). "
            "This project's checkpoints never do. Load it only if you trust its source: "
            "Trainer.fit(..., weights_only=False)"
        ) from err
    except (FileNotFoundError, PermissionError):
        raise
    except (RuntimeError, EOFError, OSError) as err:  # OSError: a seek past the start
        raise ValueError(
            f"{path}: not a complete checkpoint ({_first_line(err)}); it was cut short or "
            "damaged, e.g. copied while still being written. Resume from another checkpoint"
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on local paths and whose loads are
    ``weights_only=True`` by default. Remote (fsspec URL) saves are Lightning's own."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(strip_protocol(str(path))) as tmp:  # file:///x.ckpt is /x.ckpt
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is None:
            weights_only = True  # explicit, so no environment variable can turn it off
        elif not weights_only:
            log.warning("%s: loading with weights_only=False, as asked: trusted files only", path)
        with explain_load_errors(path):
            return super().load_checkpoint(path, map_location, weights_only=weights_only)


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` when it uses Lightning's plain
    ``TorchCheckpointIO``; another plugin chosen by the user is left alone. (DeepSpeed writes
    its checkpoint folders itself, without any CheckpointIO.)"""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
