"""Prompt sources, the pair-making and SFT DataModules and the synthetic dataset writer."""

from lightning_aug_dpo._lazy import attach

# Names load on first use, so that `python -m` on a submodule runs it once (see _lazy).
__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "datamodule": ["AugPairDataModule", "sample_seed"],
        "prompts": [
            "Prompt",
            "PromptDataset",
            "load_jsonl_prompts",
            "load_llava_prompts",
            "load_prompts",
        ],
        "sft": ["SFTDataModule", "load_conversations"],
    },
)
