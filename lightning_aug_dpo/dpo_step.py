"""``DPOStepMixin``: the DPO step of :class:`AugDPOModule`, top to bottom.

1. encode the images once (``encode_images``: the frozen vision tower), reused by every forward;
2. policy log-probs of chosen and rejected, concatenated in ONE forward on the clean image (plus
   the chosen answer on the augmented image when the loss has an mDPO-style term);
3. reference log-probs, under ``no_grad``: the same base with adapters disabled, or a separate
   frozen model (``reference: separate``); skipped for reference-free losses (SimPO);
4. ``loss = self.loss(...)`` (a :class:`PreferenceLoss`) and the per-pair metric values.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_aug_dpo.losses import (
    concat_prompt_response,
    response_logits_to_keep,
    sequence_logprobs,
)
from lightning_aug_dpo.metrics import preference_values
from lightning_aug_dpo.types import PreferenceBatch


class DPOStepMixin:
    """Sequence log-probs and the preference loss of one :class:`PreferenceBatch`."""

    def sequence_logps(
        self,
        batch: PreferenceBatch,
        blocks: tuple[str, ...] = ("chosen", "rejected"),
        vision_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Response log-probs (summed) of the active model for the ``blocks`` asked for, all
        rows in ONE forward: ``chosen`` and ``rejected`` on the clean image, ``chosen_aug`` the
        chosen answer on the augmented image (mDPO's conditional term); plus the mean logits of
        the chosen and rejected rows (``chosen_logits``, ``rejected_logits``).

        ``vision_features``: the :meth:`encode_images` output of ``cat([clean, augmented])``
        (or of the clean images alone), reused instead of encoding again.
        """
        pad, n = self.tokenizer.pad_token_id, len(batch)
        responses = {
            "chosen": (batch.chosen_input_ids, batch.chosen_attention_mask),
            "rejected": (batch.rejected_input_ids, batch.rejected_attention_mask),
            "chosen_aug": (batch.chosen_input_ids, batch.chosen_attention_mask),
        }
        images = {"chosen": batch.pixel_values, "rejected": batch.pixel_values}
        images["chosen_aug"] = batch.aug_pixel_values
        features = {}
        if vision_features is not None:
            clean, augmented = vision_features[:n], vision_features[n:]
            features = {"chosen": clean, "rejected": clean, "chosen_aug": augmented}
        width = max(responses[name][0].shape[1] for name in blocks)

        def widen(t: torch.Tensor, value: int) -> torch.Tensor:
            return nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        input_ids, attention_mask, loss_mask = concat_prompt_response(
            batch.prompt_input_ids.repeat(len(blocks), 1),
            batch.prompt_attention_mask.repeat(len(blocks), 1),
            torch.cat([widen(responses[name][0], pad) for name in blocks]),
            torch.cat([widen(responses[name][1], 0) for name in blocks]),
            pad_id=pad,
        )
        keep = response_logits_to_keep(loss_mask) if self.hparams.response_logits_only else 0
        logits = self.forward_logits(
            input_ids,
            attention_mask,
            torch.cat([images[name] for name in blocks]),
            logits_to_keep=keep,
            vision_features=torch.cat([features[name] for name in blocks]) if features else None,
        )
        logps, mean_logits = sequence_logprobs(logits, input_ids, loss_mask)
        out = {}
        for i, name in enumerate(blocks):
            out[name] = logps[i * n : (i + 1) * n]
            if name in ("chosen", "rejected"):
                out[f"{name}_logits"] = mean_logits[i * n : (i + 1) * n]
        return out

    def preference_step(
        self, batch: PreferenceBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and per-pair metric values of one batch (steps 2-5 of the module docstring)."""
        loss = self.loss
        with_augmented = loss.needs_augmented
        if with_augmented and batch.aug_pixel_values is None:
            raise ValueError(
                f"{type(loss).__name__} scores the chosen answer on the augmented image, but "
                "this batch has none: pairs files without augmentation records (SeVa, TRL) "
                "cannot replay it; use this project's pairs files or roll out online"
            )
        images = batch.pixel_values
        if with_augmented:
            images = torch.cat([images, batch.aug_pixel_values])
        features = self.encode_images(images) if self.hparams.reuse_image_features else None
        augmented = ("chosen_aug",) if with_augmented else ()
        policy = self.sequence_logps(batch, ("chosen", "rejected", *augmented), features)
        reference: dict[str, torch.Tensor] = {}
        if loss.needs_reference:
            blocks = ("chosen", "rejected")
            if batch.reference_chosen_logps is not None and self.wants_rollout_logps:
                # the reference rollout scored the chosen answers already (same tokens)
                blocks = ("rejected",)
                reference["chosen"] = batch.reference_chosen_logps
            if "reference_chosen_aug_logps" in loss.needs:
                blocks += ("chosen_aug",)
            with torch.no_grad(), self.reference_context():
                reference |= self.sequence_logps(batch, blocks, features)
        chosen_lengths = batch.chosen_attention_mask.sum(-1)
        rejected_lengths = batch.rejected_attention_mask.sum(-1)
        out = loss(
            policy["chosen"],
            policy["rejected"],
            reference.get("chosen"),
            reference.get("rejected"),
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            policy_chosen_aug_logps=policy.get("chosen_aug"),
            reference_chosen_aug_logps=reference.get("chosen_aug"),
        )
        values = preference_values(
            out,
            policy["chosen"],
            policy["rejected"],
            policy["chosen_logits"],
            policy["rejected_logits"],
            chosen_lengths,
            rejected_lengths,
        )
        return out.loss, values
