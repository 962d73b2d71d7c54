"""See what the augmentation did: clean vs augmented images next to the answers they produced.

SeVa's signal is only as good as the gap between the two images. :class:`PairGalleryCallback`
shows, every few steps, the CLEAN image (chosen answer) beside the AUGMENTED one (rejected answer)
with the prompt, the ground truth where it is known, both answers and the augmentation record,
as a grid image in the Lightning logger(s) and as a self-contained ``gallery.html`` in the run
directory (:mod:`.gallery_html`; the ground truth: :mod:`.gallery_truth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw, ImageFont

from lightning_aug_dpo.atomic import write_text
from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.callbacks.gallery_html import record_summary, render_page, render_section
from lightning_aug_dpo.callbacks.gallery_truth import AUTO, load_truth, truth_file, truth_of
from lightning_aug_dpo.runs import run_dir
from lightning_aug_dpo.types import PreferenceBatch

IMAGE_TAG = "train/pairs"
PAD = 8  # margin around and between grid tiles, in pixels
TEXT_WIDTH = 420  # the text column of the grid, in pixels
MAX_FIELD_LINES = 6  # long answers are cut so that one pair cannot make the grid huge
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def to_uint8(pixels: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """Normalised ``(B, 3, H, W)`` model input -> uint8 RGB ``(B, 3, H, W)`` on the CPU.

    Args:
        pixels: the normalised images.
        mean: per-channel mean used to normalise them: 3 floats or a ``(1, 3, 1, 1)`` tensor.
        std: per-channel std, in the same form.
    """
    x = pixels.detach().float().cpu()
    mean_t = torch.as_tensor(mean, dtype=torch.float32).detach().cpu().reshape(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).detach().cpu().reshape(1, 3, 1, 1)
    return ((x * std_t + mean_t).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 ``(3, H, W)`` tensor -> RGB PIL image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def load_font(size: int = 12) -> Font:
    """Pillow's bundled default font (no font files needed on the machine)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType: bitmap font
        return ImageFont.load_default()


def line_height(font: Font) -> int:
    box = font.getbbox("Hgjy|")
    return int(box[3] - box[1]) + 4


