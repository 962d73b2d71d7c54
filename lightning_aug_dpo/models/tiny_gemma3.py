"""Write a tiny, random, but *real* Gemma 3 checkpoint directory.

Gemma 3's counterpart of ``models/tiny.py``: a checkpoint laid out as ``google/gemma-3-4b-it``
is, so that tests and examples go through the real code paths
(``Gemma3ForConditionalGeneration.from_pretrained``, ``GemmaTokenizer``, Gemma 3's chat template,
``Gemma3Processor`` with its ``<start_of_image>`` expansion, the bidirectional attention over
image tokens, sliding-window layers) without downloading anything:

* a SentencePiece-style BPE (spaces as ``▁``, as ``GemmaTokenizer`` normalises them), trained
  offline on a fixed word list, exactly ``vocab_size`` entries, BOS added by the tokenizer;
* a SigLIP vision tower + the 4x4-average-pool projector + a Gemma 3 text model from config with
  one sliding-window layer (window ``sliding_window``, shorter than a DPO row, so the window
  matters) and one global layer, seeded weights;
* ``Gemma3ImageProcessorPil`` (no torchvision) at the tower's ``image_size``, pan-and-scan off,
  saved with a ``Gemma3Processor`` (``image_seq_length = mm_tokens_per_image``).

Special tokens keep the hub's names; ids are 0..9 (the hub's are 0, 1, 2, 3, 4, 105, 106,
255999, 256000, 262144). Every Linear layer of the language model and the LM head has
dimensions that are multiples of 64 in and 32 out, for bitsandbytes' CPU 4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_gemma3 OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyGemma3Spec` field; ``--help`` lists them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.models.tiny import _opt, writer_main
from lightning_aug_dpo.models.tiny_tokenizer import train_bpe, vocab_and_merges

BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",  # end of a chat turn: what the module uses as EOS
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
]

# google/gemma-3-*-it's chat template (chat_template.json), verbatim.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


@dataclass(frozen=True)
class TinyGemma3Spec:
    """Sizes of the tiny model. ``image_size / patch_size`` must be a multiple of
    ``sqrt(mm_tokens_per_image)`` (the projector average-pools patches into tokens)."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers (sliding-window, then global)")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query)")
    head_dim: int = _opt(16, "attention head width")
    sliding_window: int = _opt(16, "window of the sliding-window layers, in tokens")
    vision_hidden_size: int = _opt(64, "SigLIP vision tower width")
    vision_intermediate_size: int = _opt(128, "SigLIP vision tower MLP width")
    vision_layers: int = _opt(1, "SigLIP vision tower layers")
    vision_heads: int = _opt(4, "SigLIP vision tower attention heads")
    # 32 px: 4x4 patches of 8 px, average-pooled 2x2 -> 4 image tokens
    image_size: int = _opt(32, "input image side in pixels (SigLIP's fixed size)")
    patch_size: int = _opt(8, "SigLIP patch side")
    mm_tokens_per_image: int = _opt(4, "image tokens per image (a square number)")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def build_gemma_tokenizer(vocab_size: int) -> Any:
    """A ``GemmaTokenizer`` of exactly ``vocab_size`` entries, trained offline (deterministic)."""
    from transformers import GemmaTokenizer

    bpe = train_bpe(
        vocab_size,
        SPECIAL_TOKENS,
        template_text=["user\n", "model\n", "\n\n", "\n\n\n"],  # the template's, processor's
        pre_tokenization="sentencepiece",
        unk_token="<unk>",
        label="tiny Gemma tokenizer",
        writer="tiny_gemma3.py",
    )
    vocab, merges = vocab_and_merges(bpe)
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={
            "boi_token": BOI_TOKEN,
            "eoi_token": EOI_TOKEN,
            "image_token": IMAGE_TOKEN,
        },
        add_bos_token=True,  # as the hub's tokenizer.json post-processor: "<bos> $A"
        model_max_length=2048,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_gemma3(out_dir: str | Path, spec: TinyGemma3Spec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and processor config.

    The result loads with ``Gemma3ForConditionalGeneration.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` without network access. Deterministic per spec.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    spec = spec or TinyGemma3Spec()
    side = round(spec.mm_tokens_per_image**0.5)
    patches = spec.image_size // spec.patch_size
    grid_ok = spec.image_size % spec.patch_size == 0 and patches % side == 0
    if side * side != spec.mm_tokens_per_image or not grid_ok:
        raise ValueError(
            f"image_size / patch_size ({spec.image_size} / {spec.patch_size}) must be a whole "
            f"multiple of sqrt(mm_tokens_per_image) ({spec.mm_tokens_per_image})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_gemma_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    layer_types = ["sliding_attention", "full_attention"] * spec.num_hidden_layers
    text_config = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        query_pre_attn_scalar=spec.head_dim,
        sliding_window=spec.sliding_window,
        layer_types=layer_types[: spec.num_hidden_layers],
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
        attention_dropout=0.0,
    )
    vision_config = dict(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=spec.mm_tokens_per_image,
        boi_token_index=ids[BOI_TOKEN],
        eoi_token_index=ids[EOI_TOKEN],
        image_token_index=ids[IMAGE_TOKEN],
    )
    torch.manual_seed(spec.seed)
    model = Gemma3ForConditionalGeneration(config)
    # The projector's weight is initialised to zeros (the hub's is trained): without a random
    # one the image would never reach the logits of the tiny model.
    with torch.no_grad():
        projector = model.model.multi_modal_projector.mm_input_projection_weight
        projector.normal_(0.0, 0.5)
    model = model.eval()
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id = ids["<pad>"], ids["<bos>"]
    generation.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]  # as the hub's
    model.save_pretrained(out)

    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=spec.mm_tokens_per_image,
    )
    processor.save_pretrained(out)
    (out / "tiny_gemma3_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyGemma3Spec, write_tiny_gemma3, "Gemma 3")


if __name__ == "__main__":
    raise SystemExit(main())
