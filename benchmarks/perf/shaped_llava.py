"""Write a LLaVA-1.5-7B-*shaped* checkpoint with random weights: nothing is downloaded.

    python benchmarks/perf/shaped_llava.py OUT_DIR                      # 7B sizes, bf16
    python benchmarks/perf/shaped_llava.py OUT_DIR --layers 2           # 7B widths, 2 layers
    python benchmarks/perf/shaped_llava.py OUT_DIR --smoke              # tiny, for a CPU

The sizes are ``llava-hf/llava-1.5-7b-hf``'s published ``config.json`` (:data:`LLAVA15_7B`):
CLIP ViT-L/14 at 336 px (1024 wide, 24 layers, 16 heads, MLP 4096; 576 image tokens, feature
layer -2, the ``default`` strategy dropping CLS), the 2-layer GELU projector 1024 -> 4096 ->
4096, and Vicuna/Llama-7B (4096 wide, 32 layers, 32 heads of 128, MLP 11008, vocabulary 32064,
4096 positions, RMS eps 1e-5, untied LM head): 7.06 B parameters, 14.1 GB in bf16.

What is NOT the real model's: the weights (normal(0, 0.02) per tensor from a fixed seed, norms
1, biases 0), and the tokenizer, which is the offline BPE of ``lightning_aug_dpo.models.tiny``
padded with decodable filler entries to the 32064 ids, so its special ids (``<image>`` = 4,
``<pad>`` = 3) differ from the real 32000 / 32001. Neither changes a shape, a FLOP or a byte of
memory; answers are noise. The tokenizer, processor (CLIP preprocessing at the image size) and
chat template come from :func:`~lightning_aug_dpo.models.tiny.write_tiny_llava`, so
``LlavaDPOModule`` loads the directory offline like the real checkpoint.

Speed: the model is built on the ``meta`` device, materialised with ``to_empty`` on ``--device``
(CUDA when there is one: 14 GB of normal draws take milliseconds there) in ``--dtype`` and saved
with ``save_pretrained`` in 5 GB shards; the JSON summary (``--report``) gives the build and save
seconds. ``--smoke`` keeps the vocabulary and the 14 px patches but shrinks widths, depths and
the image (56 px: 16 image tokens), with every Linear a multiple of 64 (bitsandbytes' CPU rule).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import pad_tokenizer  # beside this script

__all__ = ["LLAVA15_7B", "SMOKE", "main", "shape", "write_shaped_llava"]

# llava-hf/llava-1.5-7b-hf config.json (text_config: LlamaConfig defaults = Llama-2-7B's sizes).
LLAVA15_7B: dict[str, Any] = {
    "text": {
        "vocab_size": 32064,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
}
# The same writer at CPU sizes (the smoke run of benchmarks/gpu_check.py).
SMOKE: dict[str, Any] = {
    **LLAVA15_7B,
    "text": {
        **LLAVA15_7B["text"],
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "vision": {
        **LLAVA15_7B["vision"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 56,
        "projection_dim": 64,
    },
}
INIT_STD = 0.02  # LlamaConfig / LlavaConfig initializer_range


def shape(base: dict[str, Any], layers: int | None = None) -> dict[str, Any]:
    """``base`` with ``layers`` text layers (``None``: as given)."""
    if layers is None:
        return base
    return {**base, "text": {**base["text"], "num_hidden_layers": layers}}


def _init_(name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
    """Norm weights 1, biases 0, everything else normal(0, INIT_STD)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        tensor.zero_()
    elif "norm" in name or "layrnorm" in name:  # CLIP spells pre_layrnorm
        tensor.fill_(1.0)
    else:
        tensor.normal_(0.0, INIT_STD, generator=generator)


def write_shaped_llava(
    out_dir: str | Path,
    sizes: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the checkpoint (see module docstring) to ``out_dir``; a summary dict."""
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    sizes = sizes or LLAVA15_7B
    text, vision = sizes["text"], sizes["vision"]
    out = Path(out_dir)
    started = time.perf_counter()
    # Tokenizer, processor, chat template and special ids from the tiny writer (its own tiny
    # weights are replaced below), at the vision tower's image size and patch.
    tiny = TinyLlavaSpec(
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        max_position_embeddings=text["max_position_embeddings"],
    )
    write_tiny_llava(out, tiny)
    (out / "tiny_llava_spec.json").unlink()
    pad_tokenizer(out, text["vocab_size"])
    generation = GenerationConfig.from_pretrained(out)
    config = LlavaConfig.from_pretrained(out)
    for key, value in text.items():
        setattr(config.text_config, key, value)
    # LlamaConfig stores head_dim when built: recompute it for the new width and heads
    config.text_config.head_dim = text["hidden_size"] // text["num_attention_heads"]
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    config.projector_hidden_act = sizes["projector_hidden_act"]
    config.vision_feature_layer = sizes["vision_feature_layer"]
    config.vision_feature_select_strategy = sizes["vision_feature_select_strategy"]
    config.image_seq_length = (vision["image_size"] // vision["patch_size"]) ** 2
    config.tie_word_embeddings = False
    config.text_config.tie_word_embeddings = False
    for stale in [*out.glob("*.safetensors"), *out.glob("*.safetensors.index.json")]:
        stale.unlink()
    tokenizer_s = time.perf_counter() - started

    t0 = time.perf_counter()
    device = torch.device(device)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device)
    with torch.no_grad():
        for i, (name, param) in enumerate(model.named_parameters()):
            generator.manual_seed(seed * 100_003 + i)
            _init_(name, param, generator)
    model.generation_config = generation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.save_pretrained(out, max_shard_size="5GB")
    save_s = time.perf_counter() - t0
    files = sorted(out.glob("*.safetensors"))
    params = {name: p.numel() for name, p in model.named_parameters()}
    summary = {
        "path": str(out),
        "sizes": sizes,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "parameters": sum(params.values()),
        "language_model_parameters": sum(
            n for k, n in params.items() if k.startswith(("model.language_model.", "lm_head."))
        ),
        "vision_tower_parameters": sum(
            n for k, n in params.items() if k.startswith("model.vision_tower.")
        ),
        "projector_parameters": sum(
            n for k, n in params.items() if k.startswith("model.multi_modal_projector.")
        ),
        "image_tokens": config.image_seq_length,
        "special_ids": {
            "image_token_index": config.image_token_index,
            "pad_token_id": config.pad_token_id,
        },
        "weight_files": len(files),
        "weight_bytes": sum(f.stat().st_size for f in files),
        "tokenizer_s": tokenizer_s,
        "build_s": build_s,
        "save_s": save_s,
        "total_s": time.perf_counter() - started,
    }
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (replaced if it exists)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU sizes (module docstring)")
    parser.add_argument("--layers", type=int, help="text layers (default: 32, smoke 2)")
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="where to build")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the JSON summary here too")
    args = parser.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be >= 1")
    if args.out_dir.exists():
        shutil.rmtree(args.out_dir)
    sizes = shape(SMOKE if args.smoke else LLAVA15_7B, args.layers)
    dtype = getattr(torch, args.dtype)
    summary = write_shaped_llava(args.out_dir, sizes, args.device, dtype, args.seed)
    if args.report:
        write_json(args.report, summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
