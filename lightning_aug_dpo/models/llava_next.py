"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``) as a SeVa policy.

What differs from LLaVA-1.5, and where each difference is handled (hooks of
:class:`~lightning_aug_dpo.module.AugDPOModule`; nothing else in the library knows):

* **Any-resolution tiles.** LLaVA-NeXT's processor picks a grid point from
  ``image_grid_pinpoints`` for each image's size, resizes and pads the image into it, cuts it into
  CLIP-size tiles and prepends the whole image at tile size: ``pixel_values`` is
  ``(B, 1 + tiles, 3, S, S)`` plus ``image_sizes``. To keep augmentations, pairs files and
  replay on ``(B, 3, S, S)``, this module fixes ONE layout: every image is padded to square
  (with ``pad_to_square``) and resized to the CLIP tile side ``S`` (336 on the hub), and
  :meth:`vision_inputs` builds the tiles exactly as the processor does for an ``S x S`` image:
  the grid point ``select_best_resolution`` picks for it (``336 x 672`` with the hub's
  pinpoints: one tile's worth of image, centred, black padding on both sides, cut into two
  tiles), no resampling anywhere. The processor given the same ``S x S`` image gives identical
  inputs (tested).
* **Image tokens.** The ``<image>`` placeholder expands to the base tile's patches
  (``(S / p)**2`` = 576) plus the grid's features with the padding removed, one learned
  ``image_newline`` per feature row: ``24 * (24 + 1)`` = 600 for the hub checkpoints, 1,176
  in all (LLaVA-1.5: 576).
* **Projector and newline.** Vision features go through the projector per tile, are stitched
  into the grid, unpadded and given their newlines by the model's own ``pack_image_features``;
  :meth:`encode_images` runs the frozen tower once per step (``reuse_image_features``) and
  :meth:`forward_logits` does the rest per forward, so a trained projector stays exact.
* **Prompt format.** The checkpoint's chat template (``[INST] <image>\\n{question} [/INST]``
  for llava-v1.6-mistral, vicuna's ``USER: ... ASSISTANT:`` for llava-v1.6-vicuna); answers
  follow after a space and end with ``</s>``.
* **Modules.** The language model at ``model.language_model`` (LoRA there only), CLIP at
  ``model.vision_tower`` and the projector kept out of 4-bit; full fine-tuning also trains
  ``model.image_newline``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.module import AugDPOModule


