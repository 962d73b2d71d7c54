"""LLaVA-1.5 (``LlavaForConditionalGeneration``) as a SeVa policy.

The only model-specific facts: which class loads it, where its language model lives (LoRA goes
there and nowhere else: CLIP's vision tower also has ``q_proj``/``v_proj``), which modules stay
out of 4-bit quantisation, and how many tokens the ``<image>`` placeholder expands to.
"""

from __future__ import annotations

import re

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

    def image_token_id(self) -> int:
        return int(self.model.config.image_token_index)

    def num_image_tokens(self) -> int:
        """Patches per image, plus CLS when the ``full`` feature strategy keeps it."""
        config = self.model.config
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if config.vision_feature_select_strategy == "full" else 0)

    def expand_image_tokens(self, prompt: str) -> str:
        token = self.processor.image_token
        if prompt.count(token) != 1:
            raise ValueError(f"expected one {token!r} in the formatted prompt, got: {prompt!r}")
        return prompt.replace(token, token * self.num_image_tokens())
