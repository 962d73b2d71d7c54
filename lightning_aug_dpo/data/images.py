"""Robust image decoding: one bad file becomes a :class:`BadImageError` with a short reason.

Prompt datasets scraped from the web contain every kind of odd file. ``load_image`` turns each
into either a uint8 RGB ``(3, H, W)`` tensor or a ``BadImageError`` whose ``reason`` is short
enough to summarise ("missing", "empty file", "truncated", "not an image", "too large (...)"),
so that the DataModule can skip and count it (``data.on_bad_image: skip``) or stop naming it.

Conversions (convertible-but-odd files are decoded, not rejected):

* EXIF orientation is applied (phone photos are stored sideways with an orientation tag); a
  malformed EXIF block is ignored rather than failing an otherwise good image.
* CMYK, YCbCr, LAB, HSV, 1-bit, grayscale and opaque palette images -> RGB through PIL.
* Transparency (RGBA, LA, PA, a transparent palette index or colour key) is composited onto
  WHITE. LLaVA's ``.convert("RGB")`` just drops alpha, which shows whatever colour the encoder
  left under transparent pixels: usually black, so a black logo on a transparent background
  becomes a black square. White is what a viewer (and the annotator who wrote the question)
  saw, and it is deterministic. Such images are rare in the LLaVA mix, so this does not shift
  the data.
* 16-bit grayscale ("I;16*", and "I" as older Pillow opens 16-bit PNGs) is scaled by 255/65535
  with rounding; PIL's own ``convert`` saturates everything above 255 to white.

Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone (if some other
library sets it to True globally, PIL pads truncated images silently and this check is lost).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lightning_aug_dpo.errors import UserInputError

# PIL's own default (``Image.MAX_IMAGE_PIXELS``, ~ 9459 x 9459): far above any VQA image, far
# below what would exhaust a DataLoader worker's memory.
DEFAULT_MAX_PIXELS = 89_478_485

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class BadImageError(UserInputError):
    """An image file that cannot be used; ``reason`` is short, ``str()`` also names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # DataLoader workers pickle exceptions back to the main process; keep both fields.
        return type(self), (self.path, self.reason)


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode ``path`` to a uint8 RGB ``(3, H, W)`` tensor, or raise :class:`BadImageError`.

    ``max_pixels`` rejects images whose header declares more pixels, before decoding anything
    (a 50 KB PNG can declare 20000 x 20000); ``None`` disables the check (PIL's own check,
    ``Image.MAX_IMAGE_PIXELS``, still rejects images above twice its limit).
    """
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "missing")
    if path.is_dir():
        raise BadImageError(path, "is a directory")
    try:
        if path.stat().st_size == 0:
            raise BadImageError(path, "empty file")
        with warnings.catch_warnings():
            # PIL warns between 1x and 2x its limit; ``max_pixels`` is the check that counts here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image") from None
    except Image.DecompressionBombError as err:
        raise BadImageError(path, f"too large ({err})") from None
    except PermissionError:
        raise BadImageError(path, "unreadable (permission denied)") from None
    except OSError as err:
        raise BadImageError(path, f"unreadable ({err})") from None
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise BadImageError(
                path,
                f"too large ({width}x{height} = {width * height} pixels > limit {max_pixels})",
            )
        try:
            image.load()  # decodes everything now: a truncated file fails here, not later
        # Decoders raise a zoo of exceptions on corrupt data (OSError, SyntaxError, EOFError,
        # struct.error, zlib.error, IndexError, ...); any of them means "this file is bad".
        except Exception as err:
            if "truncated" in str(err).lower():
                raise BadImageError(path, "truncated") from None
            raise BadImageError(path, f"corrupt ({type(err).__name__}: {err})") from None
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block: the pixels are fine, keep them as stored
            oriented = image
        try:
            array = to_rgb_array(oriented)
        except (OSError, ValueError) as err:
            raise BadImageError(path, f"unsupported mode {oriented.mode!r} ({err})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB of a decoded PIL image in any mode (see the module docstring)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Round, don't truncate: 65535 -> 255, 32768 -> 128, 257 * k -> k exactly.
        wide = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:  # P, L or RGB with tRNS
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)
