"""Write a tiny, random, but *real* Qwen2.5-VL checkpoint directory.

Laid out as ``Qwen/Qwen2.5-VL-7B-Instruct`` is, so that tests and examples go through the real
code paths (``Qwen2_5_VLForConditionalGeneration.from_pretrained``, ``Qwen2Tokenizer``, the
ChatML chat template with ``<|vision_start|><|image_pad|><|vision_end|>``, the Qwen2-VL image
processor config Qwen2.5-VL ships, M-RoPE) without downloading anything. What Qwen2.5-VL adds
over Qwen2-VL, and the tiny model keeps so that it is exercised:

* the vision tower attends within windows of ``window_size`` pixels, except in the
  ``fullatt_block_indexes`` blocks (here: window 28 px = one merged token, so a 56 px image is
  four windows, and every ``fullatt_every``-th block attends over the whole image);
* its blocks are RMSNorm + SwiGLU (``gate_proj``/``up_proj``/``down_proj``: the language
  model's own LoRA target names, which is why LoRA must be scoped to the language model);
* the merger projects into ``out_hidden_size`` (the text width) instead of ``hidden_size``.

The tokenizer (a byte-level BPE trained offline, wrapped in ``Qwen2Tokenizer``), the special
tokens and the chat template are Qwen2-VL's, as on the hub (the Qwen2.5-VL-Instruct template is
Qwen2-VL-Instruct's). Every Linear layer has dimensions that are multiples of 64 in and 32 out,
for bitsandbytes' CPU 4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_qwen2_5_vl OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyQwen2_5_VLSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightning_aug_dpo.models.tiny import _opt, writer_main
from lightning_aug_dpo.models.tiny_qwen2_vl import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_qwen2_tokenizer,
    qwen2_text_config,
    save_qwen_vl,
)

#: The hub's Qwen2.5-VL image processor: CLIP normalisation, 14 px patches, 2x2 merge.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TinyQwen2_5_VLSpec:
    """Sizes of the tiny model. ``image_size`` must be a multiple of ``patch_size * merge_size``
    and ``window_size`` a multiple of it too."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Qwen2 hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query)")
    vision_hidden_size: int = _opt(64, "vision tower width")
    vision_intermediate_size: int = _opt(128, "vision tower SwiGLU MLP width")
    vision_depth: int = _opt(2, "vision tower layers")
    vision_heads: int = _opt(4, "vision tower attention heads")
    # 56 px: 4x4 patches of 14 px -> 2x2 merged -> 4 image tokens, in 4 windows of 28 px
    image_size: int = _opt(56, "input image side in pixels; a multiple of patch * merge size")
    patch_size: int = _opt(14, "vision patch side")
    merge_size: int = _opt(2, "patches merged per side into one image token")
    temporal_patch_size: int = _opt(2, "frames per temporal patch (a still image is repeated)")
    window_size: int = _opt(28, "vision attention window side in pixels (hub: 112)")
    fullatt_every: int = _opt(2, "every n-th vision block attends globally (hub: 8)")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def write_tiny_qwen2_5_vl(out_dir: str | Path, spec: TinyQwen2_5_VLSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and image processor config.

    The result loads with ``Qwen2_5_VLForConditionalGeneration.from_pretrained(out_dir)``,
    ``AutoTokenizer`` and ``AutoImageProcessor`` (and ``AutoProcessor`` where torchvision is
    installed) without network access. Deterministic per spec.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    spec = spec or TinyQwen2_5_VLSpec()
    factor = spec.patch_size * spec.merge_size
    for name in ("image_size", "window_size"):
        if getattr(spec, name) % factor:
            raise ValueError(f"{name} {getattr(spec, name)} is not a multiple of {factor}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen2_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text_config = qwen2_text_config(spec, ids)
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,  # the merger projects into the text model's width
        patch_size=spec.patch_size,
        spatial_merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        window_size=spec.window_size,
        fullatt_block_indexes=[
            i for i in range(spec.vision_depth) if (i + 1) % spec.fullatt_every == 0
        ],
        tokens_per_second=2,  # the hub's; only video positions use it
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    save_qwen_vl(
        out,
        Qwen2_5_VLForConditionalGeneration,
        config,
        spec,
        ids,
        tokenizer,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        processor_class="Qwen2_5_VLProcessor",
        spec_file="tiny_qwen2_5_vl_spec.json",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyQwen2_5_VLSpec, write_tiny_qwen2_5_vl, "Qwen2.5-VL")


if __name__ == "__main__":
    raise SystemExit(main())
