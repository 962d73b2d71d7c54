"""Reading preference-pair files (this project's, SeVa's and TRL's) into one ``Pair`` type.

Three row formats are recognised, per file, from the first row that parses:

- ``aug_dpo``: this project's JSONL as written by ``PairsWriter``:
  ``{id, image, prompt, chosen, rejected, augmentation, chosen_finished, rejected_finished}``
  (the ``*_finished`` flags say whether the answer ended by itself; missing means true);
- ``seva``: SeVa's step-3 pairs ``{chosen, reject, question, image_id}``, where ``image_id`` is
  the image file name, ``question`` may hold ``<image>`` and ``chosen``/``reject`` are strings or
  one-element lists (both occur in the authors' dumps);
- ``trl``: TRL-style rows ``{image | images, prompt, chosen, rejected}``, with plain strings or
  conversational lists of ``{role, content}`` whose content is a string or a list of
  ``{type: text | image, text}`` parts (the text of every non-system message is kept, joined
  by newlines).

A file is a JSON list (any name but ``*.jsonl``, starting with ``[``) or JSONL. Bad rows
raise (``on_bad_row="error"``) naming the file, the line (JSONL) or 1-based row (JSON list) and
the fix, or are collected in ``PairSource.skipped``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_aug_dpo.data.prompts import (
    BadItem,
    PromptBatchWithSkips,
    check_on_bad,
    clean_question,
)

FORMATS = ("aug_dpo", "seva", "trl")
_FIX = {
    "aug_dpo": "rows need id, image, prompt, chosen, rejected (augmentation optional)",
    "seva": "rows need chosen, reject, question, image_id",
    "trl": "rows need image (or images: [path]), prompt, chosen, rejected",
}


@dataclass(frozen=True)
class Pair:
    """One preference pair: the prompt on ``image`` with a chosen and a rejected answer."""

    id: str
    image: str
    prompt: str
    chosen: str
    rejected: str
    augmentation: dict[str, Any] | None = None
    # False when max_new_tokens cut the answer off (no EOS is trained after it)
    chosen_finished: bool = True
    rejected_finished: bool = True
    location: str = field(default="", compare=False)  # "line 3": where errors point

    @property
    def question(self) -> str:
        """The prompt text, under the name ``PromptDataset`` reads."""
        return self.prompt


@dataclass(frozen=True)
class PairSource:
    """Pairs read from one file, the rows skipped as ``(line, reason)``, and the file's format."""

    pairs: list[Pair]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    format: str | None = None


class BadRow(ValueError):
    """A row that cannot be read as a pair; the message says what is wrong with it."""


def _guess_format(row: dict[str, Any]) -> str | None:
    if "reject" in row or "image_id" in row:
        return "seva"
    if "rejected" in row:
        # Our own rows are TRL-like; an augmentation record or an id marks them as ours.
        return "aug_dpo" if "augmentation" in row or "id" in row else "trl"
    return None


