"""What a recipe will cost before it runs: steps, tokens, FLOPs, GPU-hours, memory and disk.

    python -m lightning_aug_dpo.recipe_cost configs/seva_llava15_7b.yaml [--model-config PATH]

Every figure is an ESTIMATE from the model's sizes and stated assumptions, until a GPU measures
it (``make gpu-check`` measures MFU, rollout tokens/s and peak memory; pass them back with
``--mfu`` and ``--rollout-tokens-per-s``). Two scenarios: ``typical`` answers
(``--answer-tokens``, a batch decoding ``--decode-steps``) and the ``bound`` where every answer
runs to ``data.max_new_tokens``.

Per micro-batch of ``B`` prompts (``k`` = ``sampling.num_samples``, ``f`` = kept fraction of pairs
after the identical-answer filter, ``L_p`` = image + text prompt tokens, ``L_a`` = mean answer
tokens, ``L_d`` = decode steps of one ``generate`` call):

- rollout: ``R = 2Bk`` rows (clean + augmented); prefill ``2 N_r R L_p`` FLOPs, decode
  ``2 N_r R L_d`` (finished rows still ride along), ``N_r`` = ``N`` (+ LoRA when the policy rolls
  out). Prefill time = FLOPs / (peak x MFU). A decode step is memory-bound: it reads the weights
  and the KV cache, ``max(2 N_r R / (peak x MFU), bytes / (HBM bandwidth x efficiency))``;
- training: ``T`` = ``Bkf (L_p + 2 L_a)`` tokens with ``share_prompt`` (one packed row per pair),
  ``2Bkf (L_p + L_a)`` without; FLOPs ``6 T (N + P)`` (``model_sizes.step_flops``), time =
  FLOPs / (peak x MFU). The vision tower (~3% more) is not counted.

Steps: ``ceil(ceil(prompts / devices) / B)`` micro-batches per epoch and device,
``ceil(that / accumulate_grad_batches)`` optimizer steps per epoch. GPU-hours sum over devices.
Disk: a ``.ckpt`` holds only the trainable tensors (fp32) and the optimizer's fp32 states, so
``P x 4 x (1 + states)`` bytes (AdamW: 12 B/param), so a resume is exact; a PEFT adapter export
is written in the model's ``torch_dtype``: ``2P`` in bf16, ``4P`` in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_aug_dpo.model_sizes import (
    NF4_BYTES_PER_PARAM,
    PLAN_LIMIT_GIB,
    decoder_linear_parameters,
    image_tokens,
    kv_bytes_per_token,
    memory_plan,
    step_flops,
    total_parameters,
    trainable_parameters,
)
from lightning_aug_dpo.recipe_read import CheckpointPlan, Recipe, model_config_for, read_recipe


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes; defaults: one 80 GB H100 SXM (datasheet: 989.4 dense bf16
    TFLOP/s, 3.35 TB/s HBM3). ``mfu`` and ``bandwidth_efficiency`` are guesses until measured."""

    mfu: float = 0.35
    bandwidth_efficiency: float = 0.6
    peak_tflops: float = 989.4
    hbm_tbps: float = 3.35
    gpu: str = "H100 SXM 80 GB"
    prompt_text_tokens: int = 48  # chat template + question; SeVa's lists average ~15 words
    answer_tokens: int = 32  # mean answer (short OCR answers, one-sentence captions)
    decode_steps: int = 128  # a batch decodes until its longest answer ends
    kept_fraction: float = 1.0  # pairs left after dropping identical answers (1: an upper bound)
    rollout_tokens_per_s: float | None = None  # measured decode rate; replaces the byte model

    def __post_init__(self) -> None:
        for name in ("mfu", "bandwidth_efficiency", "kept_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("peak_tflops", "hbm_tbps", "answer_tokens", "decode_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.prompt_text_tokens < 0 or (self.rollout_tokens_per_s or 1) <= 0:
            raise ValueError("prompt_text_tokens must be >= 0 and rollout_tokens_per_s > 0")


def schedule(recipe: Recipe) -> dict[str, int]:
    """Micro-batches and optimizer steps (see the module docstring); ``trainer.max_steps``
    caps them."""
    per_device = math.ceil(recipe.prompts / recipe.devices)
    micro = math.ceil(per_device / recipe.batch_size)
    steps_per_epoch = math.ceil(micro / recipe.accumulate)
    if recipe.epochs is None:
        steps, micro_total = recipe.max_steps, recipe.max_steps * recipe.accumulate
    else:
        steps, micro_total = steps_per_epoch * recipe.epochs, micro * recipe.epochs
        if 0 < recipe.max_steps < steps:
            steps, micro_total = recipe.max_steps, recipe.max_steps * recipe.accumulate
    return {
        "micro_batches_per_epoch": micro,
        "optimizer_steps_per_epoch": steps_per_epoch,
        "optimizer_steps": steps,
        "micro_batches": micro_total,
    }


def decode_weight_bytes(config: dict[str, Any], model_args: dict[str, Any], lora: int) -> float:
    """Weight bytes one decode step reads: the decoder Linears (NF4: codes + scales, then
    bitsandbytes writes a bf16 copy for the batched matmul and reads it back, so
    ``N (0.516 + 2 + 2)``; else ``N x dtype``), the LM head, and ``lora`` fp32 LoRA weights."""
    text = config["text_config"]
    dtype = 4 if model_args.get("torch_dtype", "float32") == "float32" else 2
    n = decoder_linear_parameters(text)
    linear = n * (NF4_BYTES_PER_PARAM + 4) if model_args.get("load_in_4bit") else n * dtype
    return linear + text["vocab_size"] * text["hidden_size"] * dtype + 4 * lora


def scenario(
    recipe: Recipe, config: dict[str, Any], a: Assumptions, answer: int, steps: int, kept: float
) -> dict[str, Any]:
    """Tokens, FLOPs, hours and peak memory with answers of ``answer`` tokens, ``steps`` decode
    steps per ``generate`` call and a ``kept`` fraction of pairs (module docstring formulas)."""
    text, args, sched = config["text_config"], recipe.model_args, schedule(recipe)
    n = decoder_linear_parameters(text)
    trainable = trainable_parameters(config, args)
    p, lora = trainable["total"], trainable["lora"]
    b, k = recipe.batch_size, recipe.num_samples
    lp = image_tokens(config) + a.prompt_text_tokens
    pairs = b * k * kept
    share = args.get("share_prompt", True)
    scored = pairs * (lp + 2 * answer) if share else 2 * pairs * (lp + answer)
    rows = 2 * b * k if recipe.rollouts else 0
    n_roll = n + (lora if recipe.rollout_model == "policy" else 0)
    achieved = a.peak_tflops * 1e12 * a.mfu
    train_flops = step_flops(scored, n, p)
    prefill_flops, decode_flops = 2 * n_roll * rows * lp, 2 * n_roll * rows * steps
    if a.rollout_tokens_per_s:  # measured like make gpu-check: rows x new tokens / s, prefill in
        rollout_s = rows * steps / a.rollout_tokens_per_s
    else:
        kv = rows * (lp + steps / 2) * kv_bytes_per_token(text)  # mean context over the steps
        read = decode_weight_bytes(config, args, n_roll - n) + kv
        bandwidth = a.hbm_tbps * 1e12 * a.bandwidth_efficiency
        step_s = max(2 * n_roll * rows / achieved, read / bandwidth) if rows else 0.0
        rollout_s = prefill_flops / achieved + steps * step_s
    train_s = train_flops / achieved
    micro, devices = sched["micro_batches"], recipe.devices
    per_step = recipe.accumulate * devices  # micro-batches in one optimizer step, all devices
    plan = memory_plan(config, args, b * k, lp, answer, steps)
    return {
        "prompt_tokens": lp,
        "answer_tokens": answer,
        "decode_steps": steps,
        "kept_fraction": kept,
        "tokens_per_optimizer_step": {
            "rollout_generated": per_step * rows * answer,
            "rollout_prefill": per_step * rows * lp,
            "scored": per_step * scored,
        },
        "tokens_total": {
            "rollout_generated": micro * devices * rows * answer,
            "rollout_prefill": micro * devices * rows * lp,
            "scored": micro * devices * scored,
        },
        "flops_total": {
            "train": micro * devices * train_flops,
            "rollout": micro * devices * (prefill_flops + decode_flops),
        },
        "seconds_per_micro_batch": {"rollout": rollout_s, "train": train_s},
        "gpu_hours": {
            "rollout": micro * devices * rollout_s / 3600,
            "train": micro * devices * train_s / 3600,
            "total": micro * devices * (rollout_s + train_s) / 3600,
        },
        "wall_hours": micro * (rollout_s + train_s) / 3600,
        "peak_memory_gib": plan["peak_gib"],
        "train_step_peak_gib": plan["gib"]["train_step_peak"],
        "rollout_peak_gib": plan["gib"]["rollout_peak"],
        "fits_gpu": plan["peak_gib"] <= PLAN_LIMIT_GIB,
    }


def checkpoint_files(plan: CheckpointPlan, steps: int, epochs: int | None) -> dict[str, int]:
    """``.ckpt`` files one checkpoint callback writes and keeps on disk at the end."""
    if plan.every_n_train_steps:
        saves = steps // plan.every_n_train_steps
    elif plan.every_n_epochs and epochs:
        saves = epochs // plan.every_n_epochs
    else:
        saves = 0
    kept = saves if plan.save_top_k < 0 else min(plan.save_top_k, saves)
    return {"saves": saves, "kept": kept + int(plan.save_last)}


def disk_plan(recipe: Recipe, config: dict[str, Any]) -> dict[str, Any]:
    """Bytes per ``.ckpt`` and adapter export, and what the recipe leaves on disk: the kept
    checkpoints (each with an adapter folder under ``AdapterCheckpoint``), ``adapter/`` at the
    end of ``fit`` and ``merged/`` (``torch_dtype``) with ``export_merged``."""
    p = trainable_parameters(config, recipe.model_args)["total"]
    ckpt = 4 * p * (1 + recipe.optimizer_states)
    dtype = 4 if recipe.model_args.get("torch_dtype", "float32") == "float32" else 2
    adapter = dtype * p  # exports are cast to torch_dtype (model_card.finish_adapter_folder)
    merged = total_parameters(config) * dtype if recipe.export_merged else 0
    steps = schedule(recipe)["optimizer_steps"]
    files = [checkpoint_files(c, steps, recipe.epochs) for c in recipe.checkpoints]
    kept = sum(f["kept"] for f in files)
    adapters = sum(f["kept"] for f, c in zip(files, recipe.checkpoints, strict=True) if c.adapter)
    return {
        "trainable_parameters": p,
        "ckpt_bytes": ckpt,
        "adapter_bytes": adapter,
        "adapter_dtype": recipe.model_args.get("torch_dtype", "float32"),
        "adapter_fp32_bytes": 4 * p,
        "merged_bytes": merged,
        "checkpoints_kept": kept,
        "checkpoint_adapters_kept": adapters,
        "total_bytes": kept * ckpt + (adapters + 1) * adapter + merged,
    }


def plan_recipe(
    recipe: Recipe, config: dict[str, Any], a: Assumptions | None = None
) -> dict[str, Any]:
    """Both scenarios, the schedule and the disk plan of a recipe, as one JSON-ready dict."""
    a = a or Assumptions()
    bound = recipe.max_new_tokens
    typical = scenario(
        recipe, config, a, min(a.answer_tokens, bound), min(a.decode_steps, bound), a.kept_fraction
    )
    trainable = trainable_parameters(config, recipe.model_args)
    return {
        "estimate": True,
        "note": "estimates from model sizes and the assumptions below; no GPU measured them",
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "model_args"},
        "assumptions": asdict(a),
        "model": {
            "decoder_linear_parameters": decoder_linear_parameters(config["text_config"]),
            "total_parameters": total_parameters(config),
            "trainable_parameters": trainable,
            "image_tokens": image_tokens(config),
        },
        "schedule": schedule(recipe),
        "typical": typical,
        "bound": scenario(recipe, config, a, bound, bound, 1.0),
        "disk": disk_plan(recipe, config),
        "memory_limit_gib": PLAN_LIMIT_GIB,
    }


