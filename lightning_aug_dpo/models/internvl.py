"""InternVL 3 (transformers-native ``InternVLForConditionalGeneration``) as a SeVa policy.

What differs from LLaVA-1.5, and where each difference is handled (hooks of
:class:`~lightning_aug_dpo.module.AugDPOModule`; nothing else in the library knows):

* **Dynamic tiles.** InternVL's processor (GOT-OCR2 image processor, ``crop_to_patches``) cuts
  an image into up to ``max_patches`` 448 px tiles whose grid matches its aspect ratio, plus a
  thumbnail. This module fixes ONE tile: every image is padded to square (with
  ``pad_to_square``) and resized to the vision tower's ``image_size`` (448), the layout the
  processor itself picks for a 448 px square (the 1 x 1 grid, no thumbnail), with
  ``crop_to_patches`` on or off. ``pixel_values`` is then the ``(B, 3, 448, 448)`` batch as it
  is, so :meth:`vision_inputs` needs no conversion.
* **Image tokens.** Pixel shuffle (``downsample_ratio`` 0.5) merges 2 x 2 patches of 14 px:
  ``(448 / 14 / 2)**2`` = 256 ``<IMG_CONTEXT>`` tokens per tile, between ``<img>`` and
  ``</img>`` (258 tokens in all). The chat template writes ``<IMG_CONTEXT>`` once for an image;
  :meth:`expand_image_tokens` expands it as ``InternVLProcessor`` does.
* **Projector.** The vision tower's features (CLS dropped), pixel-shuffled by the model's own
  ``pixel_shuffle``, go through a LayerNorm + MLP projector: :meth:`encode_images` computes
  everything before the projector once per step (``reuse_image_features``), the projector runs
  per forward (SeVa trains it: ``modules_to_save: [multi_modal_projector]``).
* **Prompt format.** ChatML without a system prompt (the -hf conversions' template): the answer
  follows ``<|im_start|>assistant\\n`` without a space and ends with ``<|im_end|>``.
* **Modules.** The language model (Qwen2.5 for InternVL3-8B) at ``model.language_model``: LoRA
  there only (the vision tower has ``q_proj``/``k_proj``/``v_proj`` too), the vision tower and
  the projector kept out of 4-bit.
* **Processor.** Only the tokenizer (chat template, image tokens) and the image processor are
  needed; ``InternVLProcessor`` also builds a video processor that needs torchvision, so the
  two are loaded on their own.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.models.processor_parts import TokenizerAndImageProcessor
from lightning_aug_dpo.module import AugDPOModule


class InternVLDPOModule(AugDPOModule):
    """SeVa DPO for transformers-native InternVL checkpoints (``OpenGVLab/InternVL3-8B-hf``,
    ``-1B-hf``, ``-2B-hf``, ... or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_internvl.write_tiny_internvl`'s).

    Takes every argument of :class:`AugDPOModule`; the input side is the vision tower's
    ``image_size`` (one tile, module docstring). The original remote-code ``OpenGVLab/InternVL3-8B``
    repos are not this class: use their ``-hf`` conversions.
    """

    # Path prefixes inside InternVLForConditionalGeneration (transformers >= 4.52).
    language_model_prefix = "model.language_model"

    # ------------------------------------------------------------------ loading
    def load_processor(self) -> TokenizerAndImageProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        path, trust = self.hparams.model_name_or_path, self.hparams.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        if tokenizer.chat_template is None or not hasattr(tokenizer, "context_image_token"):
            raise ValueError(
                f"{path}: the tokenizer lacks InternVL's chat template or its image tokens "
                "(context_image_token, start_image_token, end_image_token in "
                "tokenizer_config.json extra_special_tokens); use an InternVL -hf checkpoint"
            )
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust)
        return TokenizerAndImageProcessor(tokenizer, image_processor)

    def load_model(self) -> nn.Module:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        # bitsandbytes matches full prefixes; the vision tower and projector stay unquantised.
        return ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

    def lora_target_regex(self) -> str:
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    # ------------------------------------------------------------------ prompts and tokens
    def format_response(self, answer: str) -> str:
        # ChatML: the answer starts right after "<|im_start|>assistant\n".
        return answer

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_id)

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding; no image marker may be generated (a generated ``<IMG_CONTEXT>``
        would be taken for an image slot)."""
        kwargs = super().generation_kwargs(max_new_tokens)
        tok = self.tokenizer
        kwargs["suppress_tokens"] = [
            self.image_token_id(),
            int(tok.start_image_token_id),
            int(tok.end_image_token_id),
            int(tok.convert_tokens_to_ids(tok.video_token)),
        ]
        return kwargs

    @property
    def tile_side(self) -> int:
        """The input side: the vision tower's ``image_size`` (its position embeddings)."""
        return int(self.model_config.vision_config.image_size[0])

    def num_image_tokens(self) -> int:
        return self.num_image_features((self.tile_side, self.tile_side))

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        """``<IMG_CONTEXT>`` tokens of one tile: patches, fewer by ``downsample_ratio**2``."""
        config = self.model_config
        patch = int(config.vision_config.patch_size[0])
        merge = round(1 / config.downsample_ratio)
        return (image_shape[0] // patch // merge) * (image_shape[1] // patch // merge)

    def image_size_problems(self, config: Any) -> list[str]:
        """The image processor must make one tile of the vision tower's size, and that tile
        must hold whole pixel-shuffle groups of patches."""
        vision = config.vision_config
        side, patch = int(vision.image_size[0]), int(vision.patch_size[0])
        made = self.image_preprocessor().size
        path = self.hparams.model_name_or_path
        problems = []
        if made != side:
            problems.append(
                f"{path}: the image processor makes {made}x{made} tiles "
                f"(preprocessor_config.json size) but the vision tower takes {side}x{side} "
                f"(config.json vision_config.image_size). Fix: set size to "
                f'{{"height": {side}, "width": {side}}}, or use the processor saved with this model'
            )
        merge = round(1 / config.downsample_ratio)
        if side % (patch * merge):
            problems.append(
                f"{path}: config.json vision_config.image_size {side} is not a multiple of "
                f"patch_size x 1/downsample_ratio = {patch * merge}: pixel shuffle needs whole "
                f"groups. Fix: use an image_size that is a multiple of {patch * merge}"
            )
        return problems

    def expand_image_tokens(self, prompt: str) -> str:
        """``<IMG_CONTEXT>`` -> ``<img>`` + the tile's ``<IMG_CONTEXT>`` tokens + ``</img>``."""
        tok = self.tokenizer
        token = tok.context_image_token
        if prompt.count(token) != 1:
            raise ValueError(f"expected one {token!r} in the formatted prompt, got: {prompt!r}")
        image = tok.start_image_token + token * self.num_image_tokens() + tok.end_image_token
        return prompt.replace(token, image)

    # ------------------------------------------------------------------ images
    def _internvl(self, model: nn.Module) -> nn.Module:
        """The ``InternVLModel`` inside a (PEFT-wrapped) ``InternVLForConditionalGeneration``."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision features at ``vision_feature_layer`` (CLS dropped), pixel-shuffled:
        ``(B, tokens, D / downsample_ratio**2)``, everything before the projector. The tower is
        frozen and never adapted, so policy and reference share this output."""
        config = self.model.config
        inner = self._internvl(self.model)
        with torch.no_grad():
            out = inner.vision_tower(
                pixel_values=pixel_values.to(self.compute_dtype), output_hidden_states=True
            )
            layer = config.vision_feature_layer
            hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            if config.vision_feature_select_strategy == "default":
                hidden = hidden[:, 1:]
            b, n, d = hidden.shape
            side = int(n**0.5)
            grid = hidden.reshape(b, side, side, d)
            shuffled = inner.pixel_shuffle(grid, scale_factor=config.downsample_ratio)
        return shuffled.reshape(b, -1, shuffled.shape[-1])

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        logits_to_keep: int = 0,
        vision_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if vision_features is None:
            return super().forward_logits(
                input_ids, attention_mask, pixel_values, logits_to_keep, position_ids=position_ids
            )
        model = self.active_model
        # The active model's projector: the trained copy for the policy, the original with
        # adapters disabled (PEFT's modules_to_save) or in a separate reference.
        image_embeds = self._internvl(model).multi_modal_projector(vision_features)
        return self.forward_with_image_embeds(
            input_ids, attention_mask, image_embeds, logits_to_keep, position_ids
        )
