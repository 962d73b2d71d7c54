"""``SFTDataModule``: LLaVA-665k conversations in, ``SFTBatch`` es out (visual instruction tuning).

CPU workers only decode images (:class:`~.prompts.PromptDataset`, with its path and size checks).
After transfer, ``on_after_batch_transfer`` (on the device, no grad) preprocesses the images
with the model's own settings and tokenises the conversations through the module's hooks
(``format_conversation``: every turn, answers trained, everything else masked), refuses rows
that cannot be trained on (``on_bad_sample``) and emits an :class:`SFTBatch`.

Unlike the DPO prompts, the answers are read: every ``gpt`` turn is a target. Rows without an
image (LLaVA-665k's text-only ShareGPT rows) cannot be batched with images: with
``on_bad_image: skip`` they are skipped, counted and warned about; with ``error`` they stop the
run naming the count and the fix. Malformed rows and unreadable images follow ``on_bad_image``
as in ``AugPairDataModule``. Shuffling is the :class:`ResumableSampler`'s: a pure function of
``(seed, epoch)``, resumable mid-epoch, so a rerun with the same seed trains on the same batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_aug_dpo.callbacks.bad_images import BadImageTracker
from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS
from lightning_aug_dpo.data.prompts import (
    IMAGE_PLACEHOLDER,
    SKIP_HINT,
    BadItem,
    OnBad,
    PromptDataset,
    check_on_bad,
    read_llava_json,
    refuse_outside_paths,
    split_prompts,
)
from lightning_aug_dpo.data.sampler import ResumableSampler
from lightning_aug_dpo.types import ConversationBatch, SFTBatch, Turns
from lightning_aug_dpo.validation import IMAGE_TOKEN_MISMATCH, PROMPT_TOO_LONG

log = logging.getLogger(__name__)

ROLES = {"human": "user", "gpt": "assistant"}
BAD_SAMPLE_HINTS = {
    PROMPT_TOO_LONG: "its first prompt with the image tokens leaves no room for an answer in "
    "model.max_length; raise model.max_length or shorten the question",
    IMAGE_TOKEN_MISMATCH: "it holds another number of image tokens than its image has "
    "features (does a turn contain the image token itself?); remove it from the text",
}


@dataclass(frozen=True)
class Conversation:
    """One training row: an image path (relative to the image folder) and its turns."""

    id: str
    image: str
    turns: Turns
    location: str = field(default="", compare=False)  # "row 3": for error messages


@dataclass(frozen=True)
class ConversationSource:
    """Rows read from a file: the conversations, the text-only row count, the malformed rows."""

    conversations: list[Conversation]
    text_only: int
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


def parse_conversation(index: int, row: object) -> Conversation | None:
    """The conversation of one LLaVA row (``None``: no image); ``ValueError`` if malformed.

    Turns must alternate ``human`` / ``gpt`` from ``human`` and end on ``gpt``; every value is
    a non-empty string. The ``<image>`` placeholder is removed from every turn (the chat
    template puts the image in the first user turn itself).
    """
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if "image" not in row:
        return None
    image = row["image"]
    if not isinstance(image, str) or not image:
        raise ValueError(f"'image' must be a path, got {image!r}")
    raw = row.get("conversations")
    if not isinstance(raw, list) or not raw:
        raise ValueError("missing or empty 'conversations'")
    turns: Turns = []
    for i, turn in enumerate(raw):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want:
            raise ValueError(f"turn {i} is not a {want!r} turn (turns alternate human, gpt)")
        value = turn.get("value")
        text = value.replace(IMAGE_PLACEHOLDER, "").strip() if isinstance(value, str) else ""
        if not text:
            raise ValueError(f"turn {i} has an empty or missing 'value'")
        turns.append((ROLES[want], text))
    if len(turns) % 2:
        raise ValueError(f"the last turn ({len(turns) - 1}) is a question without an answer")
    return Conversation(str(row.get("id", index)), image, turns, location=f"row {index}")


def load_conversations(path: str | Path, on_bad_row: OnBad = "error") -> ConversationSource:
    """Read a LLaVA-665k-format JSON list (``{id, image, conversations}`` rows).

    ``on_bad_row="skip"`` drops malformed rows into ``bad_rows`` (row index, reason) and
    counts text-only rows; ``"error"`` raises on the first malformed row, and on text-only
    rows (after counting them all), naming the file, the row and the fix.
    """
    check_on_bad(on_bad_row, "on_bad_row")
    path = Path(path)
    rows = read_llava_json(path, "check `data.data_path`")
    conversations: list[Conversation] = []
    bad_rows: list[tuple[int, str]] = []
    text_only: list[int] = []
    for index, row in enumerate(rows):
        try:
            conversation = parse_conversation(index, row)
        except ValueError as err:
            if on_bad_row == "error":
                row_id = row.get("id", index) if isinstance(row, dict) else None
                raise ValueError(
                    f"{path}: row {index} (id {row_id!r}): {err}. Each row needs 'image' and "
                    "'conversations' of alternating {'from': 'human' | 'gpt', 'value': ...} "
                    f"turns; fix or remove the row, {SKIP_HINT}."
                ) from None
            bad_rows.append((index, str(err)))
            continue
        if conversation is None:
            text_only.append(index)
        else:
            conversations.append(conversation)
    if text_only and on_bad_row == "error":
        raise ValueError(
            f"{path}: {len(text_only)} rows have no image (first: row {text_only[0]}); SFT "
            f"batches always carry images, so they cannot be trained on. Remove them, {SKIP_HINT}."
        )
    return ConversationSource(conversations, len(text_only), bad_rows)


def collate_conversations(
    items: list[tuple[Conversation, int, torch.Tensor] | BadItem],
) -> ConversationBatch:
    """Batch the good items; :class:`BadItem` s are dropped and listed in ``skipped``."""
    good = [item for item in items if not isinstance(item, BadItem)]
    return ConversationBatch(
        ids=[c.id for c, _, _ in good],
        indices=[i for _, i, _ in good],
        image_paths=[c.image for c, _, _ in good],
        images=[image for _, _, image in good],
        conversations=[c.turns for c, _, _ in good],
        skipped=[(item.path, item.reason) for item in items if isinstance(item, BadItem)],
    )


class SFTDataModule(BadImageTracker, pl.LightningDataModule):
    """LLaVA-665k-format conversations -> device preprocessing + tokenisation -> ``SFTBatch``.

    Args:
        data_path: LLaVA-665k-format JSON: a list of ``{id, image, conversations}`` rows whose
            ``conversations`` alternate ``{"from": "human", "value": "<image>\\n..."}`` and
            ``{"from": "gpt", "value": ...}`` turns (multi-turn; every answer is trained on).
        image_folder: folder the rows' ``image`` paths are relative to.
        num_samples: training rows sampled with ``seed`` (``null``: all).
        num_val_samples: rows held out for ``val/loss`` (0: no validation).
        seed: seed of the held-out split and of the per-epoch shuffling.
        batch_size: rows per step (before refusals).
        num_workers: DataLoader worker processes decoding images.
        on_bad_image: an unreadable image (missing, empty, truncated, not an image, too large),
            a malformed row or a row without an image: ``error`` stops naming the file, the
            row and the reason; ``skip`` drops it, warns, and summarises each epoch's
            skipped images.
        max_image_pixels: images whose header declares more pixels are rejected undecoded.
        allow_outside_paths: accept image paths that leave ``image_folder`` (absolute or with
            ``..``); refused like malformed rows by default.
        on_bad_sample: a tokenised row that cannot be trained on (its first prompt with the
            image tokens does not fit ``model.max_length``; its image-token count disagrees
            with its image): ``skip`` refuses it, counted in
            ``train/samples/dropped/<reason>``; ``error`` stops naming the row. Rows whose
            later answers do not fit are cut at ``max_length`` and counted in
            ``train/samples/truncated``.
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str = ".",
        num_samples: int | None = None,
        num_val_samples: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int = 0,
        on_bad_image: Literal["skip", "error"] = "error",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_outside_paths: bool = False,
        on_bad_sample: Literal["skip", "error"] = "skip",
    ) -> None:
        super().__init__()
        check_on_bad(on_bad_image, "data.on_bad_image")
        check_on_bad(on_bad_sample, "data.on_bad_sample")
        self.save_hyperparameters()
        self.train_rows: list[Conversation] = []
        self.val_rows: list[Conversation] = []
        self.text_only = 0
        self.bad_rows: list[tuple[int, str]] = []
        self.bad_images: dict[str, str] = {}  # path -> reason, since the last summary
        self._warned_images: set[str] = set()
        self._resume: dict[str, int] | None = None

    # ------------------------------------------------------------------ rows and loaders
    def setup(self, stage: str) -> None:
        self.attach_bad_image_summary()
        if self.train_rows:
            return
        hp = self.hparams
        source = load_conversations(hp.data_path, on_bad_row=hp.on_bad_image)
        rows, self.bad_rows, self.text_only = (
            source.conversations,
            source.bad_rows,
            source.text_only,
        )
        if not hp.allow_outside_paths:
            rows = refuse_outside_paths(
                rows, hp.data_path, hp.image_folder, hp.on_bad_image, self.bad_rows
            )
        if self.text_only:
            log.warning("%s: skipped %d rows without an image", hp.data_path, self.text_only)
        if self.bad_rows:
            listed = "; ".join(f"{n}: {reason}" for n, reason in self.bad_rows)
            log.warning(
                "%s: skipped %d malformed rows: %s", hp.data_path, len(self.bad_rows), listed
            )
        self.train_rows, self.val_rows = split_prompts(
            rows, hp.num_samples, hp.num_val_samples, hp.seed
        )

    def _loader(self, rows: list[Conversation], shuffle: bool) -> DataLoader:
        hp = self.hparams
        dataset = PromptDataset(
            rows, hp.image_folder, on_bad_image=hp.on_bad_image, max_pixels=hp.max_image_pixels
        )
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = ResumableSampler(dataset, hp.seed, shuffle, num_replicas=world, rank=rank)
        if shuffle and self._resume is not None:  # restored from a checkpoint
            epoch, consumed = self._resume["epoch"], self._resume["batches"] * hp.batch_size
            if consumed < len(sampler):
                sampler.resume_at(epoch, consumed)
            else:
                sampler.set_epoch(epoch + 1)
            self._resume = None
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            collate_fn=collate_conversations,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_rows, shuffle=False) if self.val_rows else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    # ------------------------------------------------------------------ on the device
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, ConversationBatch):
            return self.make_batch(batch, self.trainer.lightning_module)
        return batch

    @torch.no_grad()
    def make_batch(self, batch: ConversationBatch, module: Any) -> SFTBatch:
        """Preprocess and tokenise one batch through ``module`` (an ``AugDPOModule``); rows
        that cannot be trained on are refused (``on_bad_sample``) and counted in ``meta``."""
        skipped = self._record_bad_images(batch.skipped)
        size = module.preprocessor.size
        if len(batch) == 0:
            pixels = torch.zeros((0, 3, size, size), device=module.device)
            tokens, status = module.tokenize_conversations([])
        else:
            pixels = module.preprocess_images(batch.images)
            tokens, status = module.tokenize_conversations(batch.conversations)
        image_id = module.image_token_id()
        expected = module.num_image_features(tuple(pixels.shape[-2:]))
        if image_id is not None and expected is not None and len(batch):
            counts = ((tokens["input_ids"] == image_id) & (tokens["attention_mask"] > 0)).sum(-1)
            status = [
                IMAGE_TOKEN_MISMATCH if s is None and int(n) != expected else s
                for s, n in zip(status, counts.tolist(), strict=True)
            ]
        dropped: dict[str, int] = {}
        for row_id, path, state in zip(batch.ids, batch.image_paths, status, strict=True):
            if state not in BAD_SAMPLE_HINTS:
                continue
            what = f"row {row_id!r} (image {path}, model.max_length={module.hparams.max_length})"
            if self.hparams.on_bad_sample == "error":
                raise ValueError(
                    f"{what}: {BAD_SAMPLE_HINTS[state]}; or set data.on_bad_sample: skip to "
                    "refuse and count such rows"
                )
            log.warning("refusing %s: %s", what, BAD_SAMPLE_HINTS[state])
            dropped[state] = dropped.get(state, 0) + 1
        good = [i for i, state in enumerate(status) if state not in BAD_SAMPLE_HINTS]
        index = torch.tensor(good, dtype=torch.long, device=pixels.device)
        return SFTBatch(
            pixel_values=pixels.index_select(0, index),
            meta={
                "ids": [batch.ids[i] for i in good],
                "dropped": dropped,
                "truncated": sum(state == "truncated" for state in status),
                "bad_images": skipped,
            },
            **{k: v.index_select(0, index.to(v.device)) for k, v in tokens.items()},
        )

    # ------------------------------------------------------------------ resume state
    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch, so a resumed run continues after it."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"position": {"epoch": trainer.current_epoch, "batches": batches}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "position" in state_dict:
            self._resume = dict(state_dict["position"])
