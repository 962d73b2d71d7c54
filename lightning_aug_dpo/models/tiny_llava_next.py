"""Write a tiny, random, but *real* LLaVA-NeXT (LLaVA-1.6) checkpoint directory.

The LLaVA-NeXT counterpart of ``models/tiny.py``, laid out as ``llava-hf/llava-v1.6-mistral-7b-hf``
is, so that tests and examples go through the real code paths
(``LlavaNextForConditionalGeneration.from_pretrained``, ``AutoProcessor`` giving a
``LlavaNextProcessor`` with the PIL ``LlavaNextImageProcessorPil``, the Mistral ``[INST]`` chat
template, anyres tiles, the learned ``image_newline``) without downloading anything:

* the byte-level BPE of ``models/tiny.py`` (trained offline, BOS ``<s>``, EOS ``</s>``,
  ``<image>``), exactly ``vocab_size`` entries;
* a CLIP vision tower + Mistral text model from config, seeded weights;
* ``image_grid_pinpoints`` scaled from the hub's ``[[336, 672], [672, 336], [672, 672],
  [1008, 336], [336, 1008]]`` to ``image_size`` (the same grid points in tiles), so the layout
  :class:`~lightning_aug_dpo.models.llava_next.LlavaNextDPOModule` fixes is the hub's one;
* llava-hf's chat template for llava-v1.6-mistral, verbatim (its ``'<\\\\s> '`` typo included:
  a finished assistant turn renders as the text ``<\\s>``, not the EOS token).

Every Linear layer has dimensions that are multiples of 64 in and 32 out, for bitsandbytes' CPU
4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_llava_next OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyLlavaNextSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lightning_aug_dpo.models.tiny import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    _opt,
    build_tokenizer,
    writer_main,
)

# llava-hf/llava-v1.6-mistral-7b-hf chat_template.json, verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

#: The hub checkpoints' grid points (height, width) in units of the 336 px tile.
HUB_GRID_TILES = [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]


@dataclass(frozen=True)
class TinyLlavaNextSpec:
    """Sizes of the tiny model; ``image_size`` is the CLIP tile side (336 on the hub)."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Mistral hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query, as Mistral)")
    vision_hidden_size: int = _opt(64, "CLIP vision tower width")
    vision_intermediate_size: int = _opt(128, "CLIP vision tower MLP width")
    vision_layers: int = _opt(2, "CLIP vision tower layers")
    vision_heads: int = _opt(4, "CLIP vision tower attention heads")
    # 32 px tiles of 8 px patches: 16 base tokens + 4 x (4 + 1) grid tokens = 36 per image
    image_size: int = _opt(32, "CLIP tile side in pixels (the model input side)")
    patch_size: int = _opt(8, "CLIP patch side")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def write_tiny_llava_next(out_dir: str | Path, spec: TinyLlavaNextSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and processor to ``out_dir``.

    The result loads with ``LlavaNextForConditionalGeneration.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` without network access. Deterministic per spec.
    """
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    spec = spec or TinyLlavaNextSpec()
    if spec.image_size % spec.patch_size:
        raise ValueError(f"image_size {spec.image_size} is not a multiple of {spec.patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = MistralConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        sliding_window=None,  # as Mistral-7B-Instruct-v0.2 under llava-v1.6-mistral
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        attention_dropout=0.0,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size,
    )
    pinpoints = [[h * spec.image_size, w * spec.image_size] for h, w in HUB_GRID_TILES]
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids[IMAGE_TOKEN],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    config.pad_token_id = ids["<pad>"]
    torch.manual_seed(spec.seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id = ids["<pad>"], ids["</s>"]
    generation.bos_token_id = ids["<s>"]
    model.save_pretrained(out)

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    processor.save_pretrained(out)
    (out / "tiny_llava_next_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyLlavaNextSpec, write_tiny_llava_next, "LLaVA-NeXT")


if __name__ == "__main__":
    raise SystemExit(main())
