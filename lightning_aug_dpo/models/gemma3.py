"""Gemma 3 (``Gemma3ForConditionalGeneration``) as a SeVa policy.

What differs from LLaVA-1.5, and where each difference is handled (hooks of
:class:`~lightning_aug_dpo.module.AugDPOModule`, nothing else in the library knows):

* **Image layout.** SigLIP at one fixed square size (``vision_config.image_size``: 896 px on the
  hub checkpoints), 14 px patches average-pooled 4x4 by the projector into
  ``mm_tokens_per_image`` (256) tokens. Gemma 3's processor can add pan-and-scan crops (each
  another 256 tokens); this module never does (the processor's default, ``do_pan_and_scan:
  false``), so every image is ONE 896 x 896 view. The processor squashes an image to that
  size (no aspect-preserving crop) with bilinear resampling: :meth:`image_preprocessor` does
  the same on the device, after the optional pad-to-square.
* **Image tokens.** ``<start_of_image>`` in the chat template becomes
  ``\\n\\n<start_of_image>`` + 256 x ``<image_soft_token>`` + ``<end_of_image>\\n\\n``, as
  ``Gemma3Processor`` expands it.
* **Attention.** Tokens of one image attend to each other bidirectionally (not causally); the
  model finds them through ``token_type_ids`` (1 on image tokens), built in
  :meth:`vision_inputs`. Five of six layers use a sliding window (1024 tokens). Prefix sharing
  therefore passes per-layer-type masks (:meth:`packed_attention_mask`) that open the image
  blocks and apply the window on plain-row positions, so packed rows stay exact.
* **Prompt format.** ``<start_of_turn>user`` / ``<start_of_turn>model`` turns; the template
  writes ``<bos>`` itself and the tokenizer adds one too, so :meth:`format_prompt` drops the
  template's (one BOS, as ``processor.apply_chat_template(..., tokenize=True)`` gives). The answer
  follows ``model\\n`` without a space and ends with ``<end_of_turn>``: the hub tokenizer's EOS
  is ``<eos>`` (the end of a document), so :meth:`load_processor` makes ``<end_of_turn>`` the
  EOS, which the hub's ``generation_config`` also stops at; SFT then reproduces the template's
  turns token for token.
* **Modules.** Language model at ``model.language_model`` (LoRA and 4-bit there only); vision
  tower at ``model.vision_tower`` and projector at ``model.multi_modal_projector``, kept in full
  precision. :meth:`encode_images` runs the frozen tower once per step; the projector
  (trainable with ``modules_to_save``) runs in every forward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.losses.shared_prompt import PackedRows, additive_mask
from lightning_aug_dpo.module import AugDPOModule


class SquashResize(ImagePreprocessor):
    """Gemma 3's resize: straight to ``size x size`` (no shortest-edge crop), bilinear.

    PIL resamples separably, width first, rounding to uint8 in between; doing the same (with
    torch's antialiased bilinear, PIL's triangle filter) stays within one grey level of
    ``Gemma3ImageProcessorPil``.
    """

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        h = image.shape[1]
        pixels = image[None].float()
        for shape in ((h, self.size), (self.size, self.size)):
            if tuple(pixels.shape[-2:]) != shape:
                pixels = F.interpolate(
                    pixels, size=shape, mode="bilinear", antialias=True, align_corners=False
                )
                pixels = pixels.round().clamp(0, 255)
        return pixels[0]


def image_blocks(is_image: torch.Tensor) -> torch.Tensor:
    """Per token, the index of the run of consecutive image tokens it is in (``-1``: text), as
    transformers' ``get_block_sequence_ids_for_mask``: tokens of one run see each other."""
    previous = F.pad(is_image, (1, 0), value=False)[:, :-1]
    starts = (is_image & ~previous).long().cumsum(-1) - 1
    return torch.where(is_image, starts, -1)


