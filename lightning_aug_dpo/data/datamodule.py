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

import hashlib
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
    replay,
)
from lightning_aug_dpo.callbacks.bad_images import BadImageSummary
from lightning_aug_dpo.data.filters import IdenticalFilter, PairFilter
from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS
from lightning_aug_dpo.data.pairs import Pair, PairBatch, collate_pairs, load_pairs, repeat_pairs
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    collate_prompts,
    load_prompts,
    refuse_outside_paths,
    split_prompts,
)
from lightning_aug_dpo.data.rollouts import pair_id, roll_out, select_pairs
from lightning_aug_dpo.data.sampler import ResumableSampler
from lightning_aug_dpo.types import PairStats, PreferenceBatch, PromptBatch, Sampling
from lightning_aug_dpo.validation import (
    IMAGE_TOKEN_MISMATCH,
    PROMPT_TOO_LONG,
    sequence_problems,
)

log = logging.getLogger(__name__)

__all__ = ["AugPairDataModule", "BadImageSummary", "as_augmentation", "sample_seed"]


BAD_PAIR_HINTS = {
    PROMPT_TOO_LONG: "its prompt with the image tokens leaves no room for an answer in "
    "model.max_length (cutting it would cut the question or the image tokens); raise "
    "model.max_length or shorten the question",
    IMAGE_TOKEN_MISMATCH: "its token sequence holds another number of image tokens than its "
    "image has features (does the question or an answer contain the image placeholder?); "
    "remove the placeholder from the text",
}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable per-sample seed: same (seed, epoch, dataset index) -> same augmentation,
    whatever the batch size, worker count or rank."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # non-negative int64