def _text_of(value: Any, what: str) -> str:
    """Text of a plain string or of a TRL conversational message list."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise BadRow(f"'{what}' must be a string or a list of {{role, content}} messages")
    parts = []
    for message in value:
        if not isinstance(message, dict) or "content" not in message:
            raise BadRow(f"'{what}' message {message!r} has no 'content'")
        if message.get("role") == "system":
            continue  # the trainer applies its own conversation template
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
            continue
        if not isinstance(content, list):
            raise BadRow(f"'{what}' content must be a string or a list of parts")
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                raise BadRow(f"'{what}' content part {part!r} is not a text or image part")
            if part["type"] == "text":
                parts.append(str(part.get("text", "")))
    return "\n".join(p for p in parts if p)


def _answer(row: dict[str, Any], key: str) -> str:
    value = row[key]
    # SeVa's dumps hold either the answer or a one-element list of it.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if not isinstance(value, str):
        raise BadRow(f"'{key}' must be a string or a one-element list of strings, got {value!r}")
    return value


def _image_of(row: dict[str, Any]) -> str:
    if "images" in row:
        images = row["images"]
        if not isinstance(images, list) or not images:
            raise BadRow(f"'images' must be a list of one image path, got {images!r}")
        if len(images) > 1:
            raise BadRow(f"{len(images)} images in one row; a pair takes exactly one image")
        image = images[0]
        # Hugging Face datasets may store an image as {"path": ..., "bytes": ...}.
        image = image.get("path") if isinstance(image, dict) else image
    else:
        image = row["image"]
    if not isinstance(image, str) or not image:
        raise BadRow(f"the image must be a non-empty path, got {image!r}")
    return image


def _parse(row: Any, fmt: str, default_id: str) -> Pair:
    if not isinstance(row, dict):
        raise BadRow(f"expected an object, got {type(row).__name__}")
    if fmt == "seva":
        required = ("chosen", "reject", "question", "image_id")
    else:
        required = ("prompt", "chosen", "rejected")
        if "image" not in row and "images" not in row:
            required = (*required, "image")
    missing = [k for k in required if k not in row]
    if missing:
        raise BadRow(f"missing {', '.join(repr(k) for k in missing)}")
    if fmt == "seva":
        image, prompt = row["image_id"], _text_of(row["question"], "question")
        chosen, rejected = _answer(row, "chosen"), _answer(row, "reject")
        if not isinstance(image, str) or not image:
            raise BadRow(f"'image_id' must be an image file name, got {image!r}")
    else:
        image, prompt = _image_of(row), _text_of(row["prompt"], "prompt")
        chosen, rejected = _text_of(row["chosen"], "chosen"), _text_of(row["rejected"], "rejected")
    prompt = clean_question(prompt)
    if not prompt:
        raise BadRow("the prompt is empty")
    augmentation = row.get("augmentation")
    if augmentation is not None and not isinstance(augmentation, dict):
        raise BadRow(f"'augmentation' must be an object or null, got {augmentation!r}")
    row_id = row.get("id")
    return Pair(
        id=default_id if row_id is None else str(row_id),
        image=image,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        augmentation=augmentation,
        chosen_finished=_flag(row, "chosen_finished"),
        rejected_finished=_flag(row, "rejected_finished"),
    )


def _flag(row: dict[str, Any], key: str) -> bool:
    value = row.get(key, True)  # files without the field: answers that ended by themselves
    if not isinstance(value, bool):
        raise BadRow(f"'{key}' must be true or false, got {value!r}")
    return value


def _read_rows(path: Path) -> tuple[str, list[tuple[int, Any, str | None]]]:
    """``(unit, [(number, row or None, JSON error or None)])``; unit is "line" or "row"."""
    text = path.read_text(encoding="utf-8")
    # A ``.jsonl`` file is always read line by line, so one bad line starting with "[" stays
    # one skippable line; any other file starting with "[" is a JSON list.
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            # A broken JSON list cannot be resumed row by row, so this is never skipped.
            raise ValueError(
                f"{path}: line {err.lineno} is not valid JSON ({err.msg}); fix the JSON list "
                "or write one pair per line (JSONL)"
            ) from err
        return "row", [(i, row, None) for i, row in enumerate(rows, start=1)]
    out: list[tuple[int, Any, str | None]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line), None))
        except json.JSONDecodeError as err:
            out.append((line_no, None, f"not valid JSON ({err.msg})"))
    return "line", out


def load_pairs(path: str | Path, on_bad_row: Literal["error", "skip"] = "error") -> PairSource:
    """Read a pairs file (JSONL or JSON list) in any of the ``FORMATS``, detected per file.

    Args:
        path: the pairs file.
        on_bad_row: ``"error"`` raises ``ValueError`` at the first bad row (naming file, line or
            row and the fix); ``"skip"`` records ``(line, reason)`` in ``skipped`` and goes on.

    Returns:
        The pairs in file order; ids are the row's ``id`` or ``"{file stem}:{line}"``.
    """
    check_on_bad(on_bad_row, "on_bad_row")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    unit, rows = _read_rows(path)
    fmt: str | None = None
    pairs: list[Pair] = []
    skipped: list[tuple[int, str]] = []
    for number, row, json_error in rows:
        guess = fmt or (_guess_format(row) if isinstance(row, dict) else None)
        try:
            if json_error is not None:
                raise BadRow(json_error)
            if guess is None:
                raise BadRow(
                    f"keys {sorted(row) if isinstance(row, dict) else type(row).__name__} "
                    "match no known pair format"
                )
            pair = _parse(row, guess, f"{path.stem}:{number}")
            pairs.append(replace(pair, location=f"{unit} {number}"))
            fmt = guess  # the first row that parses fixes the file's format
        except BadRow as err:
            if on_bad_row == "skip":
                skipped.append((number, str(err)))
                continue
            fix = _FIX[guess] if guess else "; ".join(f"{k}: {v}" for k, v in _FIX.items())
            raise ValueError(
                f"{path}: {unit} {number}: {err}. Expected format {guess or 'unknown'} ({fix}); "
                "fix or remove the row, or load with on_bad_row='skip'"
            ) from err
    return PairSource(pairs, skipped, fmt)


def repeat_pairs(pairs: Sequence[Pair], times: int) -> list[Pair]:
    """SeVa's repetition: the whole list ``times`` times in a row (every pair seen ``times``
    times per epoch); the order is deterministic, the training sampler does the shuffling.

    Args:
        pairs: the pairs to repeat.
        times: how often each pair appears (SeVa used 2); must be >= 1.
    """
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    return list(pairs) * times


@dataclass
class PairBatch(PromptBatchWithSkips):
    """A batch of pairs read from a file: the prompt batch plus the answers and records."""

    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    augmentations: list[dict[str, Any] | None] = field(default_factory=list)
    chosen_finished: list[bool] = field(default_factory=list)
    rejected_finished: list[bool] = field(default_factory=list)


def collate_pairs(items: list[tuple[Pair, int, torch.Tensor] | BadItem]) -> PairBatch:
    """Batch the good items of a ``PromptDataset`` over pairs; unreadable images are listed in
    ``skipped`` (as ``collate_prompts`` does)."""
    good = [item for item in items if not isinstance(item, BadItem)]
    pairs = [pair for pair, _, _ in good]
    return PairBatch(
        ids=[p.id for p in pairs],
        indices=[i for _, i, _ in good],
        image_paths=[p.image for p in pairs],
        images=[image for _, _, image in good],
        questions=[p.prompt for p in pairs],
        skipped=[(item.path, item.reason) for item in items if isinstance(item, BadItem)],
        chosen=[p.chosen for p in pairs],
        rejected=[p.rejected for p in pairs],
        augmentations=[p.augmentation for p in pairs],
        chosen_finished=[p.chosen_finished for p in pairs],
        rejected_finished=[p.rejected_finished for p in pairs],
    )
