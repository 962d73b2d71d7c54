"""Device-side image preprocessing with a vision processor's own settings.

LLaVA-1.5 pads each image to a square filled with the mean colour (``expand2square``), then CLIP
resizes the shortest edge (bicubic), centre-crops, rescales to [0, 1] and normalises. Doing this on
the accelerator, after transfer, keeps CPU workers to JPEG/PNG decoding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _size_from(processor_size: Any) -> int:
    if isinstance(processor_size, int):
        return processor_size
    size = dict(processor_size)
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    if size.get("height") != size.get("width"):
        raise ValueError(f"only square model inputs are supported, got {size}")
    return int(size["height"])


def _bicubic(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL-style bicubic (antialiased when shrinking) of ``(1, 3, H, W)`` 0-255 values, to uint8."""
    out = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.round().clamp(0, 255)


class ImagePreprocessor(nn.Module):
    """``list[uint8 (3, H, W)] -> float (B, 3, size, size)``, normalised.

    Args:
        size: side of the square model input.
        mean: per-channel mean in [0, 1] (also the padding colour, as in LLaVA).
        std: per-channel std in [0, 1].
        pad_to_square: LLaVA-1.5's ``expand2square`` before resizing.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pad_to_square: bool = True,
    ) -> None:
        super().__init__()
        self.size = size
        self.pad_to_square = pad_to_square
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # LLaVA: background = tuple(int(x * 255) for x in image_mean)
        self.fill = [int(m * 255) for m in mean]

    @classmethod
    def from_image_processor(cls, image_processor: Any, pad_to_square: bool = True):
        """Read size, mean and std from a Hugging Face image processor."""
        crop = getattr(image_processor, "crop_size", None)
        use_crop = getattr(image_processor, "do_center_crop", False) and crop
        size = _size_from(crop if use_crop else image_processor.size)
        return cls(size, image_processor.image_mean, image_processor.image_std, pad_to_square)

    def _square(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        if h == w:
            return image
        side = max(h, w)
        canvas = torch.tensor(self.fill, dtype=image.dtype, device=image.device)
        canvas = canvas.view(3, 1, 1).expand(3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, top : top + h, left : left + w] = image
        return canvas

    def resize_shape(self, h: int, w: int) -> tuple[int, int]:
        """Shortest edge to ``size``; long edge ``int(size * long / short)``, as transformers."""
        new_long = int(self.size * max(h, w) / min(h, w))
        return (self.size, new_long) if h <= w else (new_long, self.size)

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        new_h, new_w = self.resize_shape(h, w)
        pixels = image[None].float()
        # PIL resamples separably, width first, rounding to uint8 in between; doing the same keeps
        # us within one grey level of Hugging Face's PIL processors (one pass overshoots at edges).
        if new_w != w:
            pixels = _bicubic(pixels, (h, new_w))
        if new_h != h:
            pixels = _bicubic(pixels, (new_h, new_w))
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return pixels[0, :, top : top + self.size, left : left + self.size]

    def forward(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        out = []
        for image in images:
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"expected uint8 RGB images (3, H, W), got {image.dtype} {tuple(image.shape)}"
                )
            if self.pad_to_square:
                image = self._square(image)
            out.append(self._resize_crop(image))
        pixels = torch.stack(out) / 255.0
        return (pixels - self.mean) / self.std
