"""The table ``python -m lightning_aug_dpo.recipe_cost`` prints (rich), from the plan's dict."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lightning_aug_dpo.model_sizes import GIB


def count(n: float) -> str:
    """``1234567`` -> ``1.23 M``: token and parameter counts."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:,.0f}"


def size(n: float) -> str:
    """Bytes as decimal GB (what disks are sold in) with GiB beside."""
    return f"{n / 1e9:.1f} GB ({n / GIB:.1f} GiB)"


def hours(h: float) -> str:
    return f"{h:.2f} h" if h >= 0.1 else f"{h * 60:.1f} min"


def _run_rows(plan: dict[str, Any]) -> list[tuple[str, str]]:
    r, s, m = plan["recipe"], plan["schedule"], plan["model"]
    t = m["trainable_parameters"]
    epochs = r["epochs"] if r["epochs"] is not None else "max_steps"
    return [
        ("model", f"{r['model_name_or_path']} (sizes: {m.get('config_from', 'given')})"),
        (
            "parameters",
            f"{count(m['total_parameters'])} in all; decoder Linears N = "
            f"{count(m['decoder_linear_parameters'])}; {m['image_tokens']} image tokens",
        ),
        (
            "trainable P",
            f"{count(t['total'])} (LoRA {count(t['lora'])} + modules_to_save "
            f"{count(t['modules_to_save'])}), fp32",
        ),
        ("prompts / epoch", f"{r['prompts']:,} ({r['prompts_from']})"),
        (
            "micro-batches",
            f"{s['micro_batches_per_epoch']:,} per epoch x {epochs} epochs, "
            f"batch {r['batch_size']} on each of {r['devices']} device(s)",
        ),
        (
            "optimizer steps",
            f"{s['optimizer_steps']:,} ({s['optimizer_steps_per_epoch']:,} per "
            f"epoch, accumulate_grad_batches {r['accumulate']})",
        ),
    ]


def _scenario_rows(plan: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ty, bd = plan["typical"], plan["bound"]

    def both(fmt, pick) -> tuple[str, str]:
        return fmt(pick(ty)), fmt(pick(bd))

    def gib(x: float) -> str:
        return f"{x:.1f} GiB"

    limit = plan["memory_limit_gib"]
    return [
        ("prompt tokens (image + text)", *both(str, lambda x: x["prompt_tokens"]), "L_p"),
        ("answer tokens (mean)", *both(str, lambda x: x["answer_tokens"]), "L_a"),
        ("decode steps per generate", *both(str, lambda x: x["decode_steps"]), "L_d"),
        ("pairs kept", *both(str, lambda x: f"{x['kept_fraction']:.0%}"), "after identical drop"),
        (
            "rollout tokens / optimizer step",
            *both(count, lambda x: x["tokens_per_optimizer_step"]["rollout_generated"]),
            "generated, 2B rows",
        ),
        (
            "scored tokens / optimizer step",
            *both(count, lambda x: x["tokens_per_optimizer_step"]["scored"]),
            "T x accumulate",
        ),
        (
            "rollout tokens, total",
            *both(count, lambda x: x["tokens_total"]["rollout_generated"]),
            "generated",
        ),
        (
            "rollout prefill tokens, total",
            *both(count, lambda x: x["tokens_total"]["rollout_prefill"]),
            "2B rows x L_p",
        ),
        ("scored tokens, total", *both(count, lambda x: x["tokens_total"]["scored"]), ""),
        (
            "training FLOPs",
            *both(lambda v: f"{v:.2e}", lambda x: x["flops_total"]["train"]),
            "6T(N+P)",
        ),
        (
            "rollout FLOPs",
            *both(lambda v: f"{v:.2e}", lambda x: x["flops_total"]["rollout"]),
            "2N x (prefill + L_d rows)",
        ),
        (
            "GPU-hours, rollouts",
            *both(hours, lambda x: x["gpu_hours"]["rollout"]),
            "decode memory-bound",
        ),
        ("GPU-hours, training", *both(hours, lambda x: x["gpu_hours"]["train"]), "at MFU"),
        ("GPU-hours, total", *both(hours, lambda x: x["gpu_hours"]["total"]), ""),
        ("wall-clock", *both(hours, lambda x: x["wall_hours"]), "devices in parallel"),
        ("peak memory, train step", *both(gib, lambda x: x["train_step_peak_gib"]), "per device"),
        ("peak memory, rollout", *both(gib, lambda x: x["rollout_peak_gib"]), "unsharded"),
        (
            "fits one 80 GB GPU",
            *both(lambda v: "yes" if v else "NO", lambda x: x["fits_gpu"]),
            f"<= {limit} GiB",
        ),
    ]


def _disk_rows(plan: dict[str, Any]) -> list[tuple[str, str]]:
    d, r = plan["disk"], plan["recipe"]
    rows = [
        (
            "per .ckpt",
            f"{size(d['ckpt_bytes'])}: P x 4 B x (1 + {r['optimizer_states']} "
            f"{r['optimizer']} states), trainable tensors only",
        ),
        (
            "per adapter export",
            f"{size(d['adapter_bytes'])} in {d['adapter_dtype']}, the model's torch_dtype "
            f"(float32: {size(d['adapter_fp32_bytes'])})",
        ),
        (
            "kept at the end",
            f"{d['checkpoints_kept']} .ckpt, {d['checkpoint_adapters_kept']} "
            "checkpoint adapter(s), adapter/ at the end of fit"
            + (f", merged/ {size(d['merged_bytes'])}" if d["merged_bytes"] else ""),
        ),
        ("disk the run writes", size(d["total_bytes"])),
    ]
    return rows


def print_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    """Print the plan as three tables (run, time and memory, disk) and the assumptions."""
    console = console or Console(width=100)
    a = plan["assumptions"]
    run = Table(
        title=f"ESTIMATED cost of {plan['recipe']['source']} (no GPU measured these)",
        show_header=False,
        title_justify="left",
    )
    run.add_column("what", style="bold")
    run.add_column("value")
    for row in _run_rows(plan):
        run.add_row(*row)
    cost = Table(title="Tokens, FLOPs, GPU-hours and memory (estimates)", title_justify="left")
    for name in ("figure", "typical", "bound", "how"):
        cost.add_column(name, justify="left" if name in ("figure", "how") else "right")
    for row in _scenario_rows(plan):
        cost.add_row(*row)
    disk = Table(title="Disk (estimates)", show_header=False, title_justify="left")
    disk.add_column("what", style="bold")
    disk.add_column("value")
    for row in _disk_rows(plan):
        disk.add_row(*row)
    for table in (run, cost, disk):
        console.print(table)
    rate = (
        f"measured rollout rate {a['rollout_tokens_per_s']:,.0f} tokens/s"
        if a["rollout_tokens_per_s"]
        else f"decode at {a['bandwidth_efficiency']:.0%} of {a['hbm_tbps']} TB/s (ASSUMED)"
    )
    console.print(
        f"Assumptions: {a['gpu']}, {a['peak_tflops']} dense bf16 TFLOP/s at MFU {a['mfu']} "
        f"(ASSUMED), {rate}; {a['prompt_text_tokens']} text tokens per prompt. Typical: mean "
        "answer and decode steps as shown; bound: every answer runs to data.max_new_tokens and "
        "every pair is kept. Replace the assumed figures with make gpu-check's (--mfu, "
        "--rollout-tokens-per-s)."
    )
