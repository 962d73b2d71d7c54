"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) as a SeVa policy.

Qwen3-VL keeps Qwen2-VL's interface to its inputs (flattened patches + ``image_grid_thw``, the
``<|image_pad|>`` placeholder, ``mm_token_type_ids`` and ``get_rope_index`` with the same
signature), so this module is :class:`~lightning_aug_dpo.models.qwen2_vl.Qwen2VLDPOModule` with
what differs:

* **Patch size.** 16 px patches (Qwen2-VL: 14), read from the checkpoint's image processor, so
  the fixed square ``image_size`` is a multiple of 32 px and gives ``(image_size / 32)**2`` image
  tokens: 448 px (the default) = 196 tokens, 512 px = 256. Mean and std are 0.5 (not CLIP's);
  both come from the image processor too, nothing here hard-codes them.
* **Positions.** Interleaved M-RoPE inside the text model; the ids come from the model's own
  ``get_rope_index`` exactly as for Qwen2-VL (:meth:`position_ids` is inherited), and the text
  model takes the ``(3, B, L)`` ids unchanged, so prefix sharing is exact (tested).
* **DeepStack.** Features of some vision blocks, through their own mergers
  (``model.visual.deepstack_merger_list``), are added to the image tokens' hidden states in the
  first language-model layers. They are projector weights: trained with ``finetune: full``
  (:meth:`full_finetune_modules`), kept out of 4-bit with the rest of ``model.visual``, and run
  in every forward with ``reuse_image_features`` (:meth:`vision_mergers`), like the merger.
* **Prompt format.** The chat template has no default system prompt; answers are ChatML as for
  Qwen2-VL (no space after ``assistant\\n``, ``<|im_end|>`` as EOS).
* **Vision Linear names.** ``qkv``/``proj``/``linear_fc1``/``linear_fc2``: not the language
  model's, but LoRA is scoped to ``model.language_model`` anyway (inherited regex).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.models.qwen2_vl import Qwen2VLDPOModule
from lightning_aug_dpo.models.qwen_image_reuse import QwenImageReuseMixin


class Qwen3VLDPOModule(QwenImageReuseMixin, Qwen2VLDPOModule):
    """SeVa DPO for Qwen3-VL checkpoints (``Qwen/Qwen3-VL-2B-Instruct``, ``-4B-Instruct``,
    ``-8B-Instruct``, ``-32B-Instruct`` or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_qwen3_vl.write_tiny_qwen3_vl`'s).

    Args:
        model_name_or_path: checkpoint directory or hub id.
        image_size: side of the square model input in pixels, a multiple of 32
            (``patch_size * merge_size``), giving ``(image_size / 32)**2`` image tokens;
            ``None``: the largest multiple of 32 the checkpoint's ``max_pixels`` allows, at
            most 448 (196 tokens).
        **kwargs: every other argument of :class:`~lightning_aug_dpo.module.AugDPOModule`.
    """

    def load_model(self) -> nn.Module:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def full_finetune_modules(self) -> list[str]:
        # Both projections into the language model: the merger and the DeepStack mergers.
        visual = self.vision_prefix
        return [*super().full_finetune_modules(), f"{visual}.deepstack_merger_list"]

    def vision_mergers(self, visual: nn.Module) -> list[nn.Module]:
        # DeepStack: one merger per tapped block, after the final merger.
        return [visual.merger, *visual.deepstack_merger_list]

    def image_encoder_output(self, merged: list[tuple[torch.Tensor, ...]]) -> Any:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures,
        )

        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=merged[0], deepstack_features=list(merged[1:])
        )
