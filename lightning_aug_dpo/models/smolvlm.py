"""SmolVLM2 and Idefics3 (``SmolVLMForConditionalGeneration``,
``Idefics3ForConditionalGeneration``) as a SeVa policy.

What differs from LLaVA-1.5, and where each difference is handled (hooks of
:class:`~lightning_aug_dpo.module.AugDPOModule`, nothing else in the library knows):

* **Image layout.** The processor normally splits an image into up to ``(size.longest_edge /
  max_image_size.longest_edge)**2`` tiles plus a downscaled global view, each ``image_seq_len``
  tokens with ``<row_r_col_c>`` markers. This module fixes the layout of the processor with
  ``do_image_splitting: false``: ONE square view at the vision tower's ``image_size`` (384 px,
  81 tokens for SmolVLM2-2.2B; 512 px, 64 tokens for SmolVLM2-256M/500M; 364 px, 169 tokens for
  Idefics3-8B), ``(image_size / patch_size)**2 / scale_factor**2`` tokens. The DataModule's
  ``(B, 3, S, S)`` batch becomes the model's ``(B, 1, 3, S, S)`` plus an all-ones
  ``pixel_attention_mask`` in :meth:`vision_inputs`. The processor squashes an image to that
  square with Lanczos (after a longest-edge resize); torch has no Lanczos, so the device
  resize is bicubic (antialiased), within a few grey levels; at the model's own size both leave
  the pixels as they are.
* **Image tokens.** ``<image>`` in the chat template becomes ``<fake_token_around_image>
  <global-img>`` + n x ``<image>`` + ``<fake_token_around_image>``, as the processor writes a
  single image.
* **Prompt format.** ``<|im_start|>User:<image>{question}<end_of_utterance>\\nAssistant:``; the
  answer follows after a space and ends with ``<end_of_utterance>``, made the EOS (the hub's
  SmolVLM2 tokenizers already have it as EOS; Idefics3's has ``<|end_of_text|>``). A BOS that
  the template writes and the tokenizer adds again is written once.
* **Modules.** Text model at ``model.text_model`` (LoRA and 4-bit there only); vision tower at
  ``model.vision_model`` and the pixel-shuffle connector at ``model.connector`` (SeVa's
  projector: ``modules_to_save: [connector]``), kept in full precision. :meth:`encode_images`
  runs the frozen tower once per step; the connector runs in every forward.
* **Processor.** ``SmolVLMProcessor`` needs a video processor (torchvision) and ``num2words``;
  only the tokenizer and the image processor are loaded. The chat template comes from the
  tokenizer, or from the checkpoint's ``chat_template.json`` where the processor keeps it.
* **Attention and positions.** Causal Llama text model: the default hooks apply.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.models.processor_parts import TokenizerAndImageProcessor
from lightning_aug_dpo.module import AugDPOModule

END_OF_UTTERANCE = "<end_of_utterance>"


class SquareResize(ImagePreprocessor):
    """Straight to ``size x size`` (no shortest-edge crop), as SmolVLM's processor without
    image splitting; bicubic, separably with uint8 rounding in between like PIL."""

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        h = image.shape[1]
        pixels = image[None].float()
        for shape in ((h, self.size), (self.size, self.size)):
            if tuple(pixels.shape[-2:]) != shape:
                pixels = F.interpolate(
                    pixels, size=shape, mode="bicubic", antialias=True, align_corners=False
                )
                pixels = pixels.round().clamp(0, 255)
        return pixels[0]


class SmolVLMDPOModule(AugDPOModule):
    """SeVa DPO for SmolVLM2 / Idefics3 checkpoints (``HuggingFaceTB/SmolVLM2-2.2B-Instruct``,
    ``-500M-Video-Instruct``, ``HuggingFaceTB/SmolVLM-Instruct``,
    ``HuggingFaceM4/Idefics3-8B-Llama3`` or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_smolvlm.write_tiny_smolvlm`'s).

    Takes every argument of :class:`AugDPOModule`; the image size is the vision tower's own.
    ``AutoModelForImageTextToText`` picks the class from ``config.json`` (``smolvlm`` or
    ``idefics3``); both lay out their modules alike.
    """

    language_model_prefix = "model.text_model"
    vision_prefixes = ("model.vision_model", "model.connector")

    # ------------------------------------------------------------------ loading
    def load_processor(self) -> TokenizerAndImageProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import cached_file

        path, trust = self.hparams.model_name_or_path, self.hparams.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        if tokenizer.chat_template is None:  # the hub repos keep it beside the processor
            found = cached_file(
                path, "chat_template.json", _raise_exceptions_for_missing_entries=False
            )
            if found is not None:
                with open(found, encoding="utf-8") as f:
                    tokenizer.chat_template = json.load(f)["chat_template"]
        if tokenizer.chat_template is None:
            raise ValueError(
                f"{path}: no chat template (tokenizer_config.json or chat_template.json); add "
                "SmolVLM2-Instruct's chat_template"
            )
        if tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE) in (None, tokenizer.unk_token_id):
            raise ValueError(f"{path}: the tokenizer has no {END_OF_UTTERANCE} token")
        tokenizer.eos_token = END_OF_UTTERANCE  # the end of a turn in this chat format
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust)
        return TokenizerAndImageProcessor(tokenizer, image_processor)

    def quantization_skip_modules(self) -> list[str]:
        return [*self.vision_prefixes, "lm_head"]

    def full_finetune_modules(self) -> list[str]:
        return [self.language_model_prefix, "model.connector", "lm_head"]

    def lora_target_regex(self) -> str:
        # The vision tower's attention also has q_proj/k_proj/v_proj: scope to the text model.
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    # ------------------------------------------------------------------ prompts and tokens
    def _token(self, name: str, default: str) -> str:
        return getattr(self.tokenizer, name, None) or default

    def _template_bos(self) -> str:
        """The BOS text the chat template writes that the tokenizer adds again ("" if none:
        SmolVLM2's template opens with ``<|im_start|>``, which its tokenizer does not add;
        Idefics3's writes ``<|begin_of_text|>``, which the Llama 3 tokenizer adds too)."""
        tok = self.tokenizer
        adds = tok.bos_token_id is not None and tok("").input_ids[:1] == [tok.bos_token_id]
        return tok.bos_token if adds else ""

    def format_prompt(self, question: str) -> str:
        return super().format_prompt(question).removeprefix(self._template_bos())

    def format_conversation(self, turns: Any) -> list[tuple[str, bool]]:
        segments = super().format_conversation(turns)
        first, trained = segments[0]  # as format_prompt: one BOS
        segments[0] = (first.removeprefix(self._template_bos()), trained)
        return segments

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_id)

    @property
    def image_side(self) -> int:
        return int(self.model_config.vision_config.image_size)

    def num_image_tokens(self) -> int:
        return self.num_image_features((self.image_side, self.image_side))

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        vision = self.model_config.vision_config
        scale = int(self.model_config.scale_factor)
        return (
            (image_shape[0] // vision.patch_size)
            * (image_shape[1] // vision.patch_size)
            // (scale * scale)
        )

    def image_size_problems(self, config: Any) -> list[str]:
        """The fixed view is the tower's size; the processor must agree, and the patch grid must
        divide into the connector's pixel-shuffle blocks."""
        vision, scale = config.vision_config, int(config.scale_factor)
        side, path, problems = int(vision.image_size), self.hparams.model_name_or_path, []
        made = (getattr(self.processor.image_processor, "max_image_size", None) or {}).get(
            "longest_edge"
        )
        if made is not None and int(made) != side:
            problems.append(
                f"{path}: the image processor's max_image_size.longest_edge is {made} but the "
                f"vision tower takes {side}x{side} (config.json vision_config.image_size). Fix: "
                f"set max_image_size to {{longest_edge: {side}}}"
            )
        grid = side // vision.patch_size
        if side % vision.patch_size or grid % scale:
            problems.append(
                f"{path}: vision_config.image_size {side} / patch_size {vision.patch_size} is not "
                f"a whole multiple of scale_factor {scale}; the connector cannot pool it"
            )
        return problems

    def expand_image_tokens(self, prompt: str) -> str:
        """``<image>`` -> the processor's single-image string (no splitting)."""
        image = self._token("image_token", "<image>")
        fake = self._token("fake_image_token", "<fake_token_around_image>")
        global_image = self._token("global_image_token", "<global-img>")
        if prompt.count(image) != 1:
            raise ValueError(f"expected one {image!r} in the formatted prompt, got: {prompt!r}")
        tokens = f"{fake}{global_image}{image * self.num_image_tokens()}{fake}"
        return prompt.replace(image, tokens)

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding; no image marker may be generated."""
        kwargs = super().generation_kwargs(max_new_tokens)
        tok = self.tokenizer
        markers = [
            self._token("fake_image_token", "<fake_token_around_image>"),
            self._token("global_image_token", "<global-img>"),
        ]
        ids = [tok.convert_tokens_to_ids(m) for m in markers]
        kwargs["suppress_tokens"] = [self.image_token_id()] + [
            i for i in ids if i is not None and i != tok.unk_token_id
        ]
        return kwargs

    # ------------------------------------------------------------------ images
    def image_preprocessor(self) -> ImagePreprocessor:
        processor = self.processor.image_processor
        return SquareResize(
            self.image_side,
            processor.image_mean,
            processor.image_std,
            pad_to_square=self.hparams.pad_to_square,
        )

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``(B, 3, S, S)`` -> one image per row ``(B, 1, 3, S, S)``, every pixel real."""
        b, _, h, w = pixel_values.shape
        mask = torch.ones((b, 1, h, w), dtype=torch.long, device=pixel_values.device)
        return {
            "pixel_values": pixel_values.to(self.compute_dtype)[:, None],
            "pixel_attention_mask": mask,
        }

    def _smolvlm(self, model: nn.Module) -> nn.Module:
        """The ``SmolVLMModel`` / ``Idefics3Model`` inside a (PEFT-wrapped) model."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower's last hidden state (before the connector, which may train), for
        full images (every patch real). Frozen and never adapted: shared by policy and
        reference."""
        inner = self._smolvlm(self.model)
        b, _, h, w = pixel_values.shape
        patch = self.model_config.vision_config.patch_size
        patches = torch.ones((b, h // patch, w // patch), dtype=torch.bool, device=self.device)
        with torch.no_grad():
            out = inner.vision_model(
                pixel_values=pixel_values.to(self.compute_dtype), patch_attention_mask=patches
            )
        return out.last_hidden_state

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
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        model = self.active_model
        # The active model's connector: the trained copy for the policy, the original with
        # adapters disabled (PEFT's modules_to_save) or in a separate reference.
        image_embeds = self._smolvlm(model).connector(vision_features)
        image_embeds = image_embeds.reshape(-1, image_embeds.shape[-1])
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=image_embeds)},
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits
