"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) as a SeVa policy: the second model family.

What differs from LLaVA-1.5, and where each difference is handled (hooks of
:class:`~lightning_aug_dpo.module.AugDPOModule`, nothing else in the library knows):

* **Vision input.** Qwen2-VL takes flattened 14 px patches (each repeated over a temporal patch
  of 2 frames) plus ``image_grid_thw``, at any resolution. The DataModule and the augmentations
  work on normalised ``(B, 3, H, W)`` batches, so this module fixes ONE square resolution
  (``image_size``, a multiple of 28 px): :meth:`image_preprocessor` pads to square and resizes to
  it, and :meth:`vision_inputs` cuts the batch into the model's patch layout, exactly as
  Qwen2-VL's own image processor does for an image of that size.
* **Positions.** M-RoPE gives image tokens 2-D positions; the model finds them through
  ``mm_token_type_ids`` (1 on image tokens), also built in :meth:`vision_inputs`. For prefix
  sharing, :meth:`position_ids` asks the model's own ``get_rope_index`` for a packed row's
  ``(3, B, L)`` ids (text after the image is numbered on consecutively, as the hook requires).
* **Image tokens.** ``<|image_pad|>`` expands to ``(image_size / 28)**2`` tokens (one per 2x2 group
  of patches), between ``<|vision_start|>`` and ``<|vision_end|>``.
* **Prompt format.** ChatML: no BOS, the answer follows ``<|im_start|>assistant\\n`` without a
  space, and ``<|im_end|>`` is the EOS appended to finished answers.
* **Modules.** The language model lives at ``model.language_model`` (LoRA there only); the vision
  tower with its patch merger at ``model.visual`` (kept out of 4-bit quantisation).
