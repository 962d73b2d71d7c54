"""``reuse_image_features`` for the Qwen-VL vision towers: the frozen vision blocks run once per
DPO step, the mergers (the projector, which ``modules_to_save: [merger]`` trains) in every
forward.

The Qwen-VL vision tower (``model.visual``) is patch embedding + blocks + a *merger* that groups
each ``merge_size x merge_size`` patches into one image token and projects it into the language
model's width (Qwen3-VL: plus DeepStack mergers on intermediate blocks). The blocks are frozen
and identical in policy and reference; the mergers are not (a trained copy in the policy, the
original with adapters disabled or in a separate reference). So :meth:`encode_images` runs the
tower once with every merger's output replaced by its own input, grouped per image token (a
forward hook: the tower's own code does the rest, Qwen2.5-VL's window order included), and
:meth:`forward_logits` applies the active model's mergers to that and hands the result to the
model as ``mm_encoder_outputs``, which transformers takes instead of ``pixel_values``.

A family using this mixin puts it before its ``Qwen2VLDPOModule`` base; Qwen3-VL overrides
:meth:`vision_mergers` and :meth:`image_encoder_output` for DeepStack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class QwenImageReuseMixin:
    """``encode_images`` / ``forward_logits`` of a ``Qwen2VLDPOModule`` subclass (see module)."""

    @staticmethod
    def visual_of(model: nn.Module) -> nn.Module:
        """``model.visual`` of a transformers Qwen-VL model, PEFT-wrapped or not."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return base.model.visual

    def vision_mergers(self, visual: nn.Module) -> list[nn.Module]:
        """The modules that turn block outputs into language-model inputs, in the order of
        :meth:`image_encoder_output`'s arguments: the merger."""
        return [visual.merger]

    def image_encoder_output(self, merged: list[tuple[torch.Tensor, ...]]) -> Any:
        """What the model's ``get_image_features`` returns, from each merger's per-image outputs
        (the order of :meth:`vision_mergers`)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=merged[0])

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """Each merger's input, grouped per image token, for every image: ``(B, M, T, m*m*D)``
        for ``M`` mergers, ``T`` image tokens, vision width ``D``, merge size ``m``; in the
        order of the image tokens (the tower's own reordering, e.g. Qwen2.5-VL's windows,
        applies to the grouped rows as it would to the merged ones). Not called with
        ``train_vision_tower`` (the DPO step then lets each forward encode its own images)."""
        visual = self.visual_of(self.model)
        patches, grid = self.patchify(pixel_values)
        unit = self.merge_size**2

        def merger_input(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return args[0].reshape(-1, unit * args[0].shape[-1])

        hooks = [m.register_forward_hook(merger_input) for m in self.vision_mergers(visual)]
        try:
            with torch.no_grad():
                out = visual(patches.to(self.compute_dtype), grid_thw=grid)
        finally:
            for hook in hooks:
                hook.remove()
        grouped = [out.pooler_output, *(getattr(out, "deepstack_features", None) or [])]
        rows = len(pixel_values)
        return torch.stack([g.reshape(rows, -1, g.shape[-1]) for g in grouped], dim=1)

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
        rows, _, tokens, grouped_width = vision_features.shape
        width = grouped_width // self.merge_size**2
        # The active model's mergers: the trained copies for the policy, the originals with
        # adapters disabled (PEFT's modules_to_save) or in a separate reference.
        mergers = self.vision_mergers(self.visual_of(model))
        merged = [
            merger(features.reshape(-1, width)).split(tokens)
            for merger, features in zip(mergers, vision_features.unbind(1), strict=True)
        ]
        h, w = (side // self.patch_size for side in pixel_values.shape[-2:])
        grid = torch.tensor([1, h, w], device=input_ids.device)
        positions = {} if position_ids is None else {"position_ids": position_ids}
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=logits_to_keep,
            image_grid_thw=grid.repeat(rows, 1),
            mm_token_type_ids=(input_ids == self.image_token_id()).long(),
            mm_encoder_outputs={"image": self.image_encoder_output(merged)},
            **positions,
        ).logits
