"""Write a tiny, random, but *real* Qwen2-VL checkpoint directory.

The second model family's counterpart of ``models/tiny.py``: a checkpoint laid out as
``Qwen/Qwen2-VL-7B-Instruct`` is, so that tests and examples go through the real code paths
(``Qwen2VLForConditionalGeneration.from_pretrained``, the ``Qwen2Tokenizer`` class, the ChatML
chat template with ``<|vision_start|><|image_pad|><|vision_end|>``, the Qwen2-VL image processor
config, M-RoPE) without downloading anything:

* a byte-level BPE with Qwen2's own pre-tokenizer regex, trained offline on a fixed word list and
  wrapped in ``Qwen2Tokenizer``, exactly ``vocab_size`` entries (every id the model emits decodes);
* a Qwen2-VL vision tower (patch 14, 2x2 merge) + Qwen2 text model from config, seeded weights;
* ``preprocessor_config.json`` pinning ``min_pixels = max_pixels = image_size**2``, so Qwen2-VL's
  own image processor maps a square image to the same fixed ``image_size`` grid as
  :class:`~lightning_aug_dpo.models.qwen2_vl.Qwen2VLDPOModule`;
* ``processor_class: Qwen2VLProcessor`` as in the hub repos, so ``AutoProcessor`` loads the
  directory wherever torchvision is installed (transformers builds a video processor too, and
  that needs torchvision; this module never needs it).

Every Linear layer has dimensions that are multiples of 64 in and 32 out, for bitsandbytes' CPU
4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_qwen2_vl OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyQwen2VLSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.models.tiny import _opt, point_auto_processor, writer_main
from lightning_aug_dpo.models.tiny_tokenizer import train_bpe, vocab_and_merges

IMAGE_TOKEN = "<|image_pad|>"
# Ids 0..6 in this order; the hub checkpoints have the same tokens at 151643..151656.
SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad
    "<|im_start|>",
    "<|im_end|>",  # end of a turn: the EOS of chat generation
    "<|vision_start|>",
    "<|vision_end|>",
    IMAGE_TOKEN,
    "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (ChatML with a default system prompt), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyQwen2VLSpec:
    """Sizes of the tiny model. ``image_size`` must be a multiple of ``patch_size * merge_size``."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Qwen2 hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query, as Qwen2)")
    vision_embed_dim: int = _opt(64, "vision tower width")
    vision_mlp_ratio: int = _opt(2, "vision tower MLP width / embed dim")
    vision_depth: int = _opt(2, "vision tower layers")
    vision_heads: int = _opt(4, "vision tower attention heads")
    # 56 px: 4x4 patches of 14 px -> 2x2 merged -> 4 image tokens
    image_size: int = _opt(56, "input image side in pixels; a multiple of patch * merge size")
    patch_size: int = _opt(14, "vision patch side")
    merge_size: int = _opt(2, "patches merged per side into one image token")
    temporal_patch_size: int = _opt(2, "frames per temporal patch (a still image is repeated)")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def mrope_section(head_dim: int) -> list[int]:
    """M-RoPE split of the ``head_dim / 2`` rotary frequencies into (time, height, width), in
    the real models' 2:3:3 proportion (16, 24, 24 of 64)."""
    half = head_dim // 2
    time = half // 4
    spatial = (half - time) // 2
    return [half - 2 * spatial, spatial, spatial]


def build_qwen2_tokenizer(vocab_size: int) -> Any:
    """A ``Qwen2Tokenizer`` of exactly ``vocab_size`` entries, trained offline (deterministic)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    # Trained with the pre-tokenization Qwen2Tokenizer applies, so every merge is reachable.
    bpe = train_bpe(
        vocab_size,
        SPECIAL_TOKENS,
        template_text=["system\nYou are a helpful assistant.\nuser\nassistant\n"],
        pre_tokenization="qwen2",
        label="tiny Qwen2 tokenizer",
        writer="tiny_qwen2_vl.py",
    )
    vocab, merges = vocab_and_merges(bpe)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,  # byte-level: nothing is unknown
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": IMAGE_TOKEN,
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        model_max_length=2048,
    )
    tokenizer.add_tokens([AddedToken("<|im_start|>", special=True)])  # already in the vocab
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen2_text_config(spec: Any, ids: dict[str, int]) -> dict[str, Any]:
    """The Qwen2 language model of Qwen2-VL and Qwen2.5-VL (M-RoPE of :func:`mrope_section`),
    at the sizes of ``spec``, with the special token ``ids``."""
    head_dim = spec.hidden_size // spec.num_attention_heads
    return dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section(head_dim),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        attention_dropout=0.0,
    )


def save_qwen_vl(
    out: Path,
    model_class: type,
    config: Any,
    spec: Any,
    ids: dict[str, int],
    tokenizer: Any,
    *,
    image_mean: list[float],
    image_std: list[float],
    processor_class: str,
    spec_file: str,
) -> None:
    """What the Qwen-VL writers share once the config is made: ``model_class``'s seeded weights
    with the hub's generation config, the Qwen2-VL image processor with ``min_pixels =
    max_pixels = image_size**2``, the tokenizer, the ``processor_class`` entries and the spec."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(spec.seed)
    model = model_class(config).eval()
    generation = model.generation_config
    generation.pad_token_id = ids["<|endoftext|>"]
    generation.bos_token_id = ids["<|endoftext|>"]
    generation.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # as the hub's
    model.save_pretrained(out)

    pixels = spec.image_size**2
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},  # min_pixels = max_pixels
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.merge_size,
        image_mean=image_mean,
        image_std=image_std,
    )
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The processor itself cannot be built here without torchvision (its video processor), so
    # point AutoProcessor at it the way the hub repos do: processor_class in the sub-configs.
    point_auto_processor(out, processor_class)
    (out / spec_file).write_text(json.dumps(asdict(spec), indent=2) + "\n")


def write_tiny_qwen2_vl(out_dir: str | Path, spec: TinyQwen2VLSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and image processor config.

    The result loads with ``Qwen2VLForConditionalGeneration.from_pretrained(out_dir)``,
    ``AutoTokenizer`` and ``AutoImageProcessor`` (and ``AutoProcessor`` where torchvision is
    installed) without network access. Deterministic per spec.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = spec or TinyQwen2VLSpec()
    factor = spec.patch_size * spec.merge_size
    if spec.image_size % factor:
        raise ValueError(f"image_size {spec.image_size} is not a multiple of {factor}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen2_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text_config = qwen2_text_config(spec, ids)
    vision_config = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_embed_dim,
        hidden_size=spec.hidden_size,  # the merger projects into the text model's width
        mlp_ratio=spec.vision_mlp_ratio,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size,
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    save_qwen_vl(
        out,
        Qwen2VLForConditionalGeneration,
        config,
        spec,
        ids,
        tokenizer,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        processor_class="Qwen2VLProcessor",
        spec_file="tiny_qwen2_vl_spec.json",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyQwen2VLSpec, write_tiny_qwen2_vl, "Qwen2-VL")


if __name__ == "__main__":
    raise SystemExit(main())
