"""SeVa's augmentation family as named presets with one ``strength`` knob.

Every preset maps ``strength`` in [0, 1] to its parameters through the magnitude ``m = 2 *
strength``: **strength 0.5 is the setting SeVa published** (docs/method.md), 0 is (nearly) the
identity and 1 doubles the corruption (clamped to what the transform allows). For all-or-nothing
transforms (flip, grayscale, invert, equalize, autocontrast, AutoAugment) ``m`` is the
probability of applying, capped at 1, so SeVa's "always" is strength >= 0.5.

SeVa applied torchvision transforms to the PIL image before the CLIP processor; here they run on
the model-sized square, on the device. Sizes given in pixels by SeVa are converted with the size
they referred to: a ~640 px COCO photo for single transforms (Pad 50 -> 7.8 % per edge,
CenterCrop 128 -> keep 20 %, RandomCrop 224 -> keep 35 %, blur sigma in 640 px units) and the
224 px crop of the composites (blur sigma in 224 px units).

| preset | parameters at magnitude m (strength 0.5: m = 1, SeVa's) |
|---|---|
| diffusion | DiffusionNoise, t = 1000 * strength (t = 500; t = 800 is strength 0.8) |
| pad | black border of 7.8 % * m per edge, resized back (Pad 50) |
| center_crop | keep 1 - 0.8 m of the side around the centre (CenterCrop 128) |
| random_crop | keep 1 - 0.65 m of the side at a random place (RandomCrop 224) |
| random_resized_crop | area scale [1 - 0.64 m, 1 - 0.36 m] (RRC scale 0.36-0.64) |
| hflip | p = m |
| perspective | distortion m * 0.6 (Perspective 0.6, p = 1) |
| rotation | angle in [0, 180 m] degrees (Rotation 0-180) |
| affine | degrees [30, 70] m, translate (0.1, 0.3) m, scale 1 - [0.5, 0.25] m |
| grayscale / invert / equalize / autocontrast | p = m |
| color_jitter | brightness, contrast, saturation 0.4 m, hue 0.1 m |
| posterize | keep 8 - 6 m bits (Posterize 2 bits) |
| solarize | threshold 1 - 0.5 m (Solarize 128) |
| sharpness | factor 1 - m, 0 is fully smoothed (Sharpness 0) |
| gaussian_blur | sigma [0.1, 2] m (640 px units) |
| randaugment | 2 ops at magnitude 9 m of 30 (torchvision's default 9) |
| autoaugment | ImageNet policy, applied with p = m |
| moco | RRC scale [1 - 0.8 m, 1] + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) m always |
|      | + grayscale p = 0.2 m + blur sigma [0.1, 2] m (224 px units) always |
| byol | moco with RRC scale [1 - 0.92 m, 1] |
| simclr | RRC scale [1 - 0.8 m, 1] + flip + ColorJitter(0.4, 0.4, 0.4, 0.4) m always |
|        | + grayscale p = 0.2 m (no blur) |
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import kornia.augmentation as K
import torch
from kornia.augmentation import auto
from torch import nn

from lightning_aug_dpo.augment.base import Augmentation
from lightning_aug_dpo.augment.diffusion import DiffusionNoise
from lightning_aug_dpo.augment.kornia_augment import KorniaAugmentation

PresetName = Literal[
    "diffusion", "pad", "center_crop", "random_crop", "random_resized_crop", "hflip",
    "perspective", "rotation", "affine", "grayscale", "color_jitter", "invert", "posterize",
    "solarize", "equalize", "sharpness", "autocontrast", "gaussian_blur", "randaugment",
    "autoaugment", "moco", "byol", "simclr",
]  # fmt: skip
PRESET_NAMES: tuple[str, ...] = get_args(PresetName)

PHOTO_SIDE = 640  # the COCO-sized photos SeVa's single transforms saw
CROP_SIDE = 224  # the crops of SeVa's composites


def _ratio(m: float) -> tuple[float, float]:
    """RandomResizedCrop's aspect range (3/4, 4/3), narrowed to (1, 1) as m -> 0."""
    t = min(m, 1.0)
    return (0.75**t, (4 / 3) ** t)


def _blur(sigma: tuple[float, float], p: float = 1.0) -> K.RandomGaussianBlur:
    lo, hi = max(sigma[0], 1e-3), max(sigma[1], 1e-3)
    kernel = 2 * math.ceil(3 * hi) + 1
    return K.RandomGaussianBlur(kernel_size=max(kernel, 3), sigma=(lo, hi), p=p)


def _contrastive(m: float, side: int, min_scale: float, hue: float, blur: bool) -> nn.Module:
    """moco / byol / simclr: SeVa applies jitter (and blur) always, not with p = 0.8 / 0.5."""
    ops: list[nn.Module] = [
        K.RandomResizedCrop((side, side), scale=(max(0.01, 1 - (1 - min_scale) * m), 1.0),
                            ratio=_ratio(m), p=1.0),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(min(1.0, 0.4 * m), min(1.0, 0.4 * m), min(1.0, 0.4 * m),
                      min(0.5, hue * m), p=1.0),
        K.RandomGrayscale(p=min(1.0, 0.2 * m)),
    ]  # fmt: skip
    if blur:
        scale = side / CROP_SIDE
        ops.append(_blur((0.1 * m * scale, 2.0 * m * scale)))
    return K.AugmentationSequential(*ops)


