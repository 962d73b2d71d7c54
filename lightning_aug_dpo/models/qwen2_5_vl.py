"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) as a SeVa policy.

Qwen2.5-VL keeps Qwen2-VL's interface to the language model exactly, so this module is
:class:`~lightning_aug_dpo.models.qwen2_vl.Qwen2VLDPOModule` with the model class swapped. What
is the same, and why no other hook changes:

* **Vision input.** The same image processor (``Qwen2VLImageProcessor``: 14 px patches, 2x2 merge,
  2 temporal frames, CLIP mean/std on the hub), so the same patch layout from ``vision_inputs``
  and the same ``image_grid_thw``. Fixed layout: one square ``image_size`` (a multiple of 28 px,
  default 448), ``(image_size / 28)**2`` image tokens (448 px: 256).
* **Positions.** M-RoPE from the model's ``get_rope_index`` with ``mm_token_type_ids`` (same
  signature; its time scaling ``tokens_per_second`` applies to videos only), so prefix sharing's
  ``position_ids`` hook is inherited as is.
* **Prompt format, tokens, modules.** The same ChatML template and vision markers, the language
  model at ``model.language_model`` and the vision tower with its merger at ``model.visual``.

What differs from Qwen2-VL lives inside the vision tower, which this project keeps frozen and out
of 4-bit: windowed attention (``window_size`` 112 px, full attention in
``fullatt_block_indexes``), RMSNorm and a SwiGLU MLP whose Linear layers are called
``gate_proj``/``up_proj``/``down_proj``, the language model's LoRA target names. The inherited
:meth:`lora_target_regex` scopes LoRA to ``model.language_model``, so these stay untouched
(tested). From LLaVA-1.5 it differs as Qwen2-VL does (docs/families.md).

With ``reuse_image_features`` (the default) the frozen vision blocks run once per DPO step and
the merger in every forward (``models/qwen_image_reuse.py``); the tower's window reordering
is its own code's, so nothing here knows about windows.
"""

from __future__ import annotations

from torch import nn

from lightning_aug_dpo.models.qwen2_vl import Qwen2VLDPOModule
from lightning_aug_dpo.models.qwen_image_reuse import QwenImageReuseMixin


class Qwen2_5_VLDPOModule(QwenImageReuseMixin, Qwen2VLDPOModule):
    """SeVa DPO for Qwen2.5-VL checkpoints (``Qwen/Qwen2.5-VL-3B-Instruct``, ``-7B-Instruct``,
    ``-32B-Instruct`` or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_qwen2_5_vl.write_tiny_qwen2_5_vl`'s).

    Args:
        model_name_or_path: checkpoint directory or hub id.
        image_size: side of the square model input in pixels, a multiple of 28
            (``patch_size * merge_size``), giving ``(image_size / 28)**2`` image tokens;
            ``None``: the largest multiple of 28 the checkpoint's ``max_pixels`` allows, at
            most 448 (256 tokens).
        **kwargs: every other argument of :class:`~lightning_aug_dpo.module.AugDPOModule`.
    """

    def load_model(self) -> nn.Module:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )
