"""LLaVA-1.5 model arithmetic: parameter counts of the decoder, LoRA, projector and vision tower
from a ``config.json``, step FLOPs and the one-GPU memory plan of a LoRA DPO recipe.

Standard library only and no import from this package, so that ``benchmarks/gpu_check.py`` can
load this file before it knows the project's dependencies are installed (its
``gpu_check_sizes.py`` re-exports these names), and ``python -m lightning_aug_dpo.recipe_cost``
plans a run with the same numbers. Every figure here is an estimate until a GPU measures it.

A ``config.json`` as Hugging Face writes it leaves out values equal to the class defaults
(``llava-hf/llava-1.5-7b-hf``'s ``text_config`` names no ``hidden_size``): :func:`complete_config`
fills them in from the Llama and CLIP defaults before any arithmetic.
"""

from __future__ import annotations

from typing import Any

GIB, MIB = 2**30, 2**20
# What an 80 GB A100 / H100 leaves a process: 79.2-80 GiB visible to CUDA, less ~0.7 GiB for the
# CUDA context and cuBLAS workspaces, which max_memory_reserved does not count.
PLAN_LIMIT_GIB = 78.5
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# bitsandbytes NF4 with double quantisation: 4-bit codes, an 8-bit absmax per block of 64 and an
# fp32 absmax per 256 of those.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

# What config.json leaves out because it equals the class default (transformers' LlamaConfig and
# CLIPVisionConfig).
TEXT_DEFAULTS = {
    "llama": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "vocab_size": 32000,
    }
}
VISION_DEFAULTS = {
    "clip_vision_model": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
    }
}
TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size")
_LLAVA15_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}
# The published checkpoints' sizes (their config.json with the Llama defaults filled in), so that
# a run can be planned before anything is downloaded.
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "llava-hf/llava-1.5-7b-hf": {
        "text_config": {
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
        },
        "vision_config": _LLAVA15_VISION,
        "image_seq_length": 576,
    },
    "llava-hf/llava-1.5-13b-hf": {
        "text_config": {
            "model_type": "llama",
            "hidden_size": 5120,
            "intermediate_size": 13824,
            "num_hidden_layers": 40,
            "num_attention_heads": 40,
            "num_key_value_heads": 40,
            "vocab_size": 32064,
        },
        "vision_config": _LLAVA15_VISION,
        "image_seq_length": 576,
    },
}


def complete_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """A copy of a LLaVA ``config.json`` dict whose ``text_config`` and ``vision_config`` name
    every size used here, the omitted ones taken from the class defaults of their
    ``model_type``. Raises ``ValueError`` naming ``source``, the key and the fix otherwise."""
    out = dict(config)
    for part, keys, defaults in (
        ("text_config", (*TEXT_KEYS, "vocab_size"), TEXT_DEFAULTS),
        ("vision_config", VISION_KEYS, VISION_DEFAULTS),
    ):
        given = config.get(part)
        if not isinstance(given, dict):
            raise ValueError(
                f"{source}: no {part!r} object; this planner knows LLaVA-style checkpoints "
                "(a language model and a vision tower): pass that model's config.json"
            )
        filled = {**defaults.get(given.get("model_type", ""), {}), **given}
        missing = [k for k in keys if not isinstance(filled.get(k), int)]
        if missing:
            raise ValueError(
                f"{source}: {part} lacks {missing} and its model_type "
                f"{given.get('model_type')!r} has no known defaults; add them to the file"
            )
        out[part] = filled
    return out


