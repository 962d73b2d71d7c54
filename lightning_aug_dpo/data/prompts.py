"""Unlabelled prompts: reading the LLaVA-1.5 instruction mix and decoding images on CPU workers.

Only the first human turn of each conversation is used; answers are never read (SeVa needs no
labels). Rows without an image (LLaVA-665k has text-only ShareGPT rows) are skipped and counted.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_aug_dpo.types import PromptBatch

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Prompt:
    """One unlabelled prompt: an image path (relative to the image folder) and a question."""

    id: str
    image: str
    question: str


@dataclass(frozen=True)
class PromptSource:
    """Prompts read from a file, with the count of rows skipped for having no image."""

    prompts: list[Prompt]
    skipped_text_only: int


def clean_question(text: str) -> str:
    """Drop the ``<image>`` placeholder and surrounding whitespace (the model adds its own)."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def _row_error(path: Path, index: int, row_id: object, problem: str) -> ValueError:
    return ValueError(
        f"{path}: row {index} (id {row_id!r}): {problem}. Each row needs 'image' and "
        "'conversations' whose first turn is {'from': 'human', 'value': '<image>\\n...'}; "
        "fix or remove the row."
    )


def load_llava_prompts(path: str | Path) -> PromptSource:
    """Read a LLaVA-665k-format JSON list into prompts (first human turn of each row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found; check `data.data_path`")
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
    prompts, skipped = [], 0
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _row_error(path, index, None, f"expected an object, got {type(row).__name__}")
        row_id = row.get("id", index)
        if "image" not in row:
            skipped += 1
            continue
        if not isinstance(row["image"], str) or not row["image"]:
            raise _row_error(path, index, row_id, f"'image' must be a path, got {row['image']!r}")
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise _row_error(path, index, row_id, "missing or empty 'conversations'")
        first = turns[0]
        if not isinstance(first, dict) or first.get("from") != "human" or "value" not in first:
            raise _row_error(path, index, row_id, "first turn is not a human turn with a 'value'")
        question = clean_question(str(first["value"]))
        if not question:
            raise _row_error(path, index, row_id, "the first human turn is empty")
        prompts.append(Prompt(id=str(row_id), image=str(row["image"]), question=question))
    return PromptSource(prompts, skipped)


def load_jsonl_prompts(path: str | Path) -> PromptSource:
    """Read a JSONL prompt list: one ``{"image", "text"}`` object per line (SeVa's prompt files;
    an optional ``id`` or ``question_id`` is kept, else the line number is the id)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found; check `data.data_path`")
    prompts = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: line {line_no} is not valid JSON ({err}); fix or remove it"
            ) from err
        if not isinstance(row, dict) or "image" not in row or "text" not in row:
            raise ValueError(
                f"{path}: line {line_no}: expected an object with 'image' and 'text', "
                f"got {line[:80]!r}"
            )
        row_id = str(row.get("id", row.get("question_id", line_no)))
        if not isinstance(row["image"], str) or not row["image"]:
            raise ValueError(
                f"{path}: line {line_no} (id {row_id!r}): 'image' must be a path, "
                f"got {row['image']!r}"
            )
        question = clean_question(str(row["text"]))
        if not question:
            raise ValueError(f"{path}: line {line_no} (id {row_id!r}): empty 'text'")
        prompts.append(Prompt(id=row_id, image=str(row["image"]), question=question))
    return PromptSource(prompts, skipped_text_only=0)


def load_prompts(path: str | Path) -> PromptSource:
    """Prompts from a LLaVA-665k JSON list (``.json``) or a ``{image, text}`` JSONL list."""
    if Path(path).suffix == ".jsonl":
        return load_jsonl_prompts(path)
    return load_llava_prompts(path)


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


def decode_image(path: Path) -> torch.Tensor:
    """RGB uint8 ``(3, H, W)`` tensor of an image file."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class PromptDataset(Dataset):
    """Decodes each prompt's image on a DataLoader worker; everything else is on the device."""

    def __init__(self, prompts: list[Prompt], image_folder: str | Path) -> None:
        self.prompts = prompts
        self.image_folder = Path(image_folder)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[Prompt, int, torch.Tensor]:
        prompt = self.prompts[index]
        path = self.image_folder / prompt.image
        try:
            image = decode_image(path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{path}: cannot decode the image of prompt {prompt.id!r} ({err}); "
                "check `data.image_folder` or remove the row"
            ) from err
        return prompt, index, image


def collate_prompts(items: list[tuple[Prompt, int, torch.Tensor]]) -> PromptBatch:
    return PromptBatch(
        ids=[p.id for p, _, _ in items],
        indices=[i for _, i, _ in items],
        image_paths=[p.image for p, _, _ in items],
        images=[image for _, _, image in items],
        questions=[p.question for p, _, _ in items],
    )
