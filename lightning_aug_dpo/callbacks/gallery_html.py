"""The gallery's HTML page: per pair both images, the prompt, the ground truth where known, both
answers and the augmentation record, in one self-contained file (inline CSS and images, no
scripts). :class:`~lightning_aug_dpo.callbacks.gallery.PairGalleryCallback` writes it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

MAX_PARAMS_CHARS = 6000
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # invalid in HTML


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
        fields = [
            ("id", f"{row.get('id', '')} {row.get('image', '')}", None),
            ("prompt", str(row.get("prompt", "")), None),
            # what is really in the image, where the data records it: the answers' yardstick
            *([("ground truth", str(row["truth"]), "truth")] if row.get("truth") else []),
            ("chosen", str(row.get("chosen", "")), "chosen"),
            ("rejected", str(row.get("rejected", "")), "rejected"),
        ]
        text = ""
        for label, value, css in fields:
            attribute = "" if css is None else f' class="{css}"'
            text += f"<dt>{label}</dt><dd{attribute}>{esc(value)}</dd>"
        params = format_json(compact(record)) if record else "{}"
        if len(params) > MAX_PARAMS_CHARS:  # cut before escaping: never inside an entity
            params = params[:MAX_PARAMS_CHARS] + "\n..."
        pairs.append(
            '<div class="pair"><div class="imgs">'
            f'<figure><img src="{png_data_uri(image, thumbnail_size)}" alt="original">'
            f"<figcaption>original (chosen)</figcaption></figure>{aug}</div>"
            f'<dl class="text">{text}'
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
dd.chosen { color: #16772b; } dd.rejected { color: #a32020; } dd.truth { color: #6b4e00; }
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
        "the rejected answer. The ground truth, where the data records one, is what is really "
        "in the image. Newest step first.</p>\n" + "\n".join(sections) + "\n</body></html>\n"
    )

