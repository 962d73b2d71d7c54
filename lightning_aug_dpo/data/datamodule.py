"""``AugPairDataModule``: unlabelled prompts in, preference pairs out, made on the device.

CPU workers only decode images. After transfer, ``on_after_batch_transfer`` (on the GPU, no grad):

1. preprocess with the model's own settings (pad to square, resize, normalise);
2. augment a copy (diffusion noise by default) from per-sample seeds, recorded for replay;
3. roll out greedy answers on the clean image (chosen) and the augmented one (rejected);
4. drop pairs whose answers are identical (no signal), count them;
5. tokenise through the module and emit a :class:`PreferenceBatch`.

Unreadable images and malformed prompt rows follow ``on_bad_image``: ``error`` stops naming the
file, the row and the reason; ``skip`` drops them, warns once per file and, through the
:class:`BadImageSummary` callback that ``setup`` adds to the trainer, logs one summary line per
epoch.
"""

from __future__ import annotations

import hashlib
import logging
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
from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    collate_prompts,
    load_prompts,
    split_prompts,
)
from lightning_aug_dpo.types import PairStats, PreferenceBatch, PromptBatch

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable per-sample seed: same (seed, epoch, dataset index) -> same augmentation,
    whatever the batch size, worker count or rank."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # non-negative int64


