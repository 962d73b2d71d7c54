"""Where a run's files go."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory: the logger's versioned folder (``runs/demo/version_0``), else the
    trainer's ``default_root_dir``. Adapters, benchmark answers and galleries are written here,
    next to ``metrics.csv``."""
    path = Path(trainer.log_dir) if trainer.log_dir else Path(trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
