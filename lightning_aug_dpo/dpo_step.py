"""``DPOStepMixin``: the DPO step of :class:`AugDPOModule`, top to bottom.

1. encode the images once (``encode_images``: the frozen vision tower), reused by every forward;
2. policy log-probs of chosen and rejected in ONE forward on the clean image (plus the chosen
   answer on the augmented image when the loss has an mDPO-style term): with ``share_prompt``
   (the default) one packed row ``[prompt | chosen | rejected]`` per pair, so the 576 image
   tokens and the question are computed once, not once per answer;
3. reference log-probs, under ``no_grad``: the same base with adapters disabled, or a separate
   frozen model (``reference: separate``); skipped for reference-free losses (SimPO);
4. ``loss = self.loss(...)`` (a :class:`PreferenceLoss`) and the per-pair metric values.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_aug_dpo.losses import (
    concat_prompt_response,
    pack_shared_prompt,
    response_logits_to_keep,
    sequence_logprobs,
    shared_prompt_logprobs,
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

        With ``share_prompt`` the answers on one image share one row ``[prompt | chosen |
        rejected]``, so each prompt is computed once (``losses/shared_prompt.py``); otherwise
        each answer has its own row ``[prompt | answer]``. ``vision_features``: the
        :meth:`encode_images` output of ``cat([clean, augmented])`` (or of the clean images
        alone), reused instead of encoding again.
        """
        n = len(batch)
        chosen = (batch.chosen_input_ids, batch.chosen_attention_mask)
        responses = {
            "chosen": chosen,
            "rejected": (batch.rejected_input_ids, batch.rejected_attention_mask),
            "chosen_aug": chosen,
        }
        images = {"chosen": batch.pixel_values, "rejected": batch.pixel_values}
        images["chosen_aug"] = batch.aug_pixel_values
        features = {}
        if vision_features is not None:
            clean, augmented = vision_features[:n], vision_features[n:]
            features = {"chosen": clean, "rejected": clean, "chosen_aug": augmented}
        # Rows: one per image and pair with every block on that image (shared prompt), or one
        # per block and pair (plain); each row's blocks are its answer slots.
        on_clean = [name for name in blocks if name != "chosen_aug"]
        rows = [on_clean, ["chosen_aug"]] if "chosen_aug" in blocks else [on_clean]
        if not self.hparams.share_prompt:
            rows = [[name] for name in blocks]
        rows = [names for names in rows if names]
        pad = self.tokenizer.pad_token_id
        slots = [  # slot k of every row: its k-th block, or an empty answer
            (
                _stack([responses[names[k]][0] if k < len(names) else None for names in rows], pad),
                _stack([responses[names[k]][1] if k < len(names) else None for names in rows], 0),
            )
            for k in range(max(len(names) for names in rows))
        ]
        score = self._shared_prompt_logps if self.hparams.share_prompt else self._plain_logps
        logps, mean_logits = score(
            batch.prompt_input_ids.repeat(len(rows), 1),
            batch.prompt_attention_mask.repeat(len(rows), 1),
            slots,
            torch.cat([images[names[0]] for names in rows]),
            torch.cat([features[names[0]] for names in rows]) if features else None,
        )
        out = {}
        for i, names in enumerate(rows):
            for k, name in enumerate(names):
                out[name] = logps[i * n : (i + 1) * n, k]
                if name in ("chosen", "rejected"):
                    out[f"{name}_logits"] = mean_logits[i * n : (i + 1) * n, k]
        return out

    def _shared_prompt_logps(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        slots: list[tuple[torch.Tensor, torch.Tensor]],
        images: torch.Tensor,
        features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, K)`` log-probs and mean logits of K answers per row, packed after its prompt."""
        text_config = self.active_model.config.get_text_config()
        attention = getattr(text_config, "_attn_implementation", None) or ""
        if "flash" in attention:  # flash kernels take no (B, 1, L, L) mask: answers would mix
            raise ValueError(
                f"share_prompt needs an attention that takes a 4-D mask (sdpa, eager, flex); "
                f"this model uses {attention!r}. Set model.share_prompt: false, or load it "
                "with attn_implementation='sdpa'"
            )
        packed = pack_shared_prompt(prompt_ids, prompt_mask, slots, self.tokenizer.pad_token_id)
        positions = self.position_ids(packed.input_ids, packed.attention_mask, images)
        positions = positions - packed.position_shift
        logits = self.forward_logits(
            packed.input_ids,
            self.packed_attention_mask(packed, positions),
            images,
            logits_to_keep=packed.logits_to_keep if self.hparams.response_logits_only else 0,
            vision_features=features,
            position_ids=positions,
        )
        return shared_prompt_logprobs(logits, packed)

    def _plain_logps(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        slots: list[tuple[torch.Tensor, torch.Tensor]],
        images: torch.Tensor,
        features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for one answer per row: a plain causal forward of ``[prompt | answer]``."""
        ((answer_ids, answer_mask),) = slots
        input_ids, attention_mask, loss_mask = concat_prompt_response(
            prompt_ids, prompt_mask, answer_ids, answer_mask, self.tokenizer.pad_token_id
        )
        keep = response_logits_to_keep(loss_mask) if self.hparams.response_logits_only else 0
        logits = self.forward_logits(
            input_ids, attention_mask, images, logits_to_keep=keep, vision_features=features
        )
        logps, mean_logits = sequence_logprobs(logits, input_ids, loss_mask)
        return logps[:, None], mean_logits[:, None]

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
        # A trained vision tower (train_vision_tower) must run in each forward, with grad, and
        # differs between policy and reference: its output cannot be shared.
        reuse = self.hparams.reuse_image_features and not self.hparams.train_vision_tower
        features = self.encode_images(images) if reuse else None
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


def _stack(tensors: list[torch.Tensor | None], value: int) -> torch.Tensor:
    """Rows of every tensor, right-padded with ``value`` to the widest; ``None``: an empty
    answer (all ``value``) with the rows of the first tensor."""
    like = next(t for t in tensors if t is not None)
    width = max(t.shape[1] for t in tensors if t is not None)
    filled = [like.new_full(like.shape, value) if t is None else t for t in tensors]
    return torch.cat([nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in filled])
