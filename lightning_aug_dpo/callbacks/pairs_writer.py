"""Offline mode: ``lightning-aug-dpo predict`` writes the rollout pairs to a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter


class PairsWriter(BasePredictionWriter):
    """Append each kept pair as one JSON line: id, image, prompt, chosen, rejected, augmentation.

    Args:
        output_path: the JSONL file (one per rank: ``.rankN`` is inserted when world size > 1).
    """

    def __init__(self, output_path: str) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)

    def _path(self, trainer: pl.Trainer) -> Path:
        if trainer.world_size == 1:
            return self.output_path
        return self.output_path.with_suffix(f".rank{trainer.global_rank}{self.output_path.suffix}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")  # a fresh file per run; rows are appended batch by batch

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
        with self._path(trainer).open("a", encoding="utf-8") as f:
            for row in prediction:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
