"""Unlabelled prompts: reading the LLaVA-1.5 instruction mix and decoding images on CPU workers.

Only the first human turn of each conversation is used; answers are never read (SeVa needs no
labels). Rows without an image (LLaVA-665k has text-only ShareGPT rows) are skipped and counted.

Bad input never has to kill a run: malformed rows (``on_bad_row``) and unreadable images
(``on_bad_image``) either stop with the file, the row and the reason (``"error"``, the default)
or are dropped and reported (``"skip"``): bad rows in ``PromptSource.bad_rows``, bad images in
``PromptBatchWithSkips.skipped``, which the DataModule logs and summarises.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Literal

import torch
from torch.utils.data import Dataset

from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS, BadImageError, load_image
from lightning_aug_dpo.types import PromptBatch

IMAGE_PLACEHOLDER = "<image>"
OnBad = Literal["skip", "error"]
SKIP_HINT = "or set `data.on_bad_image: skip` to skip and count such rows and images"


@dataclass(frozen=True)
class Prompt:
    """One unlabelled prompt: an image path (relative to the image folder) and a question.

    ``location`` says where the prompt came from ("row 3" of a JSON list, "line 4" of a JSONL
    file) so that errors about its image can name the row; it takes no part in equality.
    """

    id: str
    image: str
    question: str
    location: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptSource:
    """Prompts read from a file, with the count of rows skipped for having no image and, with
    ``on_bad_row="skip"``, the malformed rows skipped: ``(row or line number, reason)``."""

    prompts: list[Prompt]
    skipped_text_only: int
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


class _RowProblem(Exception):
    """A malformed row: turned into a ValueError (``error``) or a ``bad_rows`` entry (``skip``)."""


def check_on_bad(value: str, name: str) -> None:
    """The ``skip | error`` policy arguments (``on_bad_row``, ``on_bad_image``) fail early."""
    if value not in ("skip", "error"):
        raise ValueError(f"{name} must be 'skip' or 'error', got {value!r}")


def escapes_folder(image: str) -> bool:
    """Whether an image path from a data file leaves the image folder: absolute, or climbing
    out with ``..`` (judged on the text, so a symlinked dataset folder still works)."""
    normal = Path(os.path.normpath(image))
    return normal.is_absolute() or PureWindowsPath(image).drive != "" or normal.parts[:1] == ("..",)


def refuse_outside_paths(
    rows: list, source: object, image_folder: object, on_bad: str, bad_rows: list
) -> list:
    """The ``rows`` (with ``image`` and ``location``) whose image stays inside the image folder.
    Another row is an error naming the file (``source``), the row and the fix (``on_bad:
    error``), or is skipped into ``bad_rows`` as ``(line number, reason)``."""
    kept = []
    for row in rows:
        if not escapes_folder(row.image):
            kept.append(row)
            continue
        reason = f"image path {row.image!r} leaves data.image_folder"
        if on_bad == "error":
            where = row.location or getattr(row, "id", "")
            raise ValueError(
                f"{source}: {where}: {reason} ({image_folder}); make it relative to that folder, "
                "or set data.allow_outside_paths: true if the file is trusted"
            )
        bad_rows.append((int(row.location.split()[-1]) if row.location else 0, reason))
    return kept


def clean_question(text: str) -> str:
    """Drop the ``<image>`` placeholder and surrounding whitespace (the model adds its own)."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def _row_error(path: Path, index: int, row_id: object, problem: str) -> ValueError:
    return ValueError(
        f"{path}: row {index} (id {row_id!r}): {problem}. Each row needs 'image' and "
        "'conversations' whose first turn is {'from': 'human', 'value': '<image>\\n...'}; "
        f"fix or remove the row, {SKIP_HINT}."
    )


