"""PIL versions of the augmentation presets: the CPU-worker side of ``augment.py``.

Each preset of :mod:`lightning_aug_dpo.augment.presets` is re-implemented here with PIL
(``Image.transform`` / ``rotate`` / ``resize`` for the geometry, ``ImageOps``, ``ImageEnhance``,
``ImageFilter``) at the same magnitude mapping ``m = 2 * strength``, so that strength 0.5 is SeVa's
published setting on both sides. The aim is a fair *cost* comparison of the same transforms on a
torchvision-style CPU pipeline, not bit equality: random draws come from Python's ``random``,
resampling is bilinear everywhere (as Kornia on the device side), RandAugment draws 2 ops from
torchvision's op set and AutoAugment uses torchvision's ImageNet policy.

:class:`PILPreset` ``(image, seed)`` runs the pixel transform, converts to a float32 ``(3, H, W)``
array and normalises it with CLIP's statistics; ``diffusion`` adds its Gaussian noise (numpy) to
the normalised array instead, which is what a CPU worker would do for SeVa's default.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.augment.diffusion import diffusion_schedule
from lightning_aug_dpo.augment.presets import CROP_SIDE, PHOTO_SIDE, PRESET_NAMES

BASELINE = "none"  # no augmentation: to-tensor + normalise only (the pipeline's fixed cost)
PIL_PRESET_NAMES: tuple[str, ...] = (BASELINE, *PRESET_NAMES)
BILINEAR = Image.Resampling.BILINEAR
PixelOp = Callable[[Image.Image, random.Random], Image.Image]


# ---------------------------------------------------------------------------- geometry helpers
def _warp(img: Image.Image, forward: np.ndarray) -> Image.Image:
    """Apply the 3x3 forward affine map (output = forward @ input), black fill."""
    inv = np.linalg.inv(forward)
    data = tuple(float(v) for v in inv[:2].reshape(-1))
    return img.transform(img.size, Image.Transform.AFFINE, data, BILINEAR, fillcolor=(0, 0, 0))


def _affine(
    img: Image.Image,
    angle: float,
    translate: tuple[float, float],
    scale: float,
    shear: tuple[float, float] = (0.0, 0.0),
    centre: bool = True,
) -> Image.Image:
    w, h = img.size
    cx, cy = ((w - 1) * 0.5, (h - 1) * 0.5) if centre else (0.0, 0.0)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shr = np.array([[1, shear[0], 0], [shear[1], 1, 0], [0, 0, 1]])
    to_c = np.array([[1, 0, cx + translate[0]], [0, 1, cy + translate[1]], [0, 0, 1]])
    from_c = np.array([[scale, 0, -cx * scale], [0, scale, -cy * scale], [0, 0, 1]])
    return _warp(img, to_c @ rot @ shr @ from_c)


def _crop_resize(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    return img.resize(img.size, BILINEAR, box=box)


def _rrc(
    img: Image.Image, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> Image.Image:
    """torchvision's RandomResizedCrop sampling (10 tries, then the whole image)."""
    w, h = img.size
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return _crop_resize(img, (left, top, left + cw, top + ch))
    return img.copy()


