"""Offline mode: ``lightning-aug-dpo predict`` writes the rollout pairs to a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter


class PairsWriter(BasePredictionWriter):
    """Append each kept pair as one JSON line: id, image, prompt, chosen, rejected, augmentation.

    Under DDP each rank writes its own shard (``.rankN`` inserted before the suffix); at the end
    rank 0 merges the shards into ``output_path``, dropping the rows Lightning's distributed
    sampler duplicated to even out the ranks (same id), and removes the shards.

    Args:
        output_path: the JSONL file.
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

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        trainer.strategy.barrier("pairs_writer_merge")  # every shard is complete
        if trainer.is_global_zero:
            shards = [
                self.output_path.with_suffix(f".rank{rank}{self.output_path.suffix}")
                for rank in range(trainer.world_size)
            ]
            merge_shards(shards, self.output_path)
        trainer.strategy.barrier("pairs_writer_merged")


def merge_shards(shards: list[Path], output_path: Path) -> int:
    """Concatenate JSONL shards into ``output_path``, first occurrence of each id wins; the
    shards are removed. Returns the number of rows written."""
    seen: set[str] = set()
    rows = []
    for shard in shards:
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip() and (row_id := json.loads(line)["id"]) not in seen:
                seen.add(row_id)
                rows.append(line)
    output_path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    for shard in shards:
        shard.unlink()
    return len(rows)