def unpadded_grid(grid: tuple[int, int], patch: int) -> tuple[int, int]:
    """Feature rows and columns LLaVA-NeXT keeps of a ``grid`` (height, width in pixels) that
    holds a centred square image: the model's ``unpad_image`` on ``patch``-px
    features (the tiles' ``(grid / patch)`` feature map, the padding's rows or columns cut)."""
    rows, cols = grid[0] // patch, grid[1] // patch
    # unpad_image scales the square to the grid's shorter side and cuts what lies beyond it
    if cols >= rows:
        return rows, cols - 2 * ((cols - rows) // 2)
    return rows - 2 * ((rows - cols) // 2), cols


class LlavaNextDPOModule(AugDPOModule):
    """SeVa DPO for LLaVA-NeXT checkpoints (``llava-hf/llava-v1.6-mistral-7b-hf``,
    ``llava-hf/llava-v1.6-vicuna-7b-hf`` / ``-13b-hf`` or a local copy such as
    :func:`~lightning_aug_dpo.models.tiny_llava_next.write_tiny_llava_next`'s).

    Takes every argument of :class:`AugDPOModule`; the input side is the vision tower's
    ``image_size`` (config), the layout the one that size gets from the checkpoint's
    ``image_grid_pinpoints`` (module docstring).
    """

    # Path prefixes inside LlavaNextForConditionalGeneration (transformers >= 4.52).
    language_model_prefix = "model.language_model"

    # ------------------------------------------------------------------ loading
    def load_model(self) -> nn.Module:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        # bitsandbytes matches full prefixes; CLIP and the projector stay in full precision.
        return ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

    def full_finetune_modules(self) -> list[str]:
        # The newline embedding is trained with the projector in LLaVA-NeXT's own recipe.
        return [*super().full_finetune_modules(), "model.image_newline"]

    def lora_target_regex(self) -> str:
        names = "|".join(re.escape(n) for n in self.lora_target_modules)
        return rf"{re.escape(self.language_model_prefix)}\..*\.({names})"

    # ------------------------------------------------------------------ layout and tokens
    @property
    def tile_side(self) -> int:
        """The input side ``S``: CLIP's ``image_size`` (its position embeddings fix it)."""
        return int(self.model_config.vision_config.image_size)

    def grid_point(self, side: int | None = None) -> tuple[int, int]:
        """``(height, width)`` that ``select_best_resolution`` picks for a ``side`` square."""
        from transformers.image_processing_utils import select_best_resolution

        side = side or self.tile_side
        pinpoints = self.model_config.image_grid_pinpoints
        return tuple(int(v) for v in select_best_resolution((side, side), pinpoints))

    def image_token_id(self) -> int:
        return int(self.model_config.image_token_id)

    def num_image_tokens(self) -> int:
        return self.num_image_features((self.tile_side, self.tile_side))

    def num_image_features(self, image_shape: tuple[int, int]) -> int:
        """Base tile patches + unpadded grid features + one newline per grid row."""
        patch = int(self.model_config.vision_config.patch_size)
        side = image_shape[0]
        base = (side // patch) ** 2
        rows, cols = unpadded_grid(self.grid_point(side), patch)
        return base + rows * (cols + 1)

    def image_size_problems(self, config: Any) -> list[str]:
        """The processor must make CLIP-size inputs, the default feature strategy must drop
        CLS (LLaVA-NeXT's grid stitching needs whole patch grids), and the grid point the
        checkpoint picks for such a square must hold it without resampling."""
        side, made = config.vision_config.image_size, self.image_preprocessor().size
        path = self.hparams.model_name_or_path
        problems = []
        if made != side:
            problems.append(
                f"{path}: the image processor makes {made}x{made} inputs (processor_config.json "
                f"image_processor.crop_size) but the vision tower takes {side}x{side} "
                f"(config.json vision_config.image_size). Fix: set that crop_size (and "
                f"size.shortest_edge) to {side}, or use the processor saved with this model"
            )
        if config.vision_feature_select_strategy != "default":
            problems.append(
                f"{path}: config.json vision_feature_select_strategy is "
                f"{config.vision_feature_select_strategy!r}; LLaVA-NeXT's tile grid needs "
                "'default' (CLS dropped). Fix: set it to 'default'"
            )
        height, width = self.grid_point(side)
        if min(height, width) != side or height % side or width % side:
            problems.append(
                f"{path}: config.json image_grid_pinpoints give a {side}x{side} image the grid "
                f"{height}x{width}, which needs resampling; this module fixes the layout of a "
                f"single {side} px tile. Fix: include a grid point with one side {side} and the "
                f"other a multiple of it, e.g. [{side}, {2 * side}]"
            )
        return problems

    def expand_image_tokens(self, prompt: str) -> str:
        token = self.processor.image_token
        if prompt.count(token) != 1:
            raise ValueError(f"expected one {token!r} in the formatted prompt, got: {prompt!r}")
        return prompt.replace(token, token * self.num_image_tokens())

    # ------------------------------------------------------------------ images
    def tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised -> ``(B, 1 + tiles, 3, S, S)``: the image itself (the
        processor's base tile), then the tiles of the image centred in its grid point, row by
        row, with the processor's padding (black before normalisation) around it."""
        b, c, s, _ = pixel_values.shape
        height, width = self.grid_point(s)
        image_processor = self.processor.image_processor
        mean = torch.tensor(image_processor.image_mean, device=pixel_values.device)
        std = torch.tensor(image_processor.image_std, device=pixel_values.device)
        black = (-mean / std).to(pixel_values.dtype).view(1, c, 1, 1)
        canvas = black.expand(b, c, height, width).clone()
        top, left = (height - s) // 2, (width - s) // 2  # the processor's centring
        canvas[:, :, top : top + s, left : left + s] = pixel_values
        grid = canvas.reshape(b, c, height // s, s, width // s, s).permute(0, 2, 4, 1, 3, 5)
        return torch.cat([pixel_values[:, None], grid.reshape(b, -1, c, s, s)], dim=1)

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Tiles and ``image_sizes`` (``[S, S]`` per image), for ``forward`` and ``generate``."""
        side = pixel_values.shape[-1]
        sizes = torch.tensor([side, side], device=pixel_values.device).repeat(len(pixel_values), 1)
        return {
            "pixel_values": self.tiles(pixel_values).to(self.compute_dtype),
            "image_sizes": sizes,
        }

    def _llava_next(self, model: nn.Module) -> nn.Module:
        """The ``LlavaNextModel`` inside a (PEFT-wrapped) ``LlavaNextForConditionalGeneration``."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP features of every tile at ``vision_feature_layer`` (CLS dropped),
        ``(B, 1 + tiles, patches, D)``: everything before the projector. The tower is frozen
        and never adapted, so policy and reference share this output."""
        config = self.model.config
        layers = config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        tiles = self.tiles(pixel_values).to(self.compute_dtype)
        tower = self._llava_next(self.model).vision_tower
        with torch.no_grad():
            out = tower(tiles.flatten(0, 1), output_hidden_states=True)
        features = torch.cat([out.hidden_states[layer][:, 1:] for layer in layers], dim=-1)
        return features.unflatten(0, tiles.shape[:2])

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
        inner = self._llava_next(model)
        # The active model's projector (trained copy, or the original with adapters disabled),
        # then the model's own grid stitching, unpadding and newlines.
        projected = inner.multi_modal_projector(vision_features.flatten(0, 1))
        per_image = list(projected.unflatten(0, vision_features.shape[:2]))
        side = pixel_values.shape[-1]
        sizes = torch.tensor([side, side], device=input_ids.device).repeat(len(per_image), 1)
        packed, _ = inner.pack_image_features(
            per_image, sizes, vision_feature_select_strategy="default",
            image_newline=inner.image_newline,
        )  # fmt: skip
        return self.forward_with_image_embeds(
            input_ids, attention_mask, torch.cat(packed), logits_to_keep, position_ids
        )