class AugPairDataModule(pl.LightningDataModule):
    """Prompts -> device augmentation -> policy/reference rollouts -> ``PreferenceBatch``.

    Args:
        data_path: LLaVA-665k-format JSON (list of ``{id, image, conversations}``) or a JSONL
            prompt list (``{image, text}`` per line, as SeVa's prompt files).
        image_folder: folder the rows' ``image`` paths are relative to.
        num_prompts: training prompts sampled with ``seed`` (``null``: all).
        num_val_prompts: held-out prompts for ``validate``/``test`` (0: none).
        seed: seed of prompt sampling, shuffling and augmentation.
        batch_size: prompts per step (pairs per step is this minus dropped identical ones).
        num_workers: DataLoader worker processes decoding images.
        augmentation: what makes the rejected image: an :class:`Augmentation` (``DiffusionNoise``,
            ``Preset``, ``KorniaAugmentation``), a preset name (``moco``), or any Kornia
            augmentation by ``class_path`` (wrapped in ``KorniaAugmentation``).
        adaptive_strength: move the augmentation's ``strength`` to keep the identical-pair rate
            in a band (default 0.2-0.5) during ``fit``/``predict``; ``null``: fixed strength.
        max_new_tokens: rollout length (SeVa: 512).
        rollout_model: ``reference`` (adapters off: the initial model, as in SeVa) or
            ``policy`` (the current policy: on-policy pairs).
        drop_identical: drop pairs whose two answers are the same string.
        on_bad_image: what an unreadable image (missing, empty, truncated, not an image, too
            large) or a malformed prompt row does: ``error`` stops with the file, the row and
            the reason; ``skip`` drops it, warns once per file or row, and logs a summary of
            the epoch's skipped images at its end (a batch left empty makes no optimizer step).
        max_image_pixels: images whose header declares more pixels are rejected without being
            decoded (decompression bombs); ``null``: only PIL's own limit.
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str,
        num_prompts: int | None = None,
        num_val_prompts: int = 0,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int = 0,
        augmentation: Augmentation | nn.Module | str = lazy_instance(DiffusionNoise),
        adaptive_strength: AdaptiveStrength | None = None,
        max_new_tokens: int = 64,
        rollout_model: Literal["reference", "policy"] = "reference",
        drop_identical: bool = True,
        on_bad_image: Literal["skip", "error"] = "error",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["augmentation", "adaptive_strength"])
        self.augmentation = as_augmentation(augmentation)
        self.adaptive_strength = adaptive_strength
        if adaptive_strength is not None:
            self.augmentation.strength  # noqa: B018 - fails early for augmentations without one
        self.train_prompts: list[Prompt] = []
        self.val_prompts: list[Prompt] = []
        self.skipped_text_only = 0
        self.bad_rows: list[tuple[int, str]] = []  # (row or line number, reason), skip mode
        self.bad_images: dict[str, str] = {}  # path -> reason, skipped since the last summary
        self._warned_images: set[str] = set()  # each bad file is warned about once per run

    def setup(self, stage: str) -> None:
        self._attach_summary()
        if self.train_prompts:
            return
        source = load_prompts(self.hparams.data_path, on_bad_row=self.hparams.on_bad_image)
        self.skipped_text_only = source.skipped_text_only
        self.bad_rows = source.bad_rows
        if source.bad_rows:
            listed = "; ".join(f"{n}: {reason}" for n, reason in source.bad_rows)
            unit = "lines" if str(self.hparams.data_path).endswith(".jsonl") else "rows"
            log.warning(
                "%s: skipped %d malformed %s (on_bad_image=skip): %s",
                self.hparams.data_path,
                len(source.bad_rows),
                unit,
                listed,
            )
        self.train_prompts, self.val_prompts = split_prompts(
            source.prompts,
            self.hparams.num_prompts,
            self.hparams.num_val_prompts,
            self.hparams.seed,
        )

    def _loader(self, prompts: list[Prompt], shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            PromptDataset(
                prompts,
                self.hparams.image_folder,
                on_bad_image=self.hparams.on_bad_image,
                max_pixels=self.hparams.max_image_pixels,
            ),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_prompts,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_prompts, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_prompts, shuffle=False) if self.val_prompts else []

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.train_prompts, shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
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
        seeds = [sample_seed(self.hparams.seed, epoch, i) for i in batch.indices]
        self.augmentation.to(clean.device)
        preprocessor = module.preprocessor
        self.augmentation.set_normalization(preprocessor.mean.flatten(), preprocessor.std.flatten())
        strength = self._strength()
        augmented, records = self.augmentation(clean, seeds)

        use_reference = self.hparams.rollout_model == "reference"
        new_tokens = self.hparams.max_new_tokens
        chosen = module.rollout(clean, batch.questions, new_tokens, use_reference)
        rejected = module.rollout(augmented, batch.questions, new_tokens, use_reference)

        keep = [
            i
            for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))
            if not (self.hparams.drop_identical and c.text == r.text)
        ]
        stats = PairStats(prompts=len(batch), kept=len(keep), identical=len(batch) - len(keep))
        rows = [
            {
                "id": batch.ids[i],
                "image": batch.image_paths[i],
                "prompt": batch.questions[i],
                "chosen": chosen[i].text,
                "rejected": rejected[i].text,
                "augmentation": records[i],
            }
            for i in keep
        ]
        if adapt and self.adaptive_strength is not None:
            self._adapt(stats)
        tokens = module.tokenize_pairs(
            [r["prompt"] for r in rows],
            [r["chosen"] for r in rows],
            [r["rejected"] for r in rows],
            chosen_finished=[chosen[i].finished for i in keep],
            rejected_finished=[rejected[i].finished for i in keep],
        )
        index = torch.tensor(keep, dtype=torch.long, device=clean.device)
        return PreferenceBatch(
            pixel_values=clean.index_select(0, index),
            aug_pixel_values=augmented.index_select(0, index),
            meta=self._meta(stats, rows, strength, skipped),
            **tokens,
        )

    def _meta(
        self, stats: PairStats, rows: list[dict], strength: float | None, skipped: int
    ) -> dict[str, Any]:
        return {"stats": stats, "rows": rows, "augment_strength": strength, "bad_images": skipped}

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
        counts = torch.tensor([stats.prompts, stats.identical], dtype=torch.long)
        if dist.is_available() and dist.is_initialized():
            counts = counts.to(self.trainer.strategy.root_device)
            dist.all_reduce(counts)
        prompts, identical = (int(c) for c in counts.tolist())
        assert self.adaptive_strength is not None
        current = float(self.augmentation.strength)
        self.augmentation.strength = self.adaptive_strength.update(current, prompts, identical)

    def state_dict(self) -> dict[str, Any]:
        # Checkpoints keep the adapted strength so that a resumed run continues where it was.
        if self.adaptive_strength is None:
            return {}
        return {
            "augment_strength": float(self.augmentation.strength),
            "adaptive_strength": self.adaptive_strength.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.adaptive_strength is not None and "augment_strength" in state_dict:
            self.augmentation.strength = state_dict["augment_strength"]
            self.adaptive_strength.load_state_dict(state_dict["adaptive_strength"])


class BadImageSummary(pl.Callback):
    """Logs the datamodule's ``bad_image_summary()`` at the end of each epoch.

    ``AugPairDataModule.setup`` adds one to the trainer; adding it to ``trainer.callbacks``
    yourself works too (it is not added twice). During ``fit``, images skipped by validation
    are reported with the training epoch they belong to. Each rank reports its own files.
    """

    def _report(self, trainer: pl.Trainer, what: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, AugPairDataModule):
            return
        summary = datamodule.bad_image_summary()
        if summary is not None:
            log.warning("%s %d: %s", what, trainer.current_epoch, summary)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "epoch")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":  # during fit, the training epoch's summary has these
            self._report(trainer, "validation epoch")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "test epoch")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "predict epoch")


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
