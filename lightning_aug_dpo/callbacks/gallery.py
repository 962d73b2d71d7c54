"""See what the augmentation did: clean vs augmented images next to the answers they produced.

SeVa's signal is only as good as the gap between the two images. :class:`PairGalleryCallback`
shows, every few steps, the CLEAN image (chosen answer) beside the AUGMENTED one (rejected answer)
with the prompt, both answers and the augmentation record, as a grid image in the Lightning
logger(s) and as a self-contained ``gallery.html`` in the run directory.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
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
from lightning_aug_dpo.runs import run_dir
from lightning_aug_dpo.types import PreferenceBatch

IMAGE_TAG = "train/pairs"
PAD = 8  # margin around and between grid tiles, in pixels
TEXT_WIDTH = 420  # the text column of the grid, in pixels
MAX_FIELD_LINES = 6  # long answers are cut so that one pair cannot make the grid huge
MAX_PARAMS_CHARS = 6000
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # invalid in HTML
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


def record_summary(record: dict[str, Any] | None) -> str:
    """One line of an augmentation record: preset, strength, other scalars, seed."""
    if not record:
        return "augmentation: unknown"
    parts = [str(record.get("preset", record.get("name", "?")))]
    if isinstance(record.get("strength"), int | float):
        parts.append(f"strength {record['strength']:g}")
    skip = {"preset", "name", "strength", "seed", "space"}
    for key, value in record.items():
        if key not in skip and isinstance(value, int | float | str) and not isinstance(value, bool):
            parts.append(f"{key} {value}")
    if "seed" in record:
        parts.append(f"seed {record['seed']}")
    params = record.get("params")
    if isinstance(params, dict) and params.get("applied") is False:
        parts.append("(not applied)")
    return ", ".join(parts)


def compact(value: Any, max_items: int = 6) -> Any:
    """Shorten a JSON value for display: long lists keep ``max_items``, floats 4 digits."""
    if isinstance(value, dict):
        return {k: compact(v, max_items) for k, v in value.items()}
    if isinstance(value, list | tuple):
        head = [compact(v, max_items) for v in value[:max_items]]
        return head + ([f"... (+{len(value) - max_items} more)"] if len(value) > max_items else [])
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def format_json(value: Any, indent: int = 0) -> str:
    """JSON with short containers on one line and long ones expanded, one item per line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) <= 72 or not isinstance(value, dict | list) or not value:
        return flat
    inner, outer = "  " * (indent + 1), "  " * indent
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {format_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    items = [inner + format_json(v, indent + 1) for v in value]
    return "[\n" + ",\n".join(items) + f"\n{outer}]"


def _pair_lines(row: dict[str, Any], font: Font) -> list[tuple[str, str]]:
    """(line, colour) for one pair's text column."""
    out: list[tuple[str, str]] = []
    fields = [
        ("aug", record_summary(row.get("augmentation")), "#1f4e9a"),
        ("prompt", str(row.get("prompt", "")), "#000000"),
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
        rows: one dict per pair with ``prompt``, ``chosen``, ``rejected``, ``augmentation``.
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


def png_data_uri(image: Image.Image, max_side: int | None = None) -> str:
    """``data:image/png;base64,...`` of ``image``, shrunk to ``max_side`` if it is larger."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_section(
    step: int,
    clean: Sequence[Image.Image],
    augmented: Sequence[Image.Image] | None,
    rows: Sequence[dict[str, Any]],
    thumbnail_size: int = 160,
) -> str:
    """The HTML of one logged step: per pair both thumbnails, the texts and the record."""

    def esc(text: str) -> str:
        return html.escape(CONTROL_CHARS.sub("\ufffd", text))

    pairs = []
    for i, image in enumerate(clean):
        row = rows[i] if i < len(rows) else {}
        record = row.get("augmentation")
        aug = (
            f'<figure><img src="{png_data_uri(augmented[i], thumbnail_size)}" alt="augmented">'
            "<figcaption>augmented (rejected)</figcaption></figure>"
            if augmented is not None
            else '<figure class="none">no augmented image</figure>'
        )
        params = format_json(compact(record)) if record else "{}"
        if len(params) > MAX_PARAMS_CHARS:  # cut before escaping: never inside an entity
            params = params[:MAX_PARAMS_CHARS] + "\n..."
        pairs.append(
            '<div class="pair"><div class="imgs">'
            f'<figure><img src="{png_data_uri(image, thumbnail_size)}" alt="original">'
            f"<figcaption>original (chosen)</figcaption></figure>{aug}</div>"
            '<dl class="text">'
            f"<dt>id</dt><dd>{esc(str(row.get('id', '')))} {esc(str(row.get('image', '')))}</dd>"
            f"<dt>prompt</dt><dd>{esc(str(row.get('prompt', '')))}</dd>"
            f'<dt>chosen</dt><dd class="chosen">{esc(str(row.get("chosen", "")))}</dd>'
            f'<dt>rejected</dt><dd class="rejected">{esc(str(row.get("rejected", "")))}</dd>'
            f"<dt>augmentation</dt><dd>{esc(record_summary(record))}"
            f"<details><summary>record</summary><pre>{esc(params)}</pre></details></dd>"
            "</dl></div>"
        )
    return f'<section id="step-{step}"><h2>step {step}</h2>{"".join(pairs)}</section>'


PAGE_STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
section { border-top: 2px solid #ccc; padding-top: .5em; }
.pair { display: flex; gap: 1.5em; margin: 1em 0; align-items: flex-start; }
.imgs { display: flex; gap: .5em; flex: none; }
figure { margin: 0; text-align: center; font-size: 80%; color: #555; }
figure img { width: var(--thumb); height: auto; image-rendering: pixelated; display: block; }
figure.none { width: var(--thumb); height: var(--thumb); background: #ddd; }
dl.text { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
dt { font-weight: bold; } dd { margin: 0; white-space: pre-wrap; }
dd.chosen { color: #16772b; } dd.rejected { color: #a32020; }
pre { font-size: 80%; background: #f4f4f4; padding: .5em; max-height: 30em; overflow: auto; }
"""


def render_page(
    sections: Sequence[str], title: str = "augmentation pairs", thumb: int = 160
) -> str:
    """A standalone HTML page (inline CSS, no scripts) holding ``sections`` in order."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>:root {{ --thumb: {thumb}px; }}"
        f"{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>Left: the clean image the chosen answer came from; right: the augmented image of "
        "the rejected answer. Newest step first.</p>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


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
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_pairs: int = 8,
        filename: str = "gallery.html",
        log_images: bool = True,
        max_sections: int = 20,
        thumbnail_size: int = 160,
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
        self.sections: list[str] = []  # newest first
        self.last_step: int | None = None

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
        rows = list(batch.meta.get("rows", []))[:n]
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
