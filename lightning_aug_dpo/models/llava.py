"""LLaVA-1.5 (``LlavaForConditionalGeneration``) as a SeVa policy.

The only model-specific facts: which class loads it, where its language model lives (LoRA goes
there and nowhere else: CLIP's vision tower also has ``q_proj``/``v_proj``), which modules stay
out of 4-bit quantisation, and how many tokens the ``<image>`` placeholder expands to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.module import AugDPOModule


class LlavaDPOModule(AugDPOModule):
    """SeVa DPO for LLaVA-1.5 checkpoints (``llava-hf/llava-1.5-7b-hf`` or a local copy).

    Takes every argument of :class:`AugDPOModule`. The conversation format is the checkpoint's
    chat template (vicuna-style ``USER: <image>\\n{question} ASSISTANT:`` for LLaVA-1.5).
    """

    # Path prefix of the language model inside LlavaForConditionalGeneration (transformers >= 4.52).
    language_model_prefix = "model.language_model"

    def load_model(self) -> nn.Module:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        # bitsandbytes matches full prefixes; the vision tower and projector stay in full precision.
        return ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

    def lora_target_regex(self) -> str:
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    def _llava(self, model: nn.Module) -> nn.Module:
        """The ``LlavaModel`` inside a (PEFT-wrapped) ``LlavaForConditionalGeneration``."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP features at ``vision_feature_layer`` (CLS dropped for the ``default`` strategy):
        everything before the projector, which SeVa trains and so runs in each forward. The
        tower is frozen and never adapted, so policy and reference share this output."""
        config = self.model.config
        layers = config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        tower = self._llava(self.model).vision_tower
        with torch.no_grad():
            out = tower(pixel_values.to(self.compute_dtype), output_hidden_states=True)
        selected = [out.hidden_states[layer] for layer in layers]
        if config.vision_feature_select_strategy == "default":
            selected = [hidden[:, 1:] for hidden in selected]
        return torch.cat(selected, dim=-1)

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
        image_embeds = self._llava(model).multi_modal_projector(vision_features)
        return self.forward_with_image_embeds(
            input_ids, attention_mask, image_embeds, logits_to_keep, position_ids
        )

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_index)

    def num_image_tokens(self) -> int:
        """Patches per image, plus CLS when the ``full`` feature strategy keeps it."""
        side = self.model_config.vision_config.image_size
        return self.num_image_features((side, side))

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        config = self.model_config
        patch = config.vision_config.patch_size
        patches = (image_shape[0] // patch) * (image_shape[1] // patch)
        return patches + (1 if config.vision_feature_select_strategy == "full" else 0)

    def image_size_problems(self, config: Any) -> list[str]:
        """CLIP's position embeddings fix the input size: the processor must make it."""
        side, made = config.vision_config.image_size, self.image_preprocessor().size
        if made == side:
            return []
        path = self.hparams.model_name_or_path
        # transformers >= 5 keeps the image processor inside processor_config.json
        where = "preprocessor_config.json crop_size"
        if not (Path(path) / "preprocessor_config.json").exists():
            where = "processor_config.json image_processor.crop_size"
        return [
            f"{path}: the image processor makes {made}x{made} inputs ({where}) but the vision "
            f"tower takes {side}x{side} (config.json vision_config.image_size), so image "
            f"features would not match the image tokens. Fix: set that crop_size (and "
            f"size.shortest_edge) to {side}, or use the processor saved with this model"
        ]

    def expand_image_tokens(self, prompt: str) -> str:
        token = self.processor.image_token
        if prompt.count(token) != 1:
            raise ValueError(f"expected one {token!r} in the formatted prompt, got: {prompt!r}")
        return prompt.replace(token, token * self.num_image_tokens())
