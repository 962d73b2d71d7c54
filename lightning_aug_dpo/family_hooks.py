"""``FamilyHooks``: what a VLM family overrides (the half of :class:`AugDPOModule` that is
model-specific: loading, prompt format, image tokens, vision inputs, the forward). Defaults fit the
Hugging Face image-text-to-text layout; ``models/llava.py`` and ``models/qwen2_vl.py`` override
what their family needs, and nothing else in the library special-cases a family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_aug_dpo.augment import ImagePreprocessor

if TYPE_CHECKING:
    from lightning_aug_dpo.losses.shared_prompt import PackedRows


class FamilyHooks:
    """The model-specific hooks of :class:`~lightning_aug_dpo.module.AugDPOModule`."""

    def load_processor(self) -> Any:
        """Processor (tokenizer + image processor) of the checkpoint."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(
            self.hparams.model_name_or_path, trust_remote_code=self.hparams.trust_remote_code
        )

    def load_config(self) -> Any:
        """The checkpoint's ``PretrainedConfig`` (``config.json``), read before any weights."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            self.hparams.model_name_or_path, trust_remote_code=self.hparams.trust_remote_code
        )

    def empty_model(self, config: Any) -> nn.Module:
        """The model class built from ``config`` on the ``meta`` device: module names and
        shapes without memory or weights (checks LoRA targets before anything loads)."""
        from transformers import AutoModelForImageTextToText

        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(
                config, trust_remote_code=self.hparams.trust_remote_code
            )

    def load_model(self) -> nn.Module:
        """The base model, frozen, optionally 4-bit. Override for other auto classes."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        """Full module-path prefixes kept out of 4-bit quantisation."""
        return ["lm_head"]

    def lora_target_regex(self) -> str:
        """PEFT ``target_modules`` regex (full match on module paths)."""
        return r".*\.(" + "|".join(self.lora_target_modules) + r")"

    def format_prompt(self, question: str) -> str:
        """Prompt text with one image placeholder, ready for the assistant's answer."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def format_response(self, answer: str) -> str:
        """Text appended to the prompt for an answer (the EOS id is added after it)."""
        return " " + answer

    def expand_image_tokens(self, prompt: str) -> str:
        """Replace the image placeholder by as many tokens as the vision tower yields."""
        return prompt

    def image_preprocessor(self) -> ImagePreprocessor:
        return ImagePreprocessor.from_image_processor(
            self.processor.image_processor, pad_to_square=self.hparams.pad_to_square
        )

    def image_token_id(self) -> int | None:
        return None

    def num_image_tokens(self) -> int | None:
        """Image tokens one placeholder expands to (``None``: the family does not say)."""
        return None

    def num_image_features(self, image_shape: tuple[int, int]) -> int | None:
        """Features the vision tower yields for one ``(H, W)`` model input; a sequence must
        hold exactly this many image tokens (``None``: not checked)."""
        return None

    def image_size_problems(self, config: Any) -> list[str]:
        """Ways the image input size disagrees with the model, each naming the key and the
        fix (checked before any weights load; ``config`` is the checkpoint's config)."""
        return []

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding, as SeVa's rollouts; the image token may never be generated."""
        tok = self.tokenizer
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if self.image_token_id() is not None:
            kwargs["suppress_tokens"] = [self.image_token_id()]
        return kwargs

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Model keyword arguments that carry the images into ``forward`` and ``generate``.

        ``pixel_values`` is what :meth:`preprocess_images` made (normalised ``(B, 3, H, W)``, the
        form augmentations work on), one image per row of ``input_ids`` (the prompt ids with the
        image tokens expanded). The default passes the batch as it is. Families whose vision
        input is not such a batch (flattened patches plus a patch grid, per-token modality ids
        for multimodal positions, ...) convert here, so that the DataModule, the augmentations
        and the DPO step stay family-agnostic.
        """
        return {"pixel_values": pixel_values.to(self.compute_dtype)}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """Frozen vision-tower output for ``pixel_values``, computed once per step and handed
        to every :meth:`forward_logits` of the step; ``None`` (this default) when the family
        does not split its vision tower out, and each forward encodes its own images."""
        return None

    def position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """The positions the model itself gives the real tokens of right-padded rows
        ``[prompt | text]`` (``attention_mask``: 1 on real tokens), shape ``(..., B, L)``.

        Prefix sharing (``share_prompt``) takes them for a packed row and shifts each
        response's back to where it starts in its plain row, so the rule must number text after
        the prompt consecutively. Default: ``0, 1, 2, ...`` (1-D RoPE, learned positions);
        families with multimodal positions (Qwen2-VL's M-RoPE) override.
        """
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def packed_attention_mask(
        self, packed: PackedRows, position_ids: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The ``attention_mask`` a packed row ``[prompt | response 1 | ...]`` is scored with
        (prefix sharing); ``position_ids`` are the positions the model gets (each response's
        as in its plain row). It must let every token see what it sees in its plain row.

        Default: :meth:`PackedRows.attention_bias`, the causal block mask ``(R, 1, L, L)``.
        Override where the model's own mask over a plain row is not causal, since
        transformers uses a 4-D mask as given: image tokens that attend to each other
        bidirectionally, sliding-window layers (then return ``{layer_type: mask}``, the mask
        mapping transformers' hybrid models accept in place of one mask).
        """
        return packed.attention_bias(self.compute_dtype)

    def forward_with_image_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        logits_to_keep: int = 0,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the active model with ``image_embeds`` (projected image features, one
        row per image token of the batch in order; any leading shape) in place of the image
        tokens' embeddings. The forward of families whose :meth:`forward_logits` runs the
        active projector on reused :meth:`encode_images` features."""
        model = self.active_model
        embeds = model.get_input_embeddings()(input_ids)
        image_embeds = image_embeds.reshape(-1, embeds.shape[-1])
        is_image = input_ids == self.image_token_id()
        if int(is_image.sum()) != len(image_embeds):
            raise ValueError(
                f"{int(is_image.sum())} image tokens in the batch but "
                f"{len(image_embeds)} image features"
            )
        is_image = is_image.unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(is_image, image_embeds.to(embeds.dtype))
        return model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        logits_to_keep: int = 0,
        vision_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the active model (policy, or the reference inside ``reference_context``)
        for the last ``logits_to_keep`` positions (0: all). ``vision_features`` is what
        :meth:`encode_images` returned for these rows' images, when it returned something.
        ``attention_mask`` is the 2-D padding mask, or with ``position_ids`` (from
        :meth:`position_ids`) a packed row's mask from :meth:`packed_attention_mask`."""
        positions = {} if position_ids is None else {"position_ids": position_ids}
        return self.active_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=logits_to_keep,
            **positions,
            **self.vision_inputs(pixel_values, input_ids),
        ).logits