def wrap_text(text: str, font: Font, width: int, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words wider than a line are broken by characters.

    Args:
        text: the text; newlines start new lines.
        font: the font it will be drawn with (measures the widths).
        width: the line width in pixels.
        max_lines: cut after this many lines, marking the cut with ``...``.
    """
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width:
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + " ...") > width:
            last = last[:-1]
        lines[-1] = last + " ..."
    return lines


def _pair_lines(row: dict[str, Any], font: Font) -> list[tuple[str, str]]:
    """(line, colour) for one pair's text column."""
    out: list[tuple[str, str]] = []
    fields = [
        ("aug", record_summary(row.get("augmentation")), "#1f4e9a"),
        ("prompt", str(row.get("prompt", "")), "#000000"),
        *([("truth", str(row["truth"]), "#6b4e00")] if row.get("truth") else []),
        ("chosen", str(row.get("chosen", "")), "#16772b"),
        ("rejected", str(row.get("rejected", "")), "#a32020"),
    ]
    if row.get("id") is not None or row.get("image"):
        fields.insert(0, ("id", f"{row.get('id', '')}  {row.get('image', '')}", "#555555"))
    for label, text, colour in fields:
        lines = wrap_text(f"{label}: {text}", font, TEXT_WIDTH, MAX_FIELD_LINES)
        out.extend((line, colour) for line in lines)
    return out


def render_pair_grid(
    clean: torch.Tensor, augmented: torch.Tensor | None, rows: Sequence[dict[str, Any]]
) -> Image.Image:
    """One row per pair: original | augmented, then prompt, chosen, rejected and augmentation.

    Tiles are pasted at native size: pair ``i``'s original is at ``(PAD, y_i)`` with
    ``y_0 = PAD``, its augmented image ``PAD + W`` pixels to the right.

    Args:
        clean: uint8 ``(B, 3, H, W)`` clean images.
        augmented: uint8 ``(B, 3, H, W)`` augmented images, or ``None`` (offline pairs).
        rows: one dict per pair with ``prompt``, ``chosen``, ``rejected``, ``augmentation``
            (and ``truth``, shown where present).
    """
    font = load_font()
    step = line_height(font)
    n, (h, w) = clean.shape[0], clean.shape[-2:]
    texts = [_pair_lines(rows[i] if i < len(rows) else {}, font) for i in range(n)]
    heights = [max(h, len(lines) * step) for lines in texts]
    width = 4 * PAD + 2 * w + TEXT_WIDTH
    canvas = Image.new("RGB", (width, PAD + sum(r + PAD for r in heights)), "white")
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for i in range(n):
        canvas.paste(to_pil(clean[i]), (PAD, y))
        if augmented is not None:
            canvas.paste(to_pil(augmented[i]), (2 * PAD + w, y))
        else:
            draw.rectangle((2 * PAD + w, y, 2 * PAD + 2 * w - 1, y + h - 1), fill="#dddddd")
            draw.text((2 * PAD + w + 2, y + 2), "no aug image", fill="#555555", font=font)
        for k, (line, colour) in enumerate(texts[i]):
            draw.text((3 * PAD + 2 * w, y + k * step), line, fill=colour, font=font)
        y += heights[i] + PAD
    return canvas


class PairGalleryCallback(Callback):
    """Log clean/augmented image pairs with their answers, every ``every_n_steps`` steps.

    Also logs on the first training step, so that short runs get one. Runs on global rank 0.
    The grid image goes to TensorBoard (``add_image('train/pairs')``) or to any logger with a
    ``log_image`` method (W&B); others, like ``CSVLogger``, get none. ``gallery.html`` in the run
    directory keeps the newest ``max_sections`` steps (it is rebuilt from memory, so a resumed
    run starts a new page).

    Args:
        every_n_steps: log when the global step is a multiple of this.
        max_pairs: pairs shown per step (the first rows of the batch).
        filename: the HTML page, relative to the run directory.
        log_images: also send the grid image to the logger(s).
        max_sections: steps kept in the page (bounds its size).
        thumbnail_size: the page's images are shrunk to this side when larger.
        truth_from: the ground truth shown beside the two answers: a JSON file ``{image:
            truth}`` (``image`` as the prompt source names it; ``truth`` a text, or a toy-world
            scene record, shown as its objects left to right); ``"auto"`` (default): the
            ``scenes.json`` that the toy world writer puts beside its image folder, where the
            data's ``image_folder`` has one; ``None``: none. A row's own ``truth`` comes first.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_pairs: int = 8,
        filename: str = "gallery.html",
        log_images: bool = True,
        max_sections: int = 20,
        thumbnail_size: int = 160,
        truth_from: str | None = AUTO,
    ) -> None:
        super().__init__()
        sizes = {
            "every_n_steps": every_n_steps,
            "max_pairs": max_pairs,
            "max_sections": max_sections,
            "thumbnail_size": thumbnail_size,
        }
        if bad := [f"{name}={value}" for name, value in sizes.items() if value < 1]:
            raise ValueError(f"PairGalleryCallback: {', '.join(bad)}; must be >= 1")
        self.every_n_steps = every_n_steps
        self.max_pairs = max_pairs
        self.filename = filename
        self.log_images = log_images
        self.max_sections = max_sections
        self.thumbnail_size = thumbnail_size
        self.truth_from = truth_from
        self.truth: dict[str, str] | None = None  # read on the first page
        self.sections: list[str] = []  # newest first
        self.last_step: int | None = None

    def load_truth(self, trainer: pl.Trainer) -> dict[str, str]:
        """``{image: truth text}`` from ``truth_from``, read once (empty where there is none)."""
        if self.truth is None:
            found = truth_file(self.truth_from, trainer)
            self.truth = {} if found is None else load_truth(found)
        return self.truth

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # a missing or malformed truth file stops the run before the first step, not at it
        if stage == "fit" and trainer.is_global_zero:
            self.load_truth(trainer)

    def should_log(self, step: int) -> bool:
        """First call, then multiples of ``every_n_steps``; once per step (gradient
        accumulation calls the hook several times with the same global step)."""
        if step == self.last_step:
            return False
        return self.last_step is None or step % self.every_n_steps == 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero or not isinstance(batch, PreferenceBatch) or not len(batch):
            return  # an all-identical batch has no pairs: wait for the next one
        if self.should_log(trainer.global_step):
            self.log_pairs(trainer, pl_module, batch, trainer.global_step)

    def log_pairs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: PreferenceBatch, step: int
    ) -> Image.Image:
        """Render, log and write the pairs of ``batch`` for ``step``; returns the grid image."""
        n = min(len(batch), self.max_pairs)
        truth = self.load_truth(trainer)
        # copies: the rows are the DataModule's (the pairs writer and the step read them too)
        rows = [truth_of(row, truth) for row in list(batch.meta.get("rows", []))[:n]]
        # Un-normalise with the model's own statistics (CLIP's when the module has none).
        pre = getattr(pl_module, "preprocessor", None)
        mean, std = (CLIP_MEAN, CLIP_STD) if pre is None else (pre.mean, pre.std)
        clean = to_uint8(batch.pixel_values[:n], mean, std)
        aug = batch.aug_pixel_values
        augmented = None if aug is None else to_uint8(aug[:n], mean, std)
        grid = render_pair_grid(clean, augmented, rows)
        if self.log_images:
            self._log_grid(trainer, grid, step)
        aug_images = None if augmented is None else [to_pil(a) for a in augmented]
        clean_images = [to_pil(c) for c in clean]
        section = render_section(step, clean_images, aug_images, rows, self.thumbnail_size)
        self.sections = [section, *self.sections][: self.max_sections]
        page = render_page(
            self.sections, f"augmentation pairs: {run_dir(trainer)}", self.thumbnail_size
        )
        write_text(run_dir(trainer) / self.filename, page)  # atomic: never half a page
        self.last_step = step
        return grid

    def _log_grid(self, trainer: pl.Trainer, grid: Image.Image, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                tensor = torch.from_numpy(np.array(grid)).permute(2, 0, 1)  # uint8 (3, H, W)
                logger.experiment.add_image(IMAGE_TAG, tensor, step)
            elif callable(getattr(logger, "log_image", None)):
                try:  # WandbLogger's signature; other loggers may differ
                    logger.log_image(key=IMAGE_TAG, images=[grid], step=step)
                except TypeError as err:
                    rank_zero_warn(
                        f"PairGalleryCallback: {type(logger).__name__}.log_image "
                        f"failed ({err}); the grid is only in the HTML page"
                    )
