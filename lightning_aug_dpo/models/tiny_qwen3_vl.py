"""Write a tiny, random, but *real* Qwen3-VL checkpoint directory.

Laid out as ``Qwen/Qwen3-VL-8B-Instruct`` is, so that tests and examples go through the real code
paths (``Qwen3VLForConditionalGeneration.from_pretrained``, ``Qwen2Tokenizer``, Qwen3-VL's chat
template, the Qwen2-VL image processor config with Qwen3-VL's settings, interleaved M-RoPE,
DeepStack) without downloading anything. What Qwen3-VL changes, and the tiny model keeps:

* **Vision tower.** 16 px patches (32 px per image token with the 2x2 merge), mean/std 0.5, a
  learned position grid (``num_position_embeddings``, a square, bilinearly resampled to each
  image's patch grid: 6 x 6 here, resampled to the 4 x 4 patches of a 64 px image), and DeepStack:
  the outputs of the ``deepstack_visual_indexes`` blocks, merged by their own mergers, are added to
  the image tokens' hidden states in the first language-model layers.
* **Language model.** Qwen3 (per-head RMSNorm on queries and keys, explicit ``head_dim``) with
  *interleaved* M-RoPE: ``mrope_section`` in the hub's 24:20:20 proportion of ``head_dim / 2``.
* **Chat template.** No default system prompt (Qwen2-VL adds "You are a helpful assistant.").

The tokenizer is the Qwen2 byte-level BPE of ``tiny_qwen2_vl`` (trained offline, the same
special tokens at the start of the vocabulary). Every Linear layer has dimensions that are
multiples of 64 in and 32 out, for bitsandbytes' CPU 4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_qwen3_vl OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinyQwen3VLSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lightning_aug_dpo.models.tiny import _opt, writer_main
from lightning_aug_dpo.models.tiny_qwen2_vl import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_qwen2_tokenizer,
    save_qwen_vl,
)

# Qwen3-VL-Instruct's chat template (hub chat_template.json), verbatim: ChatML, an optional
# system turn (none by default), tool calls and tool responses.
CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


@dataclass(frozen=True)
class TinyQwen3VLSpec:
    """Sizes of the tiny model. ``image_size`` must be a multiple of ``patch_size * merge_size``;
    ``num_position_embeddings`` a square."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Qwen3 hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query)")
    head_dim: int = _opt(32, "text model head width (Qwen3 sets it apart from hidden_size)")
    vision_hidden_size: int = _opt(64, "vision tower width")
    vision_intermediate_size: int = _opt(128, "vision tower MLP width")
    vision_depth: int = _opt(2, "vision tower layers")
    vision_heads: int = _opt(4, "vision tower attention heads")
    deepstack_layer: int = _opt(0, "the vision block whose output DeepStack feeds the LM")
    num_position_embeddings: int = _opt(36, "learned vision position grid entries (a square)")
    # 64 px: 4x4 patches of 16 px -> 2x2 merged -> 4 image tokens
    image_size: int = _opt(64, "input image side in pixels; a multiple of patch * merge size")
    patch_size: int = _opt(16, "vision patch side")
    merge_size: int = _opt(2, "patches merged per side into one image token")
    temporal_patch_size: int = _opt(2, "frames per temporal patch (a still image is repeated)")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """Interleaved M-RoPE split of the ``head_dim / 2`` rotary frequencies into (time, height,
    width), in the hub's 24:20:20 proportion (of 64)."""
    half = head_dim // 2
    spatial = half * 20 // 64
    return [half - 2 * spatial, spatial, spatial]


def write_tiny_qwen3_vl(out_dir: str | Path, spec: TinyQwen3VLSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and image processor config.

    The result loads with ``Qwen3VLForConditionalGeneration.from_pretrained(out_dir)``,
    ``AutoTokenizer`` and ``AutoImageProcessor`` (and ``AutoProcessor`` where torchvision is
    installed) without network access. Deterministic per spec.
    """
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = spec or TinyQwen3VLSpec()
    factor = spec.patch_size * spec.merge_size
    if spec.image_size % factor:
        raise ValueError(f"image_size {spec.image_size} is not a multiple of {factor}")
    if math.isqrt(spec.num_position_embeddings) ** 2 != spec.num_position_embeddings:
        raise ValueError(f"num_position_embeddings {spec.num_position_embeddings} is no square")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen2_tokenizer(spec.vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text_config = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": interleaved_mrope_section(spec.head_dim),
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        attention_dropout=0.0,
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,  # the mergers project into the text model's width
        patch_size=spec.patch_size,
        spatial_merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        num_position_embeddings=spec.num_position_embeddings,
        deepstack_visual_indexes=[spec.deepstack_layer],
    )
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    save_qwen_vl(
        out,
        Qwen3VLForConditionalGeneration,
        config,
        spec,
        ids,
        tokenizer,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        processor_class="Qwen3VLProcessor",
        spec_file="tiny_qwen3_vl_spec.json",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyQwen3VLSpec, write_tiny_qwen3_vl, "Qwen3-VL")


if __name__ == "__main__":
    raise SystemExit(main())