class Gemma3DPOModule(AugDPOModule):
    """SeVa DPO for Gemma 3 vision checkpoints (``google/gemma-3-4b-it``, ``-12b-it``,
    ``-27b-it`` or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_gemma3.write_tiny_gemma3`'s).

    Takes every argument of :class:`AugDPOModule`; the image size is the vision tower's own.
    """

    language_model_prefix = "model.language_model"
    vision_prefixes = ("model.vision_tower", "model.multi_modal_projector")

    # ------------------------------------------------------------------ loading
    def load_processor(self) -> Any:
        processor = super().load_processor()
        tok = processor.tokenizer
        if tok.convert_tokens_to_ids("<end_of_turn>") in (None, tok.unk_token_id):
            raise ValueError(
                f"{self.hparams.model_name_or_path}: the tokenizer has no <end_of_turn> token; "
                "use an instruction-tuned Gemma 3 checkpoint (google/gemma-3-*-it)"
            )
        # The end of an answer in Gemma's chat format (see the module docstring).
        tok.eos_token = "<end_of_turn>"
        return processor

    def load_model(self) -> nn.Module:
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        return [*self.vision_prefixes, "lm_head"]

    def full_finetune_modules(self) -> list[str]:
        # lm_head is tied to the language model's embed_tokens: no parameter of its own.
        return [self.language_model_prefix, "model.multi_modal_projector"]

    def lora_target_regex(self) -> str:
        # SigLIP's attention also has q_proj/k_proj/v_proj: scope to the language model.
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    # ------------------------------------------------------------------ prompts and tokens
    def _template_bos(self) -> str:
        """The BOS text the chat template writes that the tokenizer adds again ("" if none)."""
        tok = self.tokenizer
        adds = tok.bos_token_id is not None and tok("").input_ids[:1] == [tok.bos_token_id]
        return tok.bos_token if adds else ""

    def format_prompt(self, question: str) -> str:
        # The tokenizer adds BOS itself; the template's own would make it two.
        return super().format_prompt(question).removeprefix(self._template_bos())

    def format_conversation(self, turns: Any) -> list[tuple[str, bool]]:
        segments = super().format_conversation(turns)
        first, trained = segments[0]  # as format_prompt: one BOS
        segments[0] = (first.removeprefix(self._template_bos()), trained)
        return segments

    def format_response(self, answer: str) -> str:
        # The answer starts right after "<start_of_turn>model\n".
        return answer

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_id)

    def num_image_tokens(self) -> int:
        return int(self.model_config.mm_tokens_per_image)

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        # The projector pools any patch grid of the tower's fixed size to this many tokens.
        return self.num_image_tokens()

    def image_size_problems(self, config: Any) -> list[str]:
        """SigLIP's position embeddings fix the input size; the processor's token count must
        be the projector's."""
        side, made = config.vision_config.image_size, self.image_preprocessor().size
        path, problems = self.hparams.model_name_or_path, []
        if made != side:
            problems.append(
                f"{path}: the image processor makes {made}x{made} inputs (processor_config.json "
                f"image_processor.size) but the vision tower takes {side}x{side} (config.json "
                f"vision_config.image_size). Fix: set size to {{height: {side}, width: {side}}}"
            )
        seq = getattr(self.processor, "image_seq_length", None)
        if seq is not None and seq != config.mm_tokens_per_image:
            problems.append(
                f"{path}: processor_config.json image_seq_length={seq} but the projector yields "
                f"mm_tokens_per_image={config.mm_tokens_per_image} tokens per image (config.json)."
                f" Fix: set image_seq_length to {config.mm_tokens_per_image}"
            )
        return problems

    def expand_image_tokens(self, prompt: str) -> str:
        """``<start_of_image>`` -> Gemma3Processor's ``full_image_sequence``."""
        tok = self.tokenizer
        boi, eoi, image = tok.boi_token, tok.eoi_token, tok.image_token
        if prompt.count(boi) != 1:
            raise ValueError(f"expected one {boi!r} in the formatted prompt, got: {prompt!r}")
        return prompt.replace(boi, f"\n\n{boi}{image * self.num_image_tokens()}{eoi}\n\n")

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding; no image marker may be generated (a generated
        ``<image_soft_token>`` would be taken for an image slot)."""
        kwargs = super().generation_kwargs(max_new_tokens)
        config = self.model_config
        kwargs["suppress_tokens"] = [
            int(config.image_token_id),
            int(config.boi_token_id),
            int(config.eoi_token_id),
        ]
        return kwargs

    # ------------------------------------------------------------------ images
    def image_preprocessor(self) -> ImagePreprocessor:
        processor = self.processor.image_processor
        size = processor.size
        if size["height"] != size["width"]:
            raise ValueError(f"only square Gemma 3 inputs are supported, got size {dict(size)}")
        return SquashResize(
            int(size["height"]),
            processor.image_mean,
            processor.image_std,
            pad_to_square=self.hparams.pad_to_square,
        )

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The images and ``token_type_ids`` (1 on image tokens: the bidirectional blocks)."""
        return {
            "pixel_values": pixel_values.to(self.compute_dtype),
            "token_type_ids": (input_ids == self.image_token_id()).long(),
        }

    def _gemma(self, model: nn.Module) -> nn.Module:
        """The ``Gemma3Model`` inside a (PEFT-wrapped) ``Gemma3ForConditionalGeneration``."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SigLIP's last hidden state (before the projector, which may train). The tower is
        frozen and never adapted, so policy and reference share this output."""
        tower = self._gemma(self.model).vision_tower
        with torch.no_grad():
            return tower(pixel_values=pixel_values.to(self.compute_dtype)).last_hidden_state

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | dict[str, torch.Tensor],
        pixel_values: torch.Tensor,
        logits_to_keep: int = 0,
        vision_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if vision_features is None:
            return super().forward_logits(
                input_ids, attention_mask, pixel_values, logits_to_keep, position_ids=position_ids
            )
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        model = self.active_model
        # The active model's projector: the trained copy for the policy, the original with
        # adapters disabled (PEFT's modules_to_save) or in a separate reference.
        image_embeds = self._gemma(model).multi_modal_projector(vision_features)
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            token_type_ids=(input_ids == self.image_token_id()).long(),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=image_embeds)},
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits

    def packed_attention_mask(
        self, packed: PackedRows, position_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Masks per layer type, as Gemma 3 builds them for a plain row (a 4-D mask given to
        transformers is used as-is, so both rules must be in it):

        * global layers: the block mask OR "same image" (an image's tokens see each other);
        * sliding layers: that AND ``q - k < sliding_window``, measured in plain-row positions
          (``position_ids``), not in the packed row's indices.
        """
        allowed = packed.visible()  # (R, L, L)
        blocks = image_blocks(packed.input_ids == self.image_token_id())
        allowed |= (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
        text_config = self.model_config.get_text_config()
        rules = {"full_attention": allowed}
        if text_config.sliding_window is not None:
            positions = position_ids.int()  # (R, L, L) differences: int32 halves the memory
            distance = positions[:, :, None] - positions[:, None, :]
            rules["sliding_attention"] = allowed & (distance < text_config.sliding_window)
        layer_types: Sequence[str] = text_config.layer_types
        return {kind: additive_mask(rules[kind], self.compute_dtype) for kind in set(layer_types)}