def _perspective(img: Image.Image, d: float, rng: random.Random) -> Image.Image:
    """torchvision's RandomPerspective corner sampling, solved into PIL's 8 coefficients."""
    w, h = img.size
    dx, dy = int(d * (w // 2)), int(d * (h // 2))
    end = [(rng.randint(0, dx), rng.randint(0, dy)),
           (rng.randint(w - dx - 1, w - 1), rng.randint(0, dy)),
           (rng.randint(w - dx - 1, w - 1), rng.randint(h - dy - 1, h - 1)),
           (rng.randint(0, dx), rng.randint(h - dy - 1, h - 1))]  # fmt: skip
    start = [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]
    rows, rhs = [], []
    for (ex, ey), (sx, sy) in zip(end, start, strict=True):
        rows += [[ex, ey, 1, 0, 0, 0, -sx * ex, -sx * ey], [0, 0, 0, ex, ey, 1, -sy * ex, -sy * ey]]
        rhs += [sx, sy]
    coeffs = np.linalg.solve(np.array(rows, float), np.array(rhs, float))
    return img.transform(img.size, Image.Transform.PERSPECTIVE, tuple(coeffs), BILINEAR)


# ---------------------------------------------------------------------------- colour helpers
def _hue(img: Image.Image, factor: float) -> Image.Image:
    """torchvision's PIL adjust_hue: shift the H channel of HSV (uint8, wrapping)."""
    h, s, v = img.convert("HSV").split()
    shifted = np.asarray(h, dtype=np.uint8) + np.uint8(round(factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")


def _jitter(img: Image.Image, bcs: float, hue: float, rng: random.Random) -> Image.Image:
    """ColorJitter(bcs, bcs, bcs, hue), the four adjustments in random order."""
    order = [0, 1, 2, 3]
    rng.shuffle(order)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for op in order:
        if op < 3 and bcs > 0:
            img = enhancers[op](img).enhance(rng.uniform(max(0.0, 1 - bcs), 1 + bcs))
        elif op == 3 and hue > 0:
            img = _hue(img, rng.uniform(-hue, hue))
    return img


def _gray(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def _blur(img: Image.Image, sigma: tuple[float, float], rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*sigma)))


# ---------------------------------------------------------------------------- auto-augment ops
def _op_space(bins: int, side: int) -> dict[str, tuple[Sequence[float], bool]]:
    """torchvision's magnitude tables: op -> (magnitude per bin, signed)."""

    def lin(hi: float, lo: float = 0.0) -> list[float]:
        return [lo + (hi - lo) * i / (bins - 1) for i in range(bins)]

    return {
        "Identity": ([0.0] * bins, False), "ShearX": (lin(0.3), True), "ShearY": (lin(0.3), True),
        "TranslateX": (lin(150 / 331 * side), True), "TranslateY": (lin(150 / 331 * side), True),
        "Rotate": (lin(30.0), True), "Brightness": (lin(0.9), True), "Color": (lin(0.9), True),
        "Contrast": (lin(0.9), True), "Sharpness": (lin(0.9), True),
        "Posterize": ([8 - round(i / ((bins - 1) / 4)) for i in range(bins)], False),
        "Solarize": (lin(0.0, 255.0), False), "AutoContrast": ([0.0] * bins, False),
        "Equalize": ([0.0] * bins, False), "Invert": ([0.0] * bins, False),
    }  # fmt: skip


def _apply_op(img: Image.Image, op: str, mag: float) -> Image.Image:
    if op in ("ShearX", "ShearY"):
        shear = (mag, 0.0) if op == "ShearX" else (0.0, mag)
        return _affine(img, 0.0, (0.0, 0.0), 1.0, shear, centre=False)
    if op in ("TranslateX", "TranslateY"):
        t = (int(mag), 0) if op == "TranslateX" else (0, int(mag))
        return _affine(img, 0.0, t, 1.0)
    if op == "Rotate":
        return img.rotate(mag, resample=BILINEAR)
    enhance = {
        "Brightness": ImageEnhance.Brightness,
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if op in enhance:
        return enhance[op](img).enhance(1.0 + mag)
    if op == "Posterize":
        return ImageOps.posterize(img, int(mag))
    if op == "Solarize":
        return ImageOps.solarize(img, int(mag))
    ops = {
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Invert": ImageOps.invert,
    }
    return ops[op](img) if op in ops else img


def _signed(mag: float, signed: bool, rng: random.Random) -> float:
    return -mag if signed and rng.random() < 0.5 else mag


def _randaugment(magnitude: int) -> PixelOp:
    def run(img: Image.Image, rng: random.Random) -> Image.Image:
        space = _op_space(31, img.size[0])
        names = [n for n in space if n != "Invert"]
        for _ in range(2):
            op = rng.choice(names)
            table, signed = space[op]
            img = _apply_op(img, op, _signed(table[magnitude], signed, rng))
        return img

    return run


# torchvision's AutoAugmentPolicy.IMAGENET: ((op, probability, magnitude bin), ...)
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)), (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
    (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)), (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)), (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
)  # fmt: skip


def _autoaugment(p: float) -> PixelOp:
    def run(img: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() >= p:
            return img
        space = _op_space(10, img.size[0])
        for op, prob, bin_ in rng.choice(IMAGENET_POLICY):
            if rng.random() <= prob:
                table, signed = space[op]
                img = _apply_op(img, op, _signed(table[bin_], signed, rng))
        return img

    return run


# ---------------------------------------------------------------------------- the presets
def _ratio(m: float) -> tuple[float, float]:
    t = min(m, 1.0)
    return (0.75**t, (4 / 3) ** t)


def _maybe(p: float, fn: Callable[[Image.Image], Image.Image]) -> PixelOp:
    return lambda img, rng: fn(img) if rng.random() < p else img


def _contrastive(m: float, min_scale: float, hue: float, blur: bool) -> PixelOp:
    scale = (max(0.01, 1 - (1 - min_scale) * m), 1.0)
    bcs, hue = min(1.0, 0.4 * m), min(0.5, hue * m)

    def run(img: Image.Image, rng: random.Random) -> Image.Image:
        img = _rrc(img, scale, _ratio(m), rng)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = _jitter(img, bcs, hue, rng)
        if rng.random() < min(1.0, 0.2 * m):
            img = _gray(img)
        if blur:
            s = img.size[0] / CROP_SIDE
            img = _blur(img, (0.1 * m * s, 2.0 * m * s), rng)
        return img

    return run


def build_pixel_op(name: str, strength: float) -> PixelOp:
    """The PIL transform of preset ``name`` at ``strength`` (identity for diffusion / none)."""
    m = 2.0 * strength
    p = min(1.0, m)
    if name in (BASELINE, "diffusion"):
        return lambda img, rng: img
    if name == "pad":
        frac = 50 / PHOTO_SIDE * m

        def pad(img: Image.Image, rng: random.Random) -> Image.Image:
            border = round(frac * img.size[0])
            return ImageOps.expand(img, border, fill=(0, 0, 0)).resize(img.size, BILINEAR)

        return pad
    if name in ("center_crop", "random_crop"):
        keep = max(0.05, 1 - (1 - (128 if name == "center_crop" else 224) / PHOTO_SIDE) * m)

        def crop(img: Image.Image, rng: random.Random) -> Image.Image:
            w, h = img.size
            cw, ch = keep * w, keep * h
            left = (w - cw) / 2 if name == "center_crop" else rng.uniform(0, w - cw)
            top = (h - ch) / 2 if name == "center_crop" else rng.uniform(0, h - ch)
            return _crop_resize(img, (left, top, left + cw, top + ch))

        return crop
    if name == "random_resized_crop":
        scale = (max(0.01, 1 - 0.64 * m), max(0.01, 1 - 0.36 * m))
        return lambda img, rng: _rrc(img, scale, _ratio(m), rng)
    if name == "perspective":
        return lambda img, rng: _perspective(img, min(1.0, 0.6 * m), rng)
    if name == "rotation":
        return lambda img, rng: img.rotate(rng.uniform(0.0, 180.0 * m), resample=BILINEAR)
    if name == "affine":

        def affine(img: Image.Image, rng: random.Random) -> Image.Image:
            w, h = img.size
            t = (
                round(rng.uniform(-1, 1) * min(1.0, 0.1 * m) * w),
                round(rng.uniform(-1, 1) * min(1.0, 0.3 * m) * h),
            )
            s = rng.uniform(max(0.1, 1 - 0.5 * m), max(0.1, 1 - 0.25 * m))
            return _affine(img, rng.uniform(30.0 * m, 70.0 * m), t, s)

        return affine
    if name == "color_jitter":
        return lambda img, rng: _jitter(img, min(1.0, 0.4 * m), min(0.5, 0.1 * m), rng)
    if name == "posterize":
        return lambda img, rng: ImageOps.posterize(img, max(1, round(8 - 6 * m)))
    if name == "solarize":
        return lambda img, rng: ImageOps.solarize(img, round(255 * max(0.0, 1 - 0.5 * m)))
    if name == "sharpness":
        return lambda img, rng: ImageEnhance.Sharpness(img).enhance(max(0.0, 1 - m))
    if name == "gaussian_blur":
        return lambda img, rng: _blur(
            img, (0.1 * m * img.size[0] / PHOTO_SIDE, 2.0 * m * img.size[0] / PHOTO_SIDE), rng
        )
    if name == "randaugment":
        return _randaugment(min(29, max(1, round(9 * m))))
    if name == "autoaugment":
        return _autoaugment(p)
    if name == "moco":
        return _contrastive(m, min_scale=0.2, hue=0.1, blur=True)
    if name == "byol":
        return _contrastive(m, min_scale=0.08, hue=0.1, blur=True)
    if name == "simclr":
        return _contrastive(m, min_scale=0.2, hue=0.4, blur=False)
    all_or_nothing = {
        "hflip": ImageOps.mirror,
        "grayscale": _gray,
        "invert": ImageOps.invert,
        "equalize": ImageOps.equalize,
        "autocontrast": ImageOps.autocontrast,
    }
    if name in all_or_nothing:
        return _maybe(p, all_or_nothing[name])
    raise ValueError(f"unknown preset {name!r}; choose one of {list(PIL_PRESET_NAMES)}")


def to_normalized(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB PIL image -> float32 ``(3, H, W)``, scaled to [0, 1] and normalised."""
    x = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (x - m) / s


def llava_square(img: Image.Image, size: int, mean: Sequence[float] = CLIP_MEAN) -> Image.Image:
    """LLaVA-1.5's ``expand2square`` (mean-colour fill) + CLIP's bicubic resize to ``size``."""
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(v * 255) for v in mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)


class PILPreset:
    """Preset ``name`` on one PIL image: ``preset(image, seed) -> float32 (3, H, W)``.

    Args:
        name: a name of :data:`PIL_PRESET_NAMES` (the device presets plus ``none``).
        strength: in [0, 1]; 0.5 is SeVa's published setting.
        mean, std: the normalisation (CLIP's by default).
    """

    def __init__(
        self,
        name: str,
        strength: float = 0.5,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.name, self.strength = name, strength
        self.mean, self.std = tuple(mean), tuple(std)
        self.pixel_op = build_pixel_op(name, strength)
        self.signal = 1.0
        if name == "diffusion":
            self.signal = float(diffusion_schedule()[min(round(1000 * strength), 999)])

    def __getstate__(self) -> dict[str, Any]:  # closures do not pickle: rebuilt in the worker
        return {k: v for k, v in self.__dict__.items() if k != "pixel_op"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pixel_op = build_pixel_op(self.name, self.strength)

    def pixel(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """The pixel-space transform alone (identity for ``diffusion`` and ``none``)."""
        return self.pixel_op(img, rng)

    def __call__(self, img: Image.Image, seed: int) -> np.ndarray:
        x = to_normalized(self.pixel(img, random.Random(seed)), self.mean, self.std)
        if self.name == "diffusion":
            eps = np.random.default_rng(seed).standard_normal(x.shape, dtype=np.float32)
            x = self.signal * x + math.sqrt(1.0 - self.signal**2) * eps
        return x