def _llava_prompt(index: int, row: object) -> Prompt | None:
    """The prompt of one LLaVA row, ``None`` for a text-only row; raises ``_RowProblem``."""
    if not isinstance(row, dict):
        raise _RowProblem(f"expected an object, got {type(row).__name__}")
    row_id = row.get("id", index)
    if "image" not in row:
        return None
    if not isinstance(row["image"], str) or not row["image"]:
        raise _RowProblem(f"'image' must be a path, got {row['image']!r}")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _RowProblem("missing or empty 'conversations'")
    first = turns[0]
    if not isinstance(first, dict) or first.get("from") != "human" or "value" not in first:
        raise _RowProblem("first turn is not a human turn with a 'value'")
    question = clean_question(str(first["value"]))
    if not question:
        raise _RowProblem("the first human turn is empty")
    return Prompt(str(row_id), row["image"], question, location=f"row {index}")


def read_llava_json(path: Path, hint: str) -> list:
    """The row list of a LLaVA-665k-format JSON file; ``hint`` says how to fix a missing file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; {hint}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); expected a LLaVA-665k JSON list"
        ) from err
    if not isinstance(rows, list):
        raise ValueError(
            f"{path}: expected a JSON list of conversations, got {type(rows).__name__}"
        )
    return rows


def load_llava_prompts(path: str | Path, on_bad_row: OnBad = "error") -> PromptSource:
    """Read a LLaVA-665k-format JSON list into prompts (first human turn of each row).

    ``on_bad_row="skip"`` drops malformed rows into ``PromptSource.bad_rows`` (row index,
    reason) instead of raising; a file that is not a JSON list is an error either way.
    """
    check_on_bad(on_bad_row, "on_bad_row")
    path = Path(path)
    rows = read_llava_json(path, "check `data.data_path`")
    prompts: list[Prompt] = []
    bad_rows: list[tuple[int, str]] = []
    skipped = 0
    for index, row in enumerate(rows):
        try:
            prompt = _llava_prompt(index, row)
        except _RowProblem as problem:
            if on_bad_row == "error":
                row_id = row.get("id", index) if isinstance(row, dict) else None
                raise _row_error(path, index, row_id, str(problem)) from None
            bad_rows.append((index, str(problem)))
            continue
        if prompt is None:
            skipped += 1
        else:
            prompts.append(prompt)
    return PromptSource(prompts, skipped, bad_rows)


def _jsonl_prompt(line_no: int, line: str) -> Prompt:
    """The prompt of one JSONL line; raises ``_RowProblem``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise _RowProblem(f"not valid JSON ({err})") from None
    if not isinstance(row, dict) or "image" not in row or "text" not in row:
        raise _RowProblem(f"expected an object with 'image' and 'text', got {line[:80]!r}")
    row_id = str(row.get("id", row.get("question_id", line_no)))
    if not isinstance(row["image"], str) or not row["image"]:
        raise _RowProblem(f"(id {row_id!r}): 'image' must be a path, got {row['image']!r}")
    question = clean_question(str(row["text"]))
    if not question:
        raise _RowProblem(f"(id {row_id!r}): empty 'text'")
    return Prompt(row_id, row["image"], question, location=f"line {line_no}")


