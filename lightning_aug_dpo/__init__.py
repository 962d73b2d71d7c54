"""lightning_aug_dpo: self-supervised visual preference alignment (SeVa) in PyTorch Lightning.

For each unlabelled prompt the model answers on the original image (chosen) and on a
device-augmented image (rejected); DPO on those pairs, with a LoRA-adapted policy against its own
frozen (optionally 4-bit) base, makes the model more robust. No human or GPT-4 labels.
"""

from lightning_aug_dpo._lazy import attach

__version__ = "0.1.0"

# Names load on first use, so that `python -m` on a submodule runs it once (see _lazy).
__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "augment": [
            "AdaptiveStrength",
            "Augmentation",
            "DiffusionNoise",
            "Identity",
            "ImagePreprocessor",
            "KorniaAugmentation",
            "Preset",
            "replay",
        ],
        "audit": ["audit_pairs"],
        "callbacks": [
            "AdapterCheckpoint",
            "LLaVABenchCallback",
            "MMVetCallback",
            "PairAuditCallback",
            "PairGalleryCallback",
            "PairsWriter",
            "POPECallback",
            "RunSummary",
            "ToyWorldCallback",
        ],
        "data": ["AugPairDataModule", "SFTDataModule"],
        "losses": [
            "ChosenAnchorLoss",
            "CombinedLoss",
            "ConditionalPreferenceLoss",
            "HingeLoss",
            "IPOLoss",
            "PreferenceLoss",
            "RobustDPOLoss",
            "RPOLoss",
            "SFTLoss",
            "SigmoidDPOLoss",
            "SimPOLoss",
        ],
        "models": [
            "Gemma3DPOModule",
            "InternVLDPOModule",
            "LlavaDPOModule",
            "LlavaNextDPOModule",
            "Qwen2_5_VLDPOModule",
            "Qwen2VLDPOModule",
            "Qwen3VLDPOModule",
            "SmolVLMDPOModule",
            "write_tiny_gemma3",
            "write_tiny_internvl",
            "write_tiny_llava",
            "write_tiny_llava_next",
            "write_tiny_qwen2_vl",
            "write_tiny_smolvlm",
        ],
        "module": ["AugDPOModule"],
        "schedules": ["WarmupCosineSchedule"],
        "types": ["ConversationBatch", "PairStats", "PreferenceBatch", "PromptBatch", "SFTBatch"],
    },
)
