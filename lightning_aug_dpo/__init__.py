"""lightning_aug_dpo: self-supervised visual preference alignment (SeVa) in PyTorch Lightning.

For each unlabelled prompt the model answers on the original image (chosen) and on a
device-augmented image (rejected); DPO on those pairs, with a LoRA-adapted policy against its own
frozen (optionally 4-bit) base, makes the model more robust. No human or GPT-4 labels.
"""

from lightning_aug_dpo.augment import (
    AdaptiveStrength,
    Augmentation,
    DiffusionNoise,
    Identity,
    ImagePreprocessor,
    KorniaAugmentation,
    Preset,
    replay,
)
from lightning_aug_dpo.callbacks import (
    AdapterCheckpoint,
    LLaVABenchCallback,
    MMVetCallback,
    PairGalleryCallback,
    PairsWriter,
    POPECallback,
    RunSummary,
    ToyWorldCallback,
)
from lightning_aug_dpo.data import AugPairDataModule, SFTDataModule
from lightning_aug_dpo.losses import (
    ChosenAnchorLoss,
    CombinedLoss,
    ConditionalPreferenceLoss,
    HingeLoss,
    IPOLoss,
    PreferenceLoss,
    RobustDPOLoss,
    RPOLoss,
    SFTLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)
from lightning_aug_dpo.models import (
    Gemma3DPOModule,
    InternVLDPOModule,
    LlavaDPOModule,
    LlavaNextDPOModule,
    Qwen2VLDPOModule,
    SmolVLMDPOModule,
    write_tiny_gemma3,
    write_tiny_internvl,
    write_tiny_llava,
    write_tiny_llava_next,
    write_tiny_qwen2_vl,
    write_tiny_smolvlm,
)
from lightning_aug_dpo.module import AugDPOModule
from lightning_aug_dpo.schedules import WarmupCosineSchedule
from lightning_aug_dpo.types import (
    ConversationBatch,
    PairStats,
    PreferenceBatch,
    PromptBatch,
    SFTBatch,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterCheckpoint",
    "AdaptiveStrength",
    "AugDPOModule",
    "AugPairDataModule",
    "Augmentation",
    "ChosenAnchorLoss",
    "CombinedLoss",
    "ConditionalPreferenceLoss",
    "ConversationBatch",
    "DiffusionNoise",
    "Gemma3DPOModule",
    "HingeLoss",
    "IPOLoss",
    "Identity",
    "ImagePreprocessor",
    "InternVLDPOModule",
    "KorniaAugmentation",
    "LLaVABenchCallback",
    "LlavaDPOModule",
    "LlavaNextDPOModule",
    "MMVetCallback",
    "POPECallback",
    "PairGalleryCallback",
    "PairStats",
    "PairsWriter",
    "PreferenceBatch",
    "PreferenceLoss",
    "Preset",
    "PromptBatch",
    "Qwen2VLDPOModule",
    "RPOLoss",
    "RobustDPOLoss",
    "RunSummary",
    "SFTBatch",
    "SFTDataModule",
    "SFTLoss",
    "SigmoidDPOLoss",
    "SimPOLoss",
    "SmolVLMDPOModule",
    "ToyWorldCallback",
    "WarmupCosineSchedule",
    "replay",
    "write_tiny_gemma3",
    "write_tiny_internvl",
    "write_tiny_llava",
    "write_tiny_llava_next",
    "write_tiny_qwen2_vl",
    "write_tiny_smolvlm",
]