* **Processor.** Only the tokenizer (with the chat template) and the image processor's settings
  are needed. ``Qwen2VLProcessor`` would also build a video processor, which needs torchvision,
  so the two are loaded on their own (:class:`TokenizerAndImageProcessor`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.models.processor_parts import TokenizerAndImageProcessor
from lightning_aug_dpo.module import AugDPOModule

#: Resolution used when neither ``image_size`` nor the checkpoint pins one: 16x16 merged tokens.
DEFAULT_IMAGE_SIZE = 448


class Qwen2VLDPOModule(AugDPOModule):
    """SeVa DPO for Qwen2-VL checkpoints (``Qwen/Qwen2-VL-2B-Instruct``, ``-7B-Instruct`` or a
    local copy such as :func:`~lightning_aug_dpo.models.tiny_qwen2_vl.write_tiny_qwen2_vl`'s).

    Args:
        model_name_or_path: checkpoint directory or hub id.
        image_size: side of the square model input in pixels, a multiple of
            ``patch_size * merge_size`` (28): every image is padded to square (with
            ``pad_to_square``) and resized to it, giving ``(image_size / 28)**2`` image tokens.
            ``None``: the largest multiple of 28 that the checkpoint's ``max_pixels`` allows, at
            most 448 (256 tokens).
        **kwargs: every other argument of :class:`AugDPOModule`.
    """

    # Path prefixes inside Qwen2VLForConditionalGeneration (transformers >= 4.52).
    language_model_prefix = "model.language_model"
    vision_prefix = "model.visual"

    def __init__(
        self, model_name_or_path: str, image_size: int | None = None, **kwargs: Any
    ) -> None:
        # AugDPOModule's save_hyperparameters() reads the arguments of every __init__ frame of
        # the instance, so image_size lands in self.hparams (and in checkpoints) as well.
        super().__init__(model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ loading
    def load_processor(self) -> TokenizerAndImageProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        path, trust = self.hparams.model_name_or_path, self.hparams.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        if tokenizer.chat_template is None:
            raise ValueError(
                f"{path}: the tokenizer has no chat template; add Qwen2-VL-Instruct's "
                "chat_template to tokenizer_config.json (or a chat_template.jinja file)"
            )
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust)
        return TokenizerAndImageProcessor(tokenizer, image_processor)

    def load_model(self) -> nn.Module:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        # bitsandbytes matches full prefixes: the vision tower and its merger stay unquantised.
        return [self.vision_prefix, "lm_head"]

    def full_finetune_modules(self) -> list[str]:
        # The projector of Qwen2-VL is the patch merger at the top of the vision tower.
        return [self.language_model_prefix, f"{self.vision_prefix}.merger", "lm_head"]

    def lora_target_regex(self) -> str:
        # The vision blocks' Linear layers are named qkv/proj/fc1/fc2 today; scoping to the
        # language model keeps that true whatever the default target names become.
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    # ------------------------------------------------------------------ prompts and tokens
    def format_response(self, answer: str) -> str:
        # ChatML: the answer starts right after "<|im_start|>assistant\n".
        return answer

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_id)

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding; none of the vision markers may be generated (a random or
        lightly trained model can emit them, and a generated ``<|image_pad|>`` would be
        taken for an image slot)."""
        kwargs = super().generation_kwargs(max_new_tokens)
        config = self.model.config
        kwargs["suppress_tokens"] = [
            int(config.image_token_id),
            int(config.video_token_id),
            int(config.vision_start_token_id),
            int(config.vision_end_token_id),
        ]
        return kwargs

    @property
    def patch_size(self) -> int:
        return int(self.processor.image_processor.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.processor.image_processor.merge_size)

    @property
    def image_side(self) -> int:
        """The fixed square input side in pixels (see ``image_size``)."""
        factor = self.patch_size * self.merge_size
        side = self.hparams.image_size
        if side is None:
            max_pixels = self.processor.image_processor.size["longest_edge"]
            side = min(DEFAULT_IMAGE_SIZE, math.isqrt(int(max_pixels)) // factor * factor)
        if side <= 0 or side % factor:
            raise ValueError(
                f"image_size must be a positive multiple of {factor} (patch_size "
                f"{self.patch_size} x merge_size {self.merge_size}), got {side}: e.g. "
                f"{max(factor, side // factor * factor)}"
            )
        return side

    def num_image_tokens(self) -> int:
        """One token per ``merge_size x merge_size`` group of patches."""
        return self.num_image_features((self.image_side, self.image_side))

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        factor = self.patch_size * self.merge_size
        return (image_shape[0] // factor) * (image_shape[1] // factor)

    def image_size_problems(self, config: Any) -> list[str]:
        try:
            self.image_side  # noqa: B018 - validates image_size against the patch grid
        except ValueError as err:
            return [f"model.{err}"]
        return []

    def expand_image_tokens(self, prompt: str) -> str:
        # By id, not a tokenizer attribute: the hub tokenizers do not all name their image token.
        token = self.tokenizer.convert_ids_to_tokens(self.image_token_id())
        if prompt.count(token) != 1:
            raise ValueError(f"expected one {token!r} in the formatted prompt, got: {prompt!r}")
        return prompt.replace(token, token * self.num_image_tokens())

    # ------------------------------------------------------------------ images
    def image_preprocessor(self) -> ImagePreprocessor:
        """Pad to square (optional), resize to ``image_side``, normalise: ``(B, 3, S, S)``."""
        processor = self.processor.image_processor
        return ImagePreprocessor(
            self.image_side,
            processor.image_mean,
            processor.image_std,
            pad_to_square=self.hparams.pad_to_square,
        )

    def patchify(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` -> flattened patches ``(B * g * g, C * T * p * p)`` and
        ``image_grid_thw`` ``(B, 3)`` = ``[1, g, g]`` per image, ``g = S / p``.

        The layout of ``Qwen2VLImageProcessor``: patches in 2x2 merge groups, the groups row
        by row; each patch is (channel, time, row, column) with the still image repeated over
        the ``temporal_patch_size`` frames.
        """
        b, c, h, w = pixel_values.shape
        p, m = self.patch_size, self.merge_size
        frames = int(self.processor.image_processor.temporal_patch_size)
        gh, gw = h // p, w // p
        x = pixel_values.reshape(b, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (b, gh/m, gw/m, m, m, c, p, p)
        x = x.unsqueeze(6).expand(*x.shape[:6], frames, p, p)  # a still image: T equal frames
        patches = x.reshape(b * gh * gw, c * frames * p * p)
        grid = torch.tensor([1, gh, gw], device=pixel_values.device).repeat(b, 1)
        return patches, grid

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Patches, patch grid and the image-token mask M-RoPE needs, for ``forward`` and
        ``generate`` alike (``generate`` extends the mask over the new tokens itself)."""
        patches, grid = self.patchify(pixel_values)
        return {
            "pixel_values": patches.to(self.compute_dtype),
            "image_grid_thw": grid,
            "mm_token_type_ids": (input_ids == self.image_token_id()).long(),
        }

    def position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """M-RoPE ids ``(3, B, L)`` from the model's own ``get_rope_index`` (what its forward
        computes when given no positions), for one ``(H, W)`` image per row."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        rows, (h, w) = len(pixel_values), pixel_values.shape[-2:]
        grid = torch.tensor(
            [1, h // self.patch_size, w // self.patch_size], device=input_ids.device
        )
        positions, _ = base.model.get_rope_index(
            input_ids,
            mm_token_type_ids=(input_ids == self.image_token_id()).long(),
            image_grid_thw=grid.repeat(rows, 1),
            attention_mask=attention_mask,
        )
        return positions
