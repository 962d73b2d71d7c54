"""Batch types that flow between the DataModule and the LightningModule.

Both are plain dataclasses so that Lightning's ``move_data_to_device`` moves their tensors and
leaves their Python fields alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptBatch:
    """What CPU workers produce: decoded images at native size and the prompt text.

    Images stay a list because real datasets mix sizes; padding to square and resizing happen on
    the device (``ImagePreprocessor``), batched per image.
    """

    ids: list[str]
    indices: list[int]  # dataset indices, used to derive per-sample augmentation seeds
    image_paths: list[str]  # as given in the prompt source, relative to the image folder
    images: list[torch.Tensor]  # uint8 (3, H, W), RGB
    questions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PreferenceBatch:
    """One DPO batch: a prompt, a chosen and a rejected response per row.

    Token tensors are right-padded; masks are 1 on real tokens. The prompt ids already contain the
    model's expanded image tokens. ``pixel_values`` is the CLEAN image: SeVa scores both the chosen
    and the rejected answer on the original image. ``aug_pixel_values`` (the image the rejected
    answer was generated from) is kept for inspection and may be ``None`` for offline pairs.
    """

    pixel_values: torch.Tensor
    prompt_input_ids: torch.Tensor
    prompt_attention_mask: torch.Tensor
    chosen_input_ids: torch.Tensor
    chosen_attention_mask: torch.Tensor
    rejected_input_ids: torch.Tensor
    rejected_attention_mask: torch.Tensor
    aug_pixel_values: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prompt_input_ids.shape[0])


@dataclass(frozen=True)
class Rollout:
    """One generated answer; ``finished`` is False when ``max_new_tokens`` cut it off."""

    text: str
    finished: bool


@dataclass
class PairStats:
    """Counts of one pair-making step, carried in ``PreferenceBatch.meta['stats']``."""

    prompts: int
    kept: int
    identical: int

    @property
    def identical_rate(self) -> float:
        return self.identical / self.prompts if self.prompts else 0.0