class AugPairDataModule(pl.LightningDataModule):
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
        augmentation: what makes the rejected image: an :class:`Augmentation` (``DiffusionNoise``,
            ``Preset``, ``KorniaAugmentation``), a preset name (``moco``), or any Kornia
            augmentation by ``class_path`` (wrapped in ``KorniaAugmentation``).
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
        augmentation: Augmentation | nn.Module | str = lazy_instance(DiffusionNoise),
        adaptive_strength: AdaptiveStrength | None = None,
        max_new_tokens: int = 64,
        rollout_model: Literal["reference", "policy"] = "reference",
        sampling: Sampling | None = None,
        drop_identical: bool = True,
        filters: list[PairFilter] | None = None,
        on_bad_image: Literal["skip", "error"] = "error",
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
        self._attach_summary()
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
            rows = refuse_outside_paths(
                rows, path, hp.image_folder, hp.on_bad_image, self.bad_rows
            )
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

    # ------------------------------------------------------------------ pair making
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, PairBatch):
            return self.pairs_from_file(batch, self.trainer.lightning_module)
        if isinstance(batch, PromptBatch):
            trainer = self.trainer
            adapt = trainer.training or trainer.predicting
            return self.make_pairs(batch, trainer.lightning_module, trainer.current_epoch, adapt)
        return batch

    @torch.no_grad()
    def make_pairs(
        self, batch: PromptBatch, module: Any, epoch: int = 0, adapt: bool = False
    ) -> PreferenceBatch:
        """Rollouts on clean and augmented images of one prompt batch (see module docstring).

        ``module`` is the :class:`AugDPOModule` whose ``preprocess_images``, ``rollout`` and
        ``tokenize_pairs`` make the pairs; ``epoch`` enters the per-sample augmentation seeds;
        ``adapt`` lets ``adaptive_strength`` update the strength from this batch's pairs.
        Images the workers skipped (``on_bad_image: skip``) are recorded in ``bad_images`` and
        counted in ``meta["bad_images"]``; a batch left empty gives an empty PreferenceBatch.
        """
        skipped = self._record_bad_images(getattr(batch, "skipped", []))
        if len(batch) == 0:
            return self._empty_pairs(module, adapt, skipped)
        clean = module.preprocess_images(batch.images)
        seed = self.hparams.seed
        self.augmentation.to(clean.device)
        preprocessor = module.preprocessor
        self.augmentation.set_normalization(preprocessor.mean.flatten(), preprocessor.std.flatten())
        strength = self._strength()
        augmented, records = self.augmentation(
            clean, [sample_seed(seed, epoch, i) for i in batch.indices]
        )

        use_reference = self.hparams.rollout_model == "reference"
        # The reference's log-probs of the chosen answers come with a reference rollout when
        # the module reuses them; answers cut at a stop string would not match their tokens.
        reuse = use_reference and getattr(module, "wants_rollout_logps", False)
        reuse = reuse and not self.sampling.stop_strings
        rollouts = roll_out(
            module,
            clean,
            augmented,
            batch.questions,
            self.hparams.max_new_tokens,
            use_reference=use_reference,
            sampling=self.sampling,
            seed=sample_seed(seed, epoch, -1 - batch.indices[0]),  # not any sample's seed
            return_logps=reuse,
        )
        keep, stats = select_pairs(rollouts, self.filters, prompts=len(batch))
        k = rollouts.num_samples
        rows = []
        for j in keep:
            i = rollouts.prompt_of(j)
            row = {
                "id": pair_id(batch.ids[i], j % k, k),
                "image": batch.image_paths[i],
                "prompt": batch.questions[i],
                "chosen": rollouts.chosen[j].text,
                "rejected": rollouts.rejected[j].text,
                "augmentation": records[i],
                "chosen_finished": rollouts.chosen[j].finished,
                "rejected_finished": rollouts.rejected[j].finished,
            }
            rows.append(row | ({"sample": j % k} if k > 1 else {}))
        if adapt and self.adaptive_strength is not None:
            self._adapt(stats)
        tokens = module.tokenize_pairs(
            [r["prompt"] for r in rows],
            [r["chosen"] for r in rows],
            [r["rejected"] for r in rows],
            chosen_finished=[r["chosen_finished"] for r in rows],
            rejected_finished=[r["rejected_finished"] for r in rows],
            # with reuse, DPO scores exactly the generated tokens the log-probs are of
            chosen_ids=[rollouts.chosen[j].token_ids for j in keep] if reuse else None,
            rejected_ids=[rollouts.rejected[j].token_ids for j in keep] if reuse else None,
        )
        good = self._refuse_bad_sequences(module, tokens, rows, stats, clean.shape[-2:])
        keep, rows = [keep[i] for i in good], [rows[i] for i in good]
        chosen = [rollouts.chosen[j] for j in keep]
        reference_chosen = None
        lengths = tokens["chosen_attention_mask"].sum(-1).tolist()
        if reuse and all(n == len(c.token_ids) for n, c in zip(lengths, chosen, strict=True)):
            # (a response cut to max_length would have a shorter sum: computed in the step)
            reference_chosen = torch.tensor([c.logp for c in chosen], device=clean.device)
        index = torch.tensor(
            [rollouts.prompt_of(j) for j in keep], dtype=torch.long, device=clean.device
        )
        return PreferenceBatch(
            pixel_values=clean.index_select(0, index),
            aug_pixel_values=augmented.index_select(0, index),
            reference_chosen_logps=reference_chosen,
            meta=self._meta(stats, rows, strength, skipped, batch.ids),
            **tokens,
        )

    @torch.no_grad()
    def pairs_from_file(self, batch: PairBatch, module: Any) -> PreferenceBatch:
        """A :class:`PreferenceBatch` of pairs read from ``pairs_path``: no rollouts.

        The augmented image is replayed from the rows' augmentation records when every row has
        one (this project's files); otherwise (SeVa, TRL files) ``aug_pixel_values`` is None.
        """
        skipped = self._record_bad_images(batch.skipped)
        if len(batch) == 0:
            return self._empty_pairs(module, False, skipped)
        clean = module.preprocess_images(batch.images)
        augmented = None
        if all(record is not None for record in batch.augmentations):
            augmented = torch.stack(
                [replay(r, image) for r, image in zip(batch.augmentations, clean, strict=True)]
            )
        keys = ("id", "image", "prompt", "chosen", "rejected", "augmentation")
        keys += ("chosen_finished", "rejected_finished")
        columns = (batch.ids, batch.image_paths, batch.questions, batch.chosen, batch.rejected)
        columns += (batch.augmentations, batch.chosen_finished, batch.rejected_finished)
        rows = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
        tokens = module.tokenize_pairs(
            batch.questions,
            batch.chosen,
            batch.rejected,
            chosen_finished=batch.chosen_finished,
            rejected_finished=batch.rejected_finished,
        )
        stats = PairStats(prompts=len(batch), kept=len(batch), identical=0)
        good = self._refuse_bad_sequences(module, tokens, rows, stats, clean.shape[-2:])
        index = torch.tensor(good, dtype=torch.long, device=clean.device)
        return PreferenceBatch(
            pixel_values=clean.index_select(0, index),
            aug_pixel_values=None if augmented is None else augmented.index_select(0, index),
            meta=self._meta(stats, [rows[i] for i in good], None, skipped, batch.ids),
            **tokens,
        )

    def _refuse_bad_sequences(
        self,
        module: Any,
        tokens: dict[str, torch.Tensor],
        rows: list[dict[str, Any]],
        stats: PairStats,
        image_shape: Sequence[int],
    ) -> list[int]:
        """Indices of the pairs fit to train on; the others are counted in ``stats.dropped``
        and removed from ``tokens`` in place (``on_bad_pair: skip``), or stop the run."""
        problems = sequence_problems(module, tokens, (int(image_shape[0]), int(image_shape[1])))
        good = [i for i, problem in enumerate(problems) if problem is None]
        if len(good) == len(rows):
            return good
        prompt_lengths = tokens["prompt_attention_mask"].sum(-1).tolist()
        for row, problem, length in zip(rows, problems, prompt_lengths, strict=True):
            if problem is None:
                continue
            what = (
                f"pair {row['id']!r} (image {row['image']}, prompt of {length} tokens, "
                f"model.max_length={module.hparams.max_length}): {problem}"
            )
            if self.hparams.on_bad_pair == "error":
                raise ValueError(
                    f"{what}: {BAD_PAIR_HINTS[problem]}; or set data.on_bad_pair: skip to "
                    "refuse and count such pairs"
                )
            log.warning("refusing %s: %s", what, BAD_PAIR_HINTS[problem])
            stats.dropped[problem] = stats.dropped.get(problem, 0) + 1
            stats.kept -= 1
        index = torch.tensor(good, dtype=torch.long, device=tokens["prompt_input_ids"].device)
        for key, value in tokens.items():
            tokens[key] = value.index_select(0, index)
        return good

    def _meta(
        self,
        stats: PairStats,
        rows: list[dict],
        strength: float | None,
        skipped: int,
        prompt_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """``PreferenceBatch.meta``: statistics, written rows, the strength used, the count of
        skipped images and the ids of the prompts the batch covered (done, even if filtered)."""
        return {
            "stats": stats,
            "rows": rows,
            "augment_strength": strength,
            "bad_images": skipped,
            "prompt_ids": list(prompt_ids or []),
        }

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

    def _record_bad_images(self, skipped: list[tuple[str, str]]) -> int:
        """Remember this batch's skipped images for the epoch summary; warn once per file."""
        for path, reason in skipped:
            self.bad_images[path] = reason
            if path not in self._warned_images:
                self._warned_images.add(path)
                log.warning("skipping unreadable image %s (%s)", path, reason)
        return len(skipped)

    def bad_image_summary(self) -> str | None:
        """One line listing the images skipped since the last call (then forgets them);
        ``None`` if there were none."""
        if not self.bad_images:
            return None
        bad, self.bad_images = sorted(self.bad_images.items()), {}
        listed = ", ".join(f"{path} ({reason})" for path, reason in bad)
        return f"skipped {len(bad)} unreadable images this epoch: {listed}"

    def _attach_summary(self) -> None:
        """Add a :class:`BadImageSummary` to the trainer so each epoch ends with a summary
        (a DataModule gets no epoch hooks of its own)."""
        trainer = self.trainer
        if trainer is None or any(isinstance(c, BadImageSummary) for c in trainer.callbacks):
            return
        trainer.callbacks.append(BadImageSummary())

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
