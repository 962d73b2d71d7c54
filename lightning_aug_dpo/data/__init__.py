"""Prompt sources, the pair-making and SFT DataModules and the synthetic dataset writer."""

from lightning_aug_dpo.data.datamodule import AugPairDataModule, sample_seed
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    load_jsonl_prompts,
    load_llava_prompts,
    load_prompts,
)
from lightning_aug_dpo.data.sft import SFTDataModule, load_conversations

__all__ = [
    "AugPairDataModule",
    "Prompt",
    "PromptDataset",
    "SFTDataModule",
    "load_conversations",
    "load_jsonl_prompts",
    "load_llava_prompts",
    "load_prompts",
    "sample_seed",
]
