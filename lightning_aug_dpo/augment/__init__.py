"""Device-side preprocessing and augmentations that make SeVa's rejected answers."""

from lightning_aug_dpo.augment.diffusion import DiffusionNoise, diffusion_schedule
from lightning_aug_dpo.augment.preprocess import ImagePreprocessor

__all__ = ["DiffusionNoise", "ImagePreprocessor", "diffusion_schedule"]