def build_preset(name: str, strength: float, side: int) -> nn.Module:
    """The Kornia module of preset ``name`` at ``strength`` for ``side`` x ``side`` images."""
    m = 2.0 * strength
    p = min(1.0, m)
    photo = side / PHOTO_SIDE
    if name == "pad":
        zoom = 1.0 / (1.0 + 2 * (50 / PHOTO_SIDE) * m)
        return K.RandomAffine(degrees=0.0, scale=(zoom, zoom), p=1.0)
    if name == "center_crop":
        keep = max(0.05, 1 - (1 - 128 / PHOTO_SIDE) * m)
        return K.RandomAffine(degrees=0.0, scale=(1 / keep, 1 / keep), p=1.0)
    if name == "random_crop":
        keep = max(0.05, 1 - (1 - 224 / PHOTO_SIDE) * m)
        return K.RandomResizedCrop((side, side), scale=(keep**2, keep**2), ratio=(1.0, 1.0), p=1.0)
    if name == "random_resized_crop":
        lo, hi = max(0.01, 1 - 0.64 * m), max(0.01, 1 - 0.36 * m)
        return K.RandomResizedCrop((side, side), scale=(lo, hi), ratio=_ratio(m), p=1.0)
    if name == "hflip":
        return K.RandomHorizontalFlip(p=p)
    if name == "perspective":
        return K.RandomPerspective(distortion_scale=min(1.0, 0.6 * m), p=1.0)
    if name == "rotation":
        return K.RandomRotation(degrees=(0.0, 180.0 * m), p=1.0)
    if name == "affine":
        return K.RandomAffine(
            degrees=(30.0 * m, 70.0 * m),
            translate=(min(1.0, 0.1 * m), min(1.0, 0.3 * m)),
            scale=(max(0.1, 1 - 0.5 * m), max(0.1, 1 - 0.25 * m)),
            p=1.0,
        )
    if name == "grayscale":
        return K.RandomGrayscale(p=p)
    if name == "color_jitter":
        jitter = min(1.0, 0.4 * m)
        return K.ColorJitter(jitter, jitter, jitter, min(0.5, 0.1 * m), p=1.0)
    if name == "invert":
        return K.RandomInvert(p=p)
    if name == "posterize":
        bits = float(max(1, round(8 - 6 * m)))
        return K.RandomPosterize(bits=(bits, bits), p=1.0)
    if name == "solarize":
        threshold = max(0.0, 1 - 0.5 * m)
        return K.RandomSolarize(thresholds=(threshold, threshold), additions=(0.0, 0.0), p=1.0)
    if name == "equalize":
        return K.RandomEqualize(p=p)
    if name == "sharpness":
        factor = max(0.0, 1 - m)
        return K.RandomSharpness(sharpness=(factor, factor), p=1.0)
    if name == "autocontrast":
        return K.RandomAutoContrast(p=p)
    if name == "gaussian_blur":
        return _blur((0.1 * m * photo, 2.0 * m * photo))
    if name == "randaugment":
        return auto.RandAugment(n=2, m=min(29, max(1, round(9 * m))))
    if name == "autoaugment":
        return auto.AutoAugment(policy="imagenet")
    if name == "moco":
        return _contrastive(m, side, min_scale=0.2, hue=0.1, blur=True)
    if name == "byol":
        return _contrastive(m, side, min_scale=0.08, hue=0.1, blur=True)
    if name == "simclr":
        return _contrastive(m, side, min_scale=0.2, hue=0.4, blur=False)
    raise ValueError(f"unknown augmentation preset {name!r}; choose one of {list(PRESET_NAMES)}")


class Preset(Augmentation):
    """A named SeVa augmentation (see the table in this module) at a given ``strength``.

    Args:
        name: the preset; ``diffusion`` is SeVa's default, ``moco`` its best composite.
        strength: corruption in [0, 1]; 0.5 reproduces SeVa's published setting.
    """

    def __init__(self, name: PresetName = "diffusion", strength: float = 0.5) -> None:
        super().__init__()
        if name not in PRESET_NAMES:
            raise ValueError(
                f"unknown augmentation preset {name!r}; choose one of {list(PRESET_NAMES)}"
            )
        self.name = name
        self.space = "normalized" if name == "diffusion" else "pixel"
        self._strength = 0.5
        self._built: tuple[float, int] | None = None
        self.inner: Augmentation | None = None
        self.strength = strength

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {value} (preset {self.name})")
        self._strength = float(value)

    @property
    def apply_prob(self) -> float:
        """Probability of augmenting at all (AutoAugment has no magnitude of its own)."""
        return min(1.0, 2.0 * self._strength) if self.name == "autoaugment" else 1.0

    def config(self) -> dict[str, Any]:
        return {"preset": self.name, "strength": self._strength}

    def _inner_for(self, side: int) -> Augmentation:
        """(Re)build the underlying augmentation when strength or image size changed."""
        if self._built != (self._strength, side):
            if self.name == "diffusion":
                step = min(round(1000 * self._strength), 999)
                self.inner = DiffusionNoise(noise_step=step)
            else:
                self.inner = KorniaAugmentation(build_preset(self.name, self._strength, side))
            self._built = (self._strength, side)
        assert self.inner is not None
        return self.inner

    def sample(self, shape: torch.Size, seed: int) -> dict[str, Any]:
        if shape[-1] != shape[-2]:
            raise ValueError(f"presets expect square model inputs, got {tuple(shape)}")
        applied = bool(torch.rand(()) < self.apply_prob) if self.apply_prob < 1.0 else True
        inner = self._inner_for(shape[-1])
        return {"applied": applied, "inner": inner.sample(shape, seed) if applied else None}

    def record_params(self, params: dict[str, Any]) -> dict[str, Any]:
        # ``self.inner`` is the augmentation that drew ``params`` (``sample`` just built it).
        inner = params["inner"]
        if inner is not None and self.inner is not None:
            inner = self.inner.record_params(inner)
        return {"applied": params["applied"], "inner": inner}

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if not params["applied"]:
            return image
        return self._inner_for(image.shape[-1]).apply(image, params["inner"])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, strength={self._strength}"
