"""``AugPairDataModule``: unlabelled prompts in, preference pairs out, made on the device.

CPU workers only decode images. After transfer, ``on_after_batch_transfer`` (on the GPU, no grad):

1. preprocess with the model's own settings (pad to square, resize, normalise);
2. augment a copy (diffusion noise by default) from per-sample seeds, recorded for replay;
3. roll out answers on the clean image (chosen) and the augmented one (rejected) in ONE
   ``generate`` call (greedy by default; ``sampling`` for temperature, top-p, several samples);
4. filter: drop pairs whose answers are identical (SeVa) and whatever ``filters`` reject;
5. tokenise through the module, refuse sequences that cannot be trained on (a prompt that
   ``max_length`` cannot hold with its image tokens, an image-token count that disagrees with
   the image features: ``on_bad_pair``) and emit a :class:`PreferenceBatch`.

With ``pairs_path`` the pairs come from a file instead (this project's ``predict`` output,
SeVa's step-3 pairs or TRL rows): steps 2-4 are skipped, augmentation records are replayed.

Training resumes mid-epoch: the sampler's order depends only on ``(seed, epoch)`` and the
checkpoint records how many batches of the epoch were trained on (:mod:`.sampler`).

Unreadable images and malformed prompt rows follow ``on_bad_image``: ``error`` stops naming the
file, the row and the reason; ``skip`` drops them, warns once per file and, through the
:class:`BadImageSummary` callback that ``setup`` adds to the trainer, logs one summary line per
epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from jsonargparse import lazy_instance
from torch import nn
from torch.utils.data import DataLoader

from lightning_aug_dpo.augment import (
    AdaptiveStrength,
    Augmentation,
    DiffusionNoise,
    KorniaAugmentation,
    Preset,
)
from lightning_aug_dpo.augment.kornia_augment import KorniaTransform
from lightning_aug_dpo.callbacks.bad_images import BadImageSummary, BadImageTracker
from lightning_aug_dpo.data.filters import IdenticalFilter, PairFilter
from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS
from lightning_aug_dpo.data.pair_making import PairMakingMixin, sample_seed
from lightning_aug_dpo.data.pairs import Pair, collate_pairs, load_pairs, repeat_pairs
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    collate_prompts,
    load_prompts,
    refuse_outside_paths,
    split_prompts,
)
from lightning_aug_dpo.data.sampler import ResumableSampler
from lightning_aug_dpo.types import PairStats, PreferenceBatch, Sampling

log = logging.getLogger(__name__)

__all__ = ["AugPairDataModule", "BadImageSummary", "as_augmentation", "sample_seed"]


class AugPairDataModule(PairMakingMixin, BadImageTracker, pl.LightningDataModule):
    """Prompts -> device augmentation -> policy/reference rollouts -> ``PreferenceBatch``.

    Args:
        data_path: LLaVA-665k-format JSON (list of ``{id, image, conversations}``) or a JSONL
            prompt list (``{image, text}`` per line, as SeVa's prompt files). Not needed with
            ``pairs_path``.
        image_folder: folder the rows' ``image`` paths are relative to.
        pairs_path: train on the pairs of this file instead of rolling out (this project's
            ``predict`` output, SeVa's step-3 pairs or TRL rows; see ``data/pairs.py``).
        pairs_repeat: with ``pairs_path``, each pair appears this often per epoch (SeVa: 2).
        num_prompts: training prompts (or pairs) sampled with ``seed`` (``null``: all).
        num_val_prompts: held-out prompts (or pairs) for ``validate``/``test`` (0: none).
        seed: seed of prompt sampling, shuffling, augmentation and sampled rollouts.
        batch_size: prompts per step (pairs per step is this times ``sampling.num_samples``
            minus the filtered ones).
        num_workers: DataLoader worker processes decoding images.
        augmentation: what makes the rejected image: one of this project's augmentations
            (``DiffusionNoise``, ``Preset``, ``KorniaAugmentation``, ``Identity``), a preset
            name (``moco``), or any Kornia augmentation by ``class_path``, e.g.
            ``kornia.augmentation.RandomGaussianBlur`` (wrapped in ``KorniaAugmentation``;
            name it in ``KorniaAugmentation``'s ``transform`` for records that replay alone).
        adaptive_strength: move the augmentation's ``strength`` to keep the identical-pair rate
            in a band (default 0.2-0.5) during ``fit``/``predict``; ``null``: fixed strength.
        max_new_tokens: rollout length (SeVa: 512).
        rollout_model: ``reference`` (adapters off: the initial model, as in SeVa) or
            ``policy`` (the current policy: on-policy pairs).
        sampling: decoding of rollouts: greedy (default, SeVa) or sampled (``do_sample``,
            ``temperature``, ``top_p``, ``num_samples`` per prompt), and ``stop_strings``.
        drop_identical: drop pairs whose two answers are the same string (SeVa's filter).
        filters: further pair filters, applied in order after the identical one (e.g.
            ``IdenticalFilter`` with ``normalize: true``, ``LengthFilter``,
            ``SimilarityFilter`` from ``lightning_aug_dpo.data.filters``, or your own class
            with ``__call__(chosen, rejected) -> reason | None``); each reason is counted.
        on_bad_image: what an unreadable image (missing, empty, truncated, not an image, too
            large) or a malformed prompt row does: ``error`` stops with the file, the row and
            the reason; ``skip`` drops it, warns once per file or row, and logs a summary of
            the epoch's skipped images at its end (a batch left empty makes no optimizer step).
        max_bad_fraction: with ``on_bad_image: skip``, the share of unusable images an epoch
            may hold (judged after 32 images, and over the whole epoch); above it the run stops
            naming each reason's count, and writes no adapter. 0.1 tolerates the few files a
            large download loses (OCR-VQA's image links are known to rot) and stops a wrong
            ``image_folder`` (100% missing) within the first batches. ``null``: never stop. An
            epoch that keeps no pair at all always stops the run.
        max_image_pixels: images whose header declares more pixels are rejected without being
            decoded (decompression bombs); ``null``: only PIL's own limit.
        allow_outside_paths: accept image paths in data files that leave ``image_folder``
            (absolute, or with ``..``); by default such rows are refused like malformed rows
            (``on_bad_image``), so a data file cannot make the run read arbitrary files.
        on_bad_pair: what a tokenised pair that must not be trained on does (its prompt with
            the image tokens does not fit ``model.max_length``, or it holds another number of
            image tokens than its image has features, e.g. a question or answer containing
            the image placeholder): ``skip`` refuses it, counted in
            ``train/pairs/dropped/<reason>`` and warned about; ``error`` stops naming the pair.
    """

    def __init__(
        self,
        data_path: str | None = None,
        image_folder: str = ".",
        pairs_path: str | None = None,
        pairs_repeat: int = 1,
        num_prompts: int | None = None,
        num_val_prompts: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int = 0,
        augmentation: Augmentation | KorniaTransform | str = lazy_instance(DiffusionNoise),
        adaptive_strength: AdaptiveStrength | None = None,
        max_new_tokens: int = 64,
        rollout_model: Literal["reference", "policy"] = "reference",
        sampling: Sampling | None = None,
        drop_identical: bool = True,
        filters: list[PairFilter] | None = None,
        on_bad_image: Literal["skip", "error"] = "error",
        max_bad_fraction: float | None = 0.1,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_outside_paths: bool = False,
        on_bad_pair: Literal["skip", "error"] = "skip",
    ) -> None:
        super().__init__()
        if (data_path is None) == (pairs_path is None):
            raise ValueError(
                "set exactly one of data.data_path (prompts to roll out) and data.pairs_path "
                f"(pairs to train on), got data_path={data_path!r}, pairs_path={pairs_path!r}"
            )
        if pairs_repeat < 1:
            raise ValueError(f"data.pairs_repeat must be >= 1, got {pairs_repeat}")
        self.save_hyperparameters(ignore=["augmentation", "adaptive_strength", "filters"])
        self.augmentation = as_augmentation(augmentation)
        self.adaptive_strength = adaptive_strength
        if adaptive_strength is not None:
            self.augmentation.strength  # noqa: B018 - fails early for augmentations without one
        self.sampling = sampling or Sampling()
        self.filters: list[PairFilter] = [IdenticalFilter()] if drop_identical else []
        self.filters += list(filters or [])
        self.train_prompts: list[Prompt] | list[Pair] = []
        self.val_prompts: list[Prompt] | list[Pair] = []
        self.skipped_text_only = 0
        self.bad_rows: list[tuple[int, str]] = []  # (row or line number, reason), skip mode
        self.bad_images: dict[str, str] = {}  # path -> reason, skipped since the last summary
        self._warned_images: set[str] = set()  # each bad file is warned about once per run
        self.skip_prompt_ids: set[str] = set()  # predict: prompts whose pairs are written
        self._resume: dict[str, int] | None = None  # fit: where the checkpointed epoch stood

    # ------------------------------------------------------------------ prompts and loaders
    def setup(self, stage: str) -> None:
        self.attach_bad_image_summary()
        if self.train_prompts:
            return
        path = self.hparams.pairs_path or self.hparams.data_path
        if self.hparams.pairs_path:
            source = load_pairs(path, on_bad_row=self.hparams.on_bad_image)
            rows, self.bad_rows = source.pairs, source.skipped
        else:
            prompts = load_prompts(path, on_bad_row=self.hparams.on_bad_image)
            rows, self.bad_rows = prompts.prompts, prompts.bad_rows
            self.skipped_text_only = prompts.skipped_text_only
        if not self.hparams.allow_outside_paths:
            hp = self.hparams
            rows = refuse_outside_paths(rows, path, hp.image_folder, hp.on_bad_image, self.bad_rows)
        if self.bad_rows:
            listed = "; ".join(f"{n}: {reason}" for n, reason in self.bad_rows)
            unit = "lines" if str(path).endswith(".jsonl") else "rows"
            log.warning(
                "%s: skipped %d malformed %s (on_bad_image=skip): %s",
                path,
                len(self.bad_rows),
                unit,
                listed,
            )
        train, self.val_prompts = split_prompts(
            rows, self.hparams.num_prompts, self.hparams.num_val_prompts, self.hparams.seed
        )
        if self.hparams.pairs_path:
            train = repeat_pairs(train, self.hparams.pairs_repeat)
        self.train_prompts = train

    @property
    def batch_size(self) -> int:
        return self.hparams.batch_size

    def _dataset(self, rows: Sequence[Prompt | Pair], indices: list[int] | None = None):
        return PromptDataset(
            rows,
            self.hparams.image_folder,
            on_bad_image=self.hparams.on_bad_image,
            max_pixels=self.hparams.max_image_pixels,
            indices=indices,
        )

    def _loader(self, dataset: PromptDataset, sampler: ResumableSampler) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_pairs if self.hparams.pairs_path else collate_prompts,
        )

    def _sampler(self, dataset: PromptDataset, shuffle: bool) -> ResumableSampler:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return ResumableSampler(dataset, self.hparams.seed, shuffle, num_replicas=world, rank=rank)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_prompts)
        sampler = self._sampler(dataset, shuffle=True)
        if self._resume is not None:  # restored from a checkpoint
            epoch, consumed = self._resume["epoch"], self._resume["batches"] * self.batch_size
            if consumed < len(sampler):
                sampler.resume_at(epoch, consumed)  # mid-epoch: continue after those batches
            else:
                sampler.set_epoch(epoch + 1)  # the epoch was complete: the next one starts
            self._resume = None
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        if not self.val_prompts:
            return []
        dataset = self._dataset(self.val_prompts)
        return self._loader(dataset, self._sampler(dataset, shuffle=False))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The training prompts in order, less ``skip_prompt_ids`` (set by ``PairsWriter`` to
        the prompts a previous run already wrote); each keeps its index, hence its seeds."""
        kept = [
            (i, p) for i, p in enumerate(self.train_prompts) if p.id not in self.skip_prompt_ids
        ]
        dataset = self._dataset([p for _, p in kept], indices=[i for i, _ in kept])
        # Lightning shards predict loaders itself (without padding) under DDP.
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_pairs if self.hparams.pairs_path else collate_prompts,
        )

    # ------------------------------------------------------------------ bad images
    def _empty_pairs(self, module: Any, adapt: bool, skipped: int) -> PreferenceBatch:
        """No image of the batch was readable: no rollouts, an empty batch (no optimizer step)."""
        stats = PairStats(prompts=0, kept=0, identical=0)
        if adapt and self.adaptive_strength is not None:
            self._adapt(stats)  # still called: under DDP every rank must join the all_reduce
        size = module.preprocessor.size
        pixels = torch.zeros((0, 3, size, size), device=module.device)
        self.augmentation.to(pixels.device)  # as in make_pairs (builds a lazy default)
        return PreferenceBatch(
            pixel_values=pixels,
            aug_pixel_values=pixels.clone(),
            meta=self._meta(stats, [], self._strength(), skipped),
            **module.tokenize_pairs([], [], []),
        )

    # ------------------------------------------------------------------ strength control
    def _strength(self) -> float | None:
        try:
            return float(self.augmentation.strength)
        except TypeError:  # an augmentation without a strength knob
            return None

    def _adapt(self, stats: PairStats) -> None:
        """Feed the controller this step's counts, summed over ranks so all ranks agree."""
        counts = torch.tensor([stats.candidates, stats.identical], dtype=torch.long)
        if dist.is_available() and dist.is_initialized():
            counts = counts.to(self.trainer.strategy.root_device)
            dist.all_reduce(counts)
        prompts, identical = (int(c) for c in counts.tolist())
        assert self.adaptive_strength is not None
        current = float(self.augmentation.strength)
        self.augmentation.strength = self.adaptive_strength.update(current, prompts, identical)

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch (for a mid-epoch resume) and, with
        ``adaptive_strength``, the adapted strength, so a resumed run continues as it was."""
        state: dict[str, Any] = {}
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # Batches whose training step ran this epoch (a checkpoint written at the end of a
            # batch counts that batch); the resumed epoch starts after them.
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            state["position"] = {"epoch": trainer.current_epoch, "batches": batches}
        if self.adaptive_strength is not None:
            state["augment_strength"] = float(self.augmentation.strength)
            state["adaptive_strength"] = self.adaptive_strength.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "position" in state_dict:
            self._resume = dict(state_dict["position"])
        if self.adaptive_strength is not None and "augment_strength" in state_dict:
            self.augmentation.strength = state_dict["augment_strength"]
            self.adaptive_strength.load_state_dict(state_dict["adaptive_strength"])


def as_augmentation(augmentation: Augmentation | nn.Module | str) -> Augmentation:
    """A preset name or a bare Kornia module -> an :class:`Augmentation`."""
    if isinstance(augmentation, Augmentation):
        return augmentation
    if isinstance(augmentation, str):
        return Preset(augmentation)  # type: ignore[arg-type]  # validated by Preset
    if isinstance(augmentation, nn.Module):
        return KorniaAugmentation(augmentation)
    raise TypeError(
        f"augmentation must be an Augmentation, a Kornia module or a preset name, got "
        f"{type(augmentation).__name__}"
    )
