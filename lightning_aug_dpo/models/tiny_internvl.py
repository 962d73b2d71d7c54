"""Write a tiny, random, but *real* InternVL 3 checkpoint directory (transformers-native).

The InternVL counterpart of ``models/tiny.py``, laid out as ``OpenGVLab/InternVL3-8B-hf`` is, so
that tests and examples go through the real code paths (``InternVLForConditionalGeneration``
with its InternViT-style vision tower, pixel shuffle and MLP projector, a Qwen2 text model, the
``Qwen2Tokenizer`` class with InternVL's ``<img>`` / ``<IMG_CONTEXT>`` / ``</img>`` tokens, the
ChatML chat template of the ``-hf`` conversions, the GOT-OCR2 image processor config) without
downloading anything:

* a byte-level BPE with Qwen2's pre-tokenizer, trained offline on a fixed word list, exactly
  ``vocab_size`` entries (every id the model emits decodes), the special tokens of Qwen2.5's
  tokenizer that InternVL uses;
* an InternVL vision tower (``image_size`` tiles of ``patch_size`` patches) + Qwen2 text model
  from config, seeded weights; ``downsample_ratio`` 0.5 as the hub's (pixel shuffle: one image
  token per 2 x 2 patches);
* ``preprocessor_config.json`` of ``GotOcr2ImageProcessorPil`` at the tile size, and
  ``processor_class: InternVLProcessor`` (with ``image_seq_length``) where the hub repos have it,
  so ``AutoProcessor`` loads the directory wherever torchvision is installed (transformers also
  builds InternVL's video processor, which needs it; this project never does).

Every Linear layer has dimensions that are multiples of 64 in and 32 out, for bitsandbytes' CPU
4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_internvl OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyInternVLSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.models.tiny import _opt, point_auto_processor, writer_main
from lightning_aug_dpo.models.tiny_tokenizer import train_bpe, vocab_and_merges

START_IMAGE, IMAGE_TOKEN, END_IMAGE, VIDEO_TOKEN = "<img>", "<IMG_CONTEXT>", "</img>", "<video>"
# Ids 0..7 in this order; the hub tokenizer has them at 151643.. (<|endoftext|>, ChatML) and
# 151665.. (InternVL's own).
SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad
    "<|im_start|>",
    "<|im_end|>",  # end of a turn: the EOS of chat generation
    START_IMAGE,
    END_IMAGE,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    "<|vision_pad|>",  # a Qwen2.5 token InternVL never uses: keeps the vocabulary a multiple of 64
]

# The chat template of the InternVL3 -hf conversions (transformers' convert_internvl script).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyInternVLSpec:
    """Sizes of the tiny model; ``image_size / patch_size`` must be even (pixel shuffle)."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Qwen2 hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query, as Qwen2)")
    vision_hidden_size: int = _opt(64, "vision tower width")
    vision_intermediate_size: int = _opt(128, "vision tower MLP width")
    vision_layers: int = _opt(2, "vision tower layers")
    vision_heads: int = _opt(4, "vision tower attention heads")
    # 32 px tile of 8 px patches: 4 x 4 patches -> pixel shuffle 0.5 -> 4 image tokens
    image_size: int = _opt(32, "tile side in pixels (the model input side)")
    patch_size: int = _opt(8, "vision patch side")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def build_internvl_tokenizer(vocab_size: int) -> Any:
    """A ``Qwen2Tokenizer`` of exactly ``vocab_size`` entries with InternVL's image tokens as
    named special tokens (what ``InternVLProcessor`` reads), trained offline (deterministic)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    bpe = train_bpe(
        vocab_size,
        SPECIAL_TOKENS,
        template_text=["system\nuser\nassistant\n"],
        pre_tokenization="qwen2",
        label="tiny InternVL tokenizer",
        writer="tiny_internvl.py",
    )
    vocab, merges = vocab_and_merges(bpe)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,  # byte-level: nothing is unknown
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": START_IMAGE,
            "end_image_token": END_IMAGE,
            "context_image_token": IMAGE_TOKEN,
            "video_token": VIDEO_TOKEN,
        },
        model_max_length=2048,
    )
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:3]])  # ChatML
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_internvl(out_dir: str | Path, spec: TinyInternVLSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and image processor config.

    The result loads with ``InternVLForConditionalGeneration.from_pretrained(out_dir)``,
    ``AutoTokenizer`` and ``AutoImageProcessor`` (and ``AutoProcessor`` where torchvision is
    installed) without network access. Deterministic per spec.
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    spec = spec or TinyInternVLSpec()
    grid = spec.image_size // spec.patch_size
    if spec.image_size % spec.patch_size or grid % 2:
        raise ValueError(
            f"image_size {spec.image_size} must be an even multiple of patch_size "
            f"{spec.patch_size} (pixel shuffle merges 2 x 2 patches)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_internvl_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = dict(
        model_type="qwen2",
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        attention_dropout=0.0,
        tie_word_embeddings=False,  # as InternVL3-8B (Qwen2.5-7B)
    )
    vision_config = dict(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=[spec.image_size, spec.image_size],
        patch_size=[spec.patch_size, spec.patch_size],
    )
    tokens_per_tile = (grid // 2) ** 2
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=ids[IMAGE_TOKEN],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = InternVLForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.pad_token_id = generation.bos_token_id = ids["<|endoftext|>"]
    generation.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # as the hub's
    model.save_pretrained(out)

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        crop_to_patches=False,
        min_patches=1,
        max_patches=12,
        image_mean=[0.485, 0.456, 0.406],  # ImageNet's, as InternViT
        image_std=[0.229, 0.224, 0.225],
    )
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # InternVLProcessor cannot be built here without torchvision (its video processor), so
    # point AutoProcessor at it the way the hub repos do.
    point_auto_processor(out, "InternVLProcessor")
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": tokens_per_tile}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "tiny_internvl_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyInternVLSpec, write_tiny_internvl, "InternVL")


if __name__ == "__main__":
    raise SystemExit(main())