def build_parser() -> argparse.ArgumentParser:
    d = Assumptions()
    parser = argparse.ArgumentParser(
        prog="python -m lightning_aug_dpo.recipe_cost",
        description="Estimate a fit recipe's steps, tokens, FLOPs, GPU-hours, peak memory and "
        "disk from the model's sizes, before any GPU time. Every figure is an estimate.",
    )
    parser.add_argument(
        "config",
        type=Path,
        nargs="+",
        help="fit YAML, e.g. configs/seva_llava15_7b.yaml; later files "
        "(configs/multigpu/ddp.yaml) override earlier ones",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="PATH",
        help="the checkpoint's config.json (default: the published sizes of "
        "model_name_or_path, or its local folder's config.json)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the figures here (default: runs/cost/<config name>.json)",
    )
    parser.add_argument("--num-prompts", type=int, metavar="N", help="prompts per epoch")
    parser.add_argument("--devices", type=int, metavar="N", help="override trainer.devices")
    for name, help_ in (
        ("mfu", "model FLOPs utilisation of prefill and training (ASSUMED until measured)"),
        ("bandwidth-efficiency", "share of HBM bandwidth a decode step reaches (ASSUMED)"),
        ("peak-tflops", "dense bf16 peak of the GPU"),
        ("hbm-tbps", "memory bandwidth of the GPU, TB/s"),
        ("prompt-text-tokens", "template + question tokens besides the image's"),
        ("answer-tokens", "mean answer length of the typical scenario"),
        ("decode-steps", "decode steps of one generate call, typical scenario"),
        ("kept-fraction", "pairs left after dropping identical answers, typical scenario"),
        (
            "rollout-tokens-per-s",
            "a measured decode rate (rows x steps / s) instead of the bandwidth model",
        ),
    ):
        key = name.replace("-", "_")
        kind = int if key.endswith("tokens") or key == "decode_steps" else float
        parser.add_argument(
            f"--{name}", type=kind, default=getattr(d, key), help=f"{help_} (default: %(default)s)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Read the recipe, print the table, write the JSON; exit 2 on a config error."""
    from lightning_aug_dpo.recipe_cost_table import print_plan

    args = build_parser().parse_args(argv)
    keys = [f for f in Assumptions.__dataclass_fields__ if f != "gpu"]
    try:
        assumptions = Assumptions(**{k: getattr(args, k) for k in keys})
        recipe = read_recipe(args.config, args.num_prompts, args.devices)
        config, config_from = model_config_for(recipe, args.model_config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    plan = plan_recipe(recipe, config, assumptions)
    plan["model"]["config_from"] = config_from
    out = args.json or Path("runs") / "cost" / f"{args.config[0].stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    print_plan(plan)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
