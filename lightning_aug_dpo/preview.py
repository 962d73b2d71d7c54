"""``lightning-aug-dpo preview``: what a preset does to your images, before training with it.

    lightning-aug-dpo preview --preset moco --strength 0.5 --images a.jpg b.png --samples 4

writes a PNG grid with one row per image: the preprocessed clean model input (padded to square
and resized exactly as in training), then ``samples`` augmented versions with seeds
``seed .. seed + samples - 1``. Each tile has a caption: preset, strength and seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.augment.preprocess import ImagePreprocessor
from lightning_aug_dpo.augment.presets import Preset, PresetName
from lightning_aug_dpo.callbacks.gallery import (
    line_height,
    load_font,
    record_summary,
    to_pil,
    to_uint8,
    wrap_text,
)
from lightning_aug_dpo.data.prompts import decode_image

GAP = 6  # pixels between tiles and around the grid
CAPTION_LINES = 3  # captions are cut to this many lines


def read_images(paths: list[str]) -> list[torch.Tensor]:
    """Decode each file to uint8 ``(3, H, W)``; errors name the file that failed."""
    images = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        try:
            images.append(decode_image(path))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the image ({err})") from err
    return images


def build_preprocessor(size: int, model: str | None) -> ImagePreprocessor:
    """The training preprocessing: a checkpoint's image processor, else CLIP stats at ``size``."""
    if model is None:
        return ImagePreprocessor(size, CLIP_MEAN, CLIP_STD)
    from transformers import AutoImageProcessor  # slow import, only when a model is named

    # Only the preprocessing config is read: never code shipped with the checkpoint.
    processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=False)
    return ImagePreprocessor.from_image_processor(processor)


def tile_origin(row: int, col: int, side: int, caption_height: int) -> tuple[int, int]:
    """Top-left pixel ``(x, y)`` of the tile in ``row``, ``col`` of a preview grid."""
    return GAP + col * (side + GAP), GAP + row * (side + caption_height + GAP)


def render_grid(tiles: list[list[torch.Tensor]], captions: list[list[str]]) -> Image.Image:
    """Paste uint8 ``(3, S, S)`` tiles in rows, each with its caption (wrapped) below it."""
    font = load_font(11)
    step = line_height(font)
    side = tiles[0][0].shape[-1]
    wrapped = [[wrap_text(c, font, side, CAPTION_LINES) for c in row] for row in captions]
    caption_height = step * max(len(lines) for row in wrapped for lines in row)
    cols = max(len(row) for row in tiles)
    width = GAP + cols * (side + GAP)
    height = GAP + len(tiles) * (side + caption_height + GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            x, y = tile_origin(r, c, side, caption_height)
            canvas.paste(to_pil(tile), (x, y))
            for k, line in enumerate(wrapped[r][c]):
                draw.text((x, y + side + k * step), line, fill="#222222", font=font)
    return canvas


def preview(
    images: list[str],
    preset: PresetName = "diffusion",
    strength: float = 0.5,
    samples: int = 4,
    seed: int = 0,
    size: int = 336,
    model: str | None = None,
    output: str = "preview.png",
) -> Path:
    """Render a preset's augmentations of some images as a PNG grid.

    One row per image: the preprocessed clean image, then ``samples`` augmented versions with
    seeds ``seed .. seed + samples - 1`` (the seeds that make the augmentation reproducible in
    records and ``replay``).

    Args:
        images: image files (any format Pillow reads).
        preset: the augmentation preset (see ``lightning_aug_dpo.augment.presets``).
        strength: corruption in [0, 1]; 0.5 is SeVa's published setting.
        samples: augmented versions per image.
        seed: seed of the first augmented version.
        size: side of the square model input (ignored when ``model`` is given).
        model: a checkpoint dir or hub id whose image processor sets size, mean and std.
        output: where to write the PNG grid.

    Returns:
        The path of the written PNG.
    """
    if not images:
        raise ValueError("preview: give at least one image with --images")
    if samples < 0:
        raise ValueError(f"preview: samples must be >= 0, got {samples}")
    raw = read_images(images)
    preprocessor = build_preprocessor(size, model)
    augmentation = Preset(preset, strength)
    # Pixel-space presets undo the normalisation: they must use the model's mean/std.
    augmentation.set_normalization(
        preprocessor.mean.flatten().tolist(), preprocessor.std.flatten().tolist()
    )
    with torch.no_grad():
        clean = preprocessor(raw)
        columns = [to_uint8(clean, preprocessor.mean, preprocessor.std)]
        captions = [[f"{Path(name).name}: clean {clean.shape[-1]}px" for name in images]]
        for k in range(samples):
            augmented, records = augmentation(clean, [seed + k] * len(raw))
            columns.append(to_uint8(augmented, preprocessor.mean, preprocessor.std))
            captions.append([record_summary(record) for record in records])
    grid = render_grid(
        [[column[i] for column in columns] for i in range(len(raw))],
        [[column[i] for column in captions] for i in range(len(raw))],
    )
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


if __name__ == "__main__":  # python -m lightning_aug_dpo.preview == lightning-aug-dpo preview
    import sys

    from lightning_aug_dpo.cli import preview_main

    preview_main(sys.argv[1:])
