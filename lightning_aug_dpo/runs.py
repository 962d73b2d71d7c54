"""Where a run's files go."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: the logger's versioned folder (``runs/demo/version_0``), else the
    trainer's ``default_root_dir``. Adapters, benchmark answers and galleries are written here,
    next to ``metrics.csv``.

    Same answer as ``trainer.log_dir`` on rank 0, but without its broadcast: callbacks call this
    on rank 0 only, and a collective reached by one rank deadlocks a DDP run.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        path = trainer.default_root_dir
    elif isinstance(logger, TensorBoardLogger | CSVLogger):
        path = logger.log_dir
    else:
        path = logger.save_dir or trainer.default_root_dir
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
