"""``PairMakingMixin``: how :class:`AugPairDataModule` turns a batch into a ``PreferenceBatch``,
after transfer, on the device (``on_after_batch_transfer``).

From prompts (``make_pairs``): preprocess with the model's settings, augment a copy from
per-sample seeds (recorded for replay), roll out the clean and the augmented image in ONE
``generate`` call, filter the pairs (identical first), tokenise and refuse sequences that cannot
be trained on (``on_bad_pair``). From a pairs file (``pairs_from_file``): replay the recorded
augmentations and tokenise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from lightning_aug_dpo.augment import replay
from lightning_aug_dpo.data.pairs import PairBatch
from lightning_aug_dpo.data.rollouts import pair_id, roll_out, select_pairs
from lightning_aug_dpo.types import PairStats, PreferenceBatch, PromptBatch
from lightning_aug_dpo.validation import (
    IMAGE_TOKEN_MISMATCH,
    PROMPT_TOO_LONG,
    sequence_problems,
)

log = logging.getLogger(__name__)

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


class PairMakingMixin:
    """Pair making of :class:`~lightning_aug_dpo.data.datamodule.AugPairDataModule`."""

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
        self._tally_batch(stats, skipped)
        return {
            "stats": stats,
            "rows": rows,
            "augment_strength": strength,
            "bad_images": skipped,
            "prompt_ids": list(prompt_ids or []),
        }
