"""Device-side preprocessing and the augmentations that make SeVa's rejected answers."""

from lightning_aug_dpo.augment.adaptive import AdaptiveStrength
from lightning_aug_dpo.augment.base import Augmentation, seeded
from lightning_aug_dpo.augment.diffusion import DiffusionNoise, diffusion_schedule
from lightning_aug_dpo.augment.identity import Identity
from lightning_aug_dpo.augment.kornia_augment import KorniaAugmentation
from lightning_aug_dpo.augment.preprocess import ImagePreprocessor
from lightning_aug_dpo.augment.presets import PRESET_NAMES, Preset, build_preset
from lightning_aug_dpo.augment.replay import build_augmentation, replay

__all__ = [
    "PRESET_NAMES",
    "AdaptiveStrength",
    "Augmentation",
    "DiffusionNoise",
    "Identity",
    "ImagePreprocessor",
    "KorniaAugmentation",
    "Preset",
    "build_augmentation",
    "build_preset",
    "diffusion_schedule",
    "replay",
    "seeded",
]
