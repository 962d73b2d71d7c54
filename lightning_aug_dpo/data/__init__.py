"""Prompt sources, the pair-making DataModule and the synthetic dataset writer."""

from lightning_aug_dpo.data.datamodule import AugPairDataModule, sample_seed
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    load_jsonl_prompts,
    load_llava_prompts,
    load_prompts,
)

__all__ = [
    "AugPairDataModule",
    "Prompt",
    "PromptDataset",
    "load_jsonl_prompts",
    "load_llava_prompts",
    "load_prompts",
    "sample_seed",
]
