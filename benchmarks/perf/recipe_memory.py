"""Peak device memory of a recipe's training steps and rollouts, measured on real tensors.

    python benchmarks/perf/recipe_memory.py --model-path CKPT              # configs/seva_llava15_7b
    python benchmarks/perf/recipe_memory.py --config configs/X.yaml --model-path CKPT --batch-size 4

Builds the recipe's ``model`` exactly as its YAML says (class, every ``init_args`` entry: LoRA
rank, alpha and targets, ``modules_to_save``, 4-bit, dtype, gradient checkpointing, loss,
optimizer) on ``--model-path`` instead of ``model_name_or_path`` (e.g. the 7B-shaped random
checkpoint of ``benchmarks/perf/shaped_llava.py``: the same shapes as ``llava-hf/llava-1.5-7b-hf``
without a download), then runs what one GPU holds at its fullest during the recipe's training,
in this order, recording ``torch.cuda.max_memory_allocated`` (and ``_reserved``) per phase:

1. ``load``: the model on the device (4-bit quantised straight onto it: the module is moved to
   the device before ``configure_model``);
2. ``step_1``: a forward + backward of one micro-batch and an optimizer step (gradient clipping
   as the trainer's ``gradient_clip_val``): AdamW's two states appear;
3. ``accumulate``: a forward + backward of the next micro-batch, gradients kept (the recipe
   accumulates ``accumulate_grad_batches`` micro-batches per step);
4. ``rollout``: with those gradients still held, a reference rollout of the DataModule's size:
   ``2 x batch_size`` rows (clean and augmented image in ONE ``generate``) of exactly
   ``max_new_tokens`` new tokens (``min_new_tokens`` forces the full length: the KV cache at its
   largest);
5. ``step_2``: one more micro-batch on top of the held gradients, then the optimizer step: the
   steady state of gradient accumulation, AdamW states and full gradients live together with the
   activations.

Micro-batches: ``data.batch_size`` pairs, one question of ``--prompt-tokens`` text tokens plus
the image tokens, every chosen and rejected answer exactly ``--response-tokens`` long (default
``data.max_new_tokens``: the longest a rollout can make, so this is the worst case). Forwards
run under ``torch.autocast`` in bf16 when the trainer's precision is ``bf16-mixed`` (as
Lightning does). The JSON (``--output``, rewritten after every phase, so a run cut short keeps
what it measured) has per phase the peak allocated / reserved MiB and seconds, the trainable
parameter counts (all, LoRA, ``modules_to_save``) and the settings. On CPU the peaks are the
process's resident-set high-water mark instead (a smoke number only).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_aug_dpo.atomic import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_step import make_batch  # beside this script

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "seva_llava15_7b.yaml"
MIB = 2**20
PHASES = ("load", "step_1", "accumulate", "rollout", "step_2")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instance(spec: dict[str, Any]) -> Any:
    return _import(spec["class_path"])(**spec.get("init_args", {}))


def recipe(config_path: Path) -> dict[str, Any]:
    """The parts of a LightningCLI YAML this benchmark uses (model, trainer, data sizes)."""
    config = yaml.safe_load(config_path.read_text())
    model = config["model"]
    trainer = config.get("trainer", {})
    data = config.get("data", {}).get("init_args", {})
    return {
        "model_class": model["class_path"],
        "model_args": dict(model.get("init_args", {})),
        "precision": str(trainer.get("precision", "32-true")),
        "gradient_clip_val": trainer.get("gradient_clip_val"),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
        "batch_size": data.get("batch_size", 1),
        "max_new_tokens": data.get("max_new_tokens", 64),
    }


def build_module(rec: dict[str, Any], model_path: str, device: torch.device) -> Any:
    """The recipe's module on ``model_path``, configured, on ``device`` (4-bit loaded onto it)."""
    args = dict(rec["model_args"])
    args["model_name_or_path"] = model_path
    if isinstance(args.get("loss"), dict):
        args["loss"] = _instance(args["loss"])
    optimizer = args.pop("optimizer", None)
    if isinstance(optimizer, dict):
        args["optimizer"] = functools.partial(
            _import(optimizer["class_path"]), **optimizer.get("init_args", {})
        )
    args.pop("lr_scheduler", None)  # sized from a Trainer; no memory of its own
    module_class = _import(rec["model_class"])

    class Forced(module_class):  # every rollout runs the full max_new_tokens
        def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
            return {**super().generation_kwargs(max_new_tokens), "min_new_tokens": max_new_tokens}

    torch.manual_seed(0)
    module = Forced(**args)
    module.to(device)  # before configure_model: the 4-bit base is quantised on the device
    module.configure_model()
    module.to(device)
    return module


class Meter:
    """Peak memory of a phase: CUDA allocator peaks, or the process's RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = (
            "torch.cuda.max_memory_allocated / max_memory_reserved (absolute, model included)"
            if device.type == "cuda"
            else "CPU process resident-set high-water mark (VmHWM; smoke only)"
        )

    def start(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter()

    def stop(self, started: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            out["peak_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
            out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / MIB
            out["allocated_after_mib"] = torch.cuda.memory_allocated(self.device) / MIB
        else:
            status = Path("/proc/self/status").read_text()
            hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            out["peak_allocated_mib"] = int(hwm.group(1)) / 1024 if hwm else None
            out["peak_reserved_mib"] = None
            out["allocated_after_mib"] = None
        out["seconds"] = time.perf_counter() - started
        return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rec = recipe(args.config)
    device = torch.device(args.device)
    batch_size = args.batch_size or rec["batch_size"]
    response = args.response_tokens or rec["max_new_tokens"]
    rollout_tokens = args.rollout_tokens or rec["max_new_tokens"]
    bf16_mixed = rec["precision"].startswith("bf16") and rec["precision"].endswith("mixed")
    report: dict[str, Any] = {
        "benchmark": "recipe_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/perf/recipe_memory.py", *args.given]),
        "config": str(args.config),
        "model_path": str(args.model_path),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "settings": {
            "batch_size": batch_size, "prompt_text_tokens": args.prompt_tokens,
            "response_tokens": response, "rollout_rows": 2 * batch_size,
            "rollout_new_tokens": rollout_tokens, "autocast_bf16": bf16_mixed,
            "precision": rec["precision"], "gradient_clip_val": rec["gradient_clip_val"],
            "accumulate_grad_batches": rec["accumulate_grad_batches"],
            "model_args": {k: v for k, v in rec["model_args"].items() if k != "model_name_or_path"},
        },
        "phases": {},
    }  # fmt: skip
    meter = Meter(device)
    report["memory_method"] = meter.method

    def save() -> None:
        write_json(args.output, report)

    t0 = meter.start()
    module = build_module(rec, str(args.model_path), device)
    report["phases"]["load"] = meter.stop(t0)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    report["trainable_parameters"] = sum(p.numel() for _, p in named)
    report["lora_parameters"] = sum(p.numel() for n, p in named if "lora_" in n)
    report["modules_to_save_parameters"] = sum(
        p.numel() for n, p in named if ".modules_to_save." in n
    )
    report["trainable_dtypes"] = sorted({str(p.dtype).removeprefix("torch.") for _, p in named})
    report["parameters"] = sum(p.numel() for p in module.model.parameters())
    report["quantized_4bit"] = any(type(m).__name__ == "Linear4bit" for m in module.model.modules())
    save()

    batch = make_batch(module, batch_size, args.prompt_tokens, (response, response), seed=0)
    report["tokens"] = {
        "prompt": int(batch.prompt_attention_mask[0].sum()),
        "image": module.num_image_tokens(),
        "chosen": int(batch.chosen_attention_mask.sum()),
        "rejected": int(batch.rejected_attention_mask.sum()),
    }
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    report["optimizer"] = type(optimizer).__name__
    params = [p for _, p in named]
    accumulate = max(1, int(rec["accumulate_grad_batches"] or 1))

    def micro_batch() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_mixed):
            loss = module.training_step(batch, 0)
        (loss / accumulate).backward()
        return float(loss.detach())

    def optimizer_step() -> None:
        if rec["gradient_clip_val"]:
            torch.nn.utils.clip_grad_norm_(params, float(rec["gradient_clip_val"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        t0 = meter.start()
        losses.append(micro_batch())
        optimizer_step()
        report["phases"]["step_1"] = meter.stop(t0)
        save()

        t0 = meter.start()
        losses.append(micro_batch())
        report["phases"]["accumulate"] = meter.stop(t0)
        save()

        if rollout_tokens > 0:
            pixels = batch.pixel_values.repeat(2, 1, 1, 1)  # clean + augmented rows
            question = "Describe the image in detail."
            t0 = meter.start()
            answers = module.rollout(pixels, [question] * len(pixels), rollout_tokens)
            report["phases"]["rollout"] = meter.stop(t0)
            report["rollout_tokens_generated"] = sum(a.num_tokens for a in answers)
            save()

        t0 = meter.start()
        losses.append(micro_batch())
        optimizer_step()
        report["phases"]["step_2"] = meter.stop(t0)
    report["losses"] = losses
    peaks = [p["peak_allocated_mib"] for p in report["phases"].values()]
    reserved = [p["peak_reserved_mib"] for p in report["phases"].values()]
    report["peak_allocated_mib"] = max((p for p in peaks if p is not None), default=None)
    report["peak_reserved_mib"] = max((p for p in reserved if p is not None), default=None)
    save()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="LightningCLI YAML")
    parser.add_argument("--model-path", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="pairs per micro-batch (data.batch_size)")
    parser.add_argument("--prompt-tokens", type=int, default=40, help="question text tokens")
    parser.add_argument(
        "--response-tokens", type=int, help="tokens of every answer (data.max_new_tokens)"
    )
    parser.add_argument(
        "--rollout-tokens", type=int, help="new tokens per rollout row (data.max_new_tokens)"
    )
    parser.add_argument("--output", type=Path, required=True, help="JSON file")
    args = parser.parse_args(argv)
    args.given = sys.argv[1:] if argv is None else argv
    for name in ("batch_size", "response_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = run(args)
    phases = ", ".join(
        f"{name} {p['peak_allocated_mib']:.0f} MiB" if p["peak_allocated_mib"] else name
        for name, p in report["phases"].items()
    )
    print(f"peaks: {phases}; trainable {report['trainable_parameters']:,}")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