def load_jsonl_prompts(path: str | Path, on_bad_row: OnBad = "error") -> PromptSource:
    """Read a JSONL prompt list: one ``{"image", "text"}`` object per line (SeVa's prompt files;
    an optional ``id`` or ``question_id`` is kept, else the line number is the id).

    ``on_bad_row="skip"`` drops malformed lines into ``PromptSource.bad_rows`` (1-based line
    number, reason) instead of raising.
    """
    check_on_bad(on_bad_row, "on_bad_row")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found; check `data.data_path`")
    prompts: list[Prompt] = []
    bad_rows: list[tuple[int, str]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(_jsonl_prompt(line_no, line))
        except _RowProblem as problem:
            if on_bad_row == "error":
                raise ValueError(
                    f"{path}: line {line_no} {problem}; fix or remove the line, {SKIP_HINT}"
                ) from None
            bad_rows.append((line_no, str(problem)))
    return PromptSource(prompts, skipped_text_only=0, bad_rows=bad_rows)


def load_prompts(path: str | Path, on_bad_row: OnBad = "error") -> PromptSource:
    """Prompts from a LLaVA-665k JSON list (``.json``) or a ``{image, text}`` JSONL list."""
    if Path(path).suffix == ".jsonl":
        return load_jsonl_prompts(path, on_bad_row)
    return load_llava_prompts(path, on_bad_row)


def split_prompts(
    prompts: list[Prompt], num_train: int | None, num_val: int, seed: int
) -> tuple[list[Prompt], list[Prompt]]:
    """Seeded shuffle, then ``num_val`` held-out prompts and up to ``num_train`` training ones."""
    if num_val < 0 or (num_train is not None and num_train < 1):
        raise ValueError(
            f"num_prompts must be >= 1 and num_val_prompts >= 0, got {num_train}, {num_val}"
        )
    order = list(prompts)
    random.Random(seed).shuffle(order)
    val, rest = order[:num_val], order[num_val:]
    train = rest if num_train is None else rest[:num_train]
    if not train:
        raise ValueError(f"no training prompts left: {len(prompts)} prompts, {num_val} held out")
    return train, val


def decode_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """RGB uint8 ``(3, H, W)`` tensor of an image file; raises :class:`BadImageError`
    (a ``ValueError`` naming the file and the reason). See :func:`~.images.load_image`."""
    return load_image(path, max_pixels)


@dataclass(frozen=True)
class BadItem:
    """What ``PromptDataset`` returns for an unreadable image with ``on_bad_image="skip"``."""

    prompt: Prompt
    index: int
    path: str  # the file as opened (image folder joined)
    reason: str


@dataclass
class PromptBatchWithSkips(PromptBatch):
    """A :class:`PromptBatch` plus the ``(image path, reason)`` of the items dropped from it."""

    skipped: list[tuple[str, str]] = field(default_factory=list)


class PromptDataset(Dataset):
    """Decodes each prompt's image on a DataLoader worker; everything else is on the device.

    ``on_bad_image``: ``"error"`` raises a ValueError naming the file, the prompt's id and row
    and the reason; ``"skip"`` returns a :class:`BadItem` that ``collate_prompts`` drops and
    reports. ``max_pixels`` rejects decompression-bomb-sized images (``None``: PIL's check only).
    ``indices`` are the numbers items report as their index (default ``0..n-1``): a subset of
    a prompt list keeps its items' original indices, and with them their augmentation seeds.
    Any row type with ``id``, ``image`` and ``location`` works (``Pair`` s too).
    """

    def __init__(
        self,
        prompts: Sequence[Prompt],
        image_folder: str | Path,
        on_bad_image: OnBad = "error",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        indices: Sequence[int] | None = None,
    ) -> None:
        check_on_bad(on_bad_image, "on_bad_image")
        if indices is not None and len(indices) != len(prompts):
            raise ValueError(f"got {len(indices)} indices for {len(prompts)} prompts")
        self.prompts = prompts
        self.image_folder = Path(image_folder)
        self.on_bad_image = on_bad_image
        self.max_pixels = max_pixels
        self.indices = list(indices) if indices is not None else list(range(len(prompts)))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, position: int) -> tuple[Prompt, int, torch.Tensor] | BadItem:
        prompt, index = self.prompts[position], self.indices[position]
        path = self.image_folder / prompt.image
        try:
            image = load_image(path, self.max_pixels)
        except BadImageError as err:
            if self.on_bad_image == "skip":
                return BadItem(prompt, index, str(path), err.reason)
            where = f", {prompt.location} of the prompt file" if prompt.location else ""
            raise ValueError(
                f"{path}: cannot use the image of prompt {prompt.id!r}{where}: {err.reason}. "
                f"Fix or remove the file (check `data.image_folder`), {SKIP_HINT}."
            ) from err
        return prompt, index, image


def collate_prompts(
    items: list[tuple[Prompt, int, torch.Tensor] | BadItem],
) -> PromptBatchWithSkips:
    """Batch the good items; :class:`BadItem` s are dropped and listed in ``skipped`` (a batch
    whose images are all bad comes out empty, and makes an empty ``PreferenceBatch``)."""
    good = [item for item in items if not isinstance(item, BadItem)]
    return PromptBatchWithSkips(
        ids=[p.id for p, _, _ in good],
        indices=[i for _, i, _ in good],
        image_paths=[p.image for p, _, _ in good],
        images=[image for _, _, image in good],
        questions=[p.question for p, _, _ in good],
        skipped=[(item.path, item.reason) for item in items if isinstance(item, BadItem)],
    )