def image_tokens(config: dict[str, Any]) -> int:
    """Image tokens in a prompt: ``image_seq_length``, else ``(image_size / patch_size)^2``
    (LLaVA-1.5 drops CLIP's class token: 336 / 14 -> 576)."""
    if isinstance(config.get("image_seq_length"), int):
        return config["image_seq_length"]
    vision = config["vision_config"]
    return (vision["image_size"] // vision["patch_size"]) ** 2


def total_parameters(config: dict[str, Any]) -> int:
    """Every weight of the model: decoder Linears, embeddings and LM head (untied, as
    LLaVA-1.5), the ``2L + 1`` RMSNorms, vision tower and projector."""
    text, vision = config["text_config"], config["vision_config"]
    h, layers = text["hidden_size"], text["num_hidden_layers"]
    return (
        decoder_linear_parameters(text)
        + 2 * text["vocab_size"] * h
        + (2 * layers + 1) * h
        + vision_tower_parameters(vision)
        + projector_parameters(vision["hidden_size"], h)
    )


def kv_bytes_per_token(text: dict[str, Any], dtype_bytes: int = 2) -> int:
    """KV-cache bytes per token of one row: K and V of every layer, ``kv_heads x head_dim``."""
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    kv = text.get("num_key_value_heads") or heads
    return text["num_hidden_layers"] * 2 * kv * head_dim * dtype_bytes


def decoder_linears(text: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``(in, out)`` features of each Linear of one Llama decoder layer."""
    h, inter = text["hidden_size"], text["intermediate_size"]
    heads = text["num_attention_heads"]
    kv = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or h // heads
    return {
        "q_proj": (h, heads * head_dim),
        "k_proj": (h, kv * head_dim),
        "v_proj": (h, kv * head_dim),
        "o_proj": (heads * head_dim, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def decoder_linear_parameters(text: dict[str, Any]) -> int:
    """``N``: weights of the decoder layers' Linears (no bias in Llama), all layers."""
    per_layer = sum(i * o for i, o in decoder_linears(text).values())
    return text["num_hidden_layers"] * per_layer


def lora_parameters(text: dict[str, Any], r: int, targets: list[str]) -> int:
    """LoRA A (r x in) + B (out x r) on each targeted Linear of every decoder layer."""
    linears = decoder_linears(text)
    unknown = sorted(set(targets) - linears.keys())
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not Llama decoder Linears {list(linears)}")
    return text["num_hidden_layers"] * sum(r * sum(linears[t]) for t in targets)


def projector_parameters(vision_hidden: int, text_hidden: int) -> int:
    """LLaVA-1.5's 2-layer projector: linear_1 (vision -> text) and linear_2, with biases."""
    return vision_hidden * text_hidden + text_hidden + text_hidden * text_hidden + text_hidden


def vision_tower_parameters(vision: dict[str, Any]) -> int:
    """CLIP vision transformer: patch conv (no bias), class and position embeddings, pre/post
    LayerNorm, per layer q/k/v/out (+bias), fc1/fc2 (+bias), two LayerNorms."""
    d, m, p = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    patches = (vision["image_size"] // p) ** 2
    layer = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    return 3 * p * p * d + d + (patches + 1) * d + 4 * d + vision["num_hidden_layers"] * layer


def trainable_parameters(config: dict[str, Any], model_args: dict[str, Any]) -> dict[str, int]:
    """Trainable parameters of a LoRA recipe on a LLaVA config (``config.json`` as a dict):
    LoRA on ``lora_target_modules`` (the module's default: all seven) at ``lora_r``, plus the
    projector when ``modules_to_save`` names it."""
    text, vision = config["text_config"], config["vision_config"]
    targets = model_args.get("lora_target_modules") or ALL_TARGETS
    lora = lora_parameters(text, int(model_args.get("lora_r", 16)), list(targets))
    saved = model_args.get("modules_to_save") or []
    projector = (
        projector_parameters(vision["hidden_size"], text["hidden_size"])
        if "multi_modal_projector" in saved
        else 0
    )
    return {"lora": lora, "modules_to_save": projector, "total": lora + projector}


def step_flops(tokens: int, n_linear: int, trainable: int) -> float:
    """``6 T (N + P)`` for a LoRA DPO step over ``T`` tokens, ``N`` the decoder's Linear weights,
    ``P`` the trainable parameters: policy forward ``2T(N+P)``, its backward ``2T(N+P)`` for
    activation gradients plus ``2TP`` for the trainable weights' gradients (the frozen base has
    none), reference forward ``2TN``. LM head, vision tower, attention scores and the
    checkpointing recompute are not counted."""
    return 6.0 * tokens * (n_linear + trainable)


def memory_plan(
    config: dict[str, Any],
    model_args: dict[str, Any],
    batch_size: int,
    prompt_tokens: int,
    response_tokens: int,
    rollout_tokens: int,
) -> dict[str, Any]:
    """Bytes one GPU holds for a LoRA DPO recipe, by component (docs/running.md, "Memory on
    one 80 GB GPU").

    ``prompt_tokens`` includes the image tokens. Base: decoder Linears in NF4 (4-bit codes +
    8-bit absmax per 64 + fp32 per 256 absmax with double quantisation = 0.516 B/param) or
    ``torch_dtype``; embeddings, LM head, norms, vision tower and projector in ``torch_dtype``.
    Trainable (fp32): weight, gradient and AdamW's two states = 16 B/param; AdamW (foreach) makes
    one more fp32 copy while it steps. Activations of the policy forward, bf16, over its tokens:
    ``B (prompt + 2 answer)`` with ``share_prompt`` (the module's default: one packed row per
    pair), ``2B (prompt + answer)`` without (one row per answer); with gradient checkpointing every
    layer's input (2h B/token) plus one layer recomputed in the backward (~26h + 8i bytes/token
    for a Llama layer with SDPA, plus 2(6h + i) + 14r for LoRA's inputs and rank-r
    intermediates); without, every layer's. LM head from the first answer position: bf16
    logits + fp32 log-softmax + its gradient (10 B per row and vocabulary entry). Rollout:
    ``2B`` rows (clean + augmented) of prompt + ``rollout_tokens``, K and V in bf16 per layer.
    """
    text, vision = config["text_config"], config["vision_config"]
    h, inter, layers, vocab = (
        text["hidden_size"],
        text["intermediate_size"],
        text["num_hidden_layers"],
        text["vocab_size"],
    )
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or h // heads
    kv = text.get("num_key_value_heads") or heads
    dtype_bytes = 4 if model_args.get("torch_dtype", "float32") == "float32" else 2
    n_linear = decoder_linear_parameters(text)
    other = (
        2 * vocab * h
        + (2 * layers + 1) * h
        + vision_tower_parameters(vision)
        + projector_parameters(vision["hidden_size"], h)
    )
    if model_args.get("load_in_4bit"):
        base = n_linear * NF4_BYTES_PER_PARAM + other * dtype_bytes
    else:
        base = (n_linear + other) * dtype_bytes
    trainable = trainable_parameters(config, model_args)
    states = 16 * trainable["total"]
    optimizer_temp = 4 * trainable["total"]
    rows = 2 * batch_size
    share_prompt = model_args.get("share_prompt", True)
    if share_prompt:
        tokens = batch_size * (prompt_tokens + 2 * response_tokens)
    else:
        tokens = rows * (prompt_tokens + response_tokens)
    r = int(model_args.get("lora_r", 16))
    layer = tokens * ((26 * h + 8 * inter) + 2 * (6 * h + inter) + 14 * r)
    if model_args.get("gradient_checkpointing"):
        activations = layers * tokens * 2 * h + layer
    else:
        activations = layers * layer
    head = rows * response_tokens * vocab * 10
    kv_cache = rows * (prompt_tokens + rollout_tokens) * layers * 2 * kv * head_dim * 2
    train = base + states + max(activations + head, optimizer_temp)
    rollout = base + states + kv_cache
    parts = {
        "base_weights": base,
        "trainable_weights_grads_adamw": states,
        "adamw_step_temporary": optimizer_temp,
        "activations": activations,
        "lm_head": head,
        "rollout_kv_cache": kv_cache,
        "train_step_peak": train,
        "rollout_peak": rollout,
    }
    return {
        "gib": {k: v / GIB for k, v in parts.items()},
        "peak_gib": max(train, rollout) / GIB,
        "trainable_parameters": trainable,
        "decoder_linear_parameters": n_linear,
        "policy_tokens": tokens,
        "settings": {
            "batch_size": batch_size,
            "prompt_tokens": prompt_tokens,
            "response_tokens": response_tokens,
            "rollout_tokens": rollout_tokens,
            "gradient_checkpointing": bool(model_args.get("gradient_checkpointing")),
            "load_in_4bit": bool(model_args.get("load_in_4bit")),
            "lora_r": r,
            "share_prompt": bool(share_prompt),
        },
    }
