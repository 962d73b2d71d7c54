"""The figures and the Markdown / JSON report of ``benchmarks/gpu_check.py``, derived from each
stage's raw JSON (standard library only, like the check itself)."""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpu_check_sizes import (  # beside this file
    PLAN_LIMIT_GIB,
    decoder_linear_parameters,
    memory_plan,
    step_flops,
    trainable_parameters,
    vision_tower_parameters,
)

if TYPE_CHECKING:
    from gpu_check import Stage

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (first match wins).
PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)


def peak_tflops(device_name: str | None, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    for key, value in PEAK_TFLOPS:
        if device_name and key in device_name:
            return value, f"{key} datasheet, dense bf16"
    return None, "unknown device: give --peak-tflops for MFU"


def dpo_figures(raw: dict[str, Any], n_linear: int, peak: float | None) -> dict[str, Any]:
    shape = raw["shape"]
    pairs = len(shape["chosen_tokens"])
    tokens = 2 * pairs * shape["prompt_tokens"] + sum(shape["chosen_tokens"])
    tokens += sum(shape["rejected_tokens"])
    trainable = shape["trainable_parameters"]
    flops = step_flops(tokens, n_linear, trainable)
    sides = {}
    for name, result in raw["results"].items():
        seconds = result["median_seconds"]
        sides[name] = {
            "seconds_per_step": seconds,
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / seconds,
            "flops_per_step": flops,
            "tflops_per_s": flops / seconds / 1e12,
            "mfu": None if peak is None else flops / seconds / (peak * 1e12),
            "peak_step_mib": result.get("median_peak_mib"),
            "last_loss": result["loss"][-1] if result.get("loss") else None,
        }
    return {
        "pairs": pairs,
        "tokens_per_step": tokens,
        "trainable_parameters": trainable,
        "sequence_length": shape.get("sequence_length"),
        "sides": sides,
        "speedup_vs_trl": raw.get("speedup_vs_trl"),
        "memory_ratio_vs_trl": raw.get("memory_ratio_vs_trl"),
        "loss_max_abs_diff": raw.get("loss_max_abs_diff"),
        "module_args": raw.get("settings", {}).get("module_args"),
    }


def rollout_figures(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in raw["results"]:
        r, p = row["rollout"], row["pairs"]
        rows.append(
            {
                "batch_size": row["batch_size"],
                "rollout_tokens_per_s": r["tokens_per_s"],
                "rollout_ms_per_batch": r["ms_per_batch"],
                "rollout_peak_mib": r.get("peak_mib"),
                "pairs_per_s": p["pairs_per_s"],
                "pairs_ms_per_batch": p["ms_per_batch"],
                "pairs_peak_mib": p.get("peak_mib"),
            }
        )
    return rows


def augment_figures(raw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, row in raw["results"].items():

        def rate(key: str, row=row) -> float | None:
            return None if row.get(key) is None else row[key]["images_per_s"]

        out[name] = {
            "device_img_s": rate("device"),
            "pil_img_s": rate("pil_workers"),
            "speedup": row.get("speedup"),
            "device_pre_aug_img_s": rate("device_preprocess"),
            "pil_pre_aug_img_s": rate("pil_workers_preprocess"),
            "speedup_pre_aug": row.get("speedup_preprocess"),
        }
    return out


def recipe_figures(raw: dict[str, Any], config: dict[str, Any], recipe: dict[str, Any]):
    settings = raw["settings"]
    args = recipe["model_args"]
    tokens = raw.get("tokens", {})
    prompt = tokens.get("prompt", 0)
    measured_plan = memory_plan(
        config,
        args,
        settings["batch_size"],
        prompt,
        settings["response_tokens"],
        settings["rollout_new_tokens"],
    )
    formula = trainable_parameters(config, args)
    peak = raw.get("peak_reserved_mib") or raw.get("peak_allocated_mib")
    cuda = raw.get("device", "").startswith("cuda")
    return {
        "plan": measured_plan,
        "phases": raw.get("phases", {}),
        "peak_allocated_gib": (raw.get("peak_allocated_mib") or 0) / 1024 or None,
        "peak_reserved_gib": (raw.get("peak_reserved_mib") or 0) / 1024 or None,
        "limit_gib": PLAN_LIMIT_GIB,
        "fits_80gb": (peak / 1024 <= PLAN_LIMIT_GIB) if cuda and peak else None,
        "complete": set(raw.get("phases", {})) >= {"load", "step_1", "accumulate", "step_2"},
        "trainable_formula": formula,
        "trainable_measured": {
            "total": raw.get("trainable_parameters"),
            "lora": raw.get("lora_parameters"),
            "modules_to_save": raw.get("modules_to_save_parameters"),
        },
        "trainable_match": formula["total"] == raw.get("trainable_parameters")
        and formula["lora"] == raw.get("lora_parameters"),
        "quantized_4bit": raw.get("quantized_4bit"),
        "settings": settings,
    }


def figures(stages: dict[str, Stage], ctx: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    config = None
    config_path = ctx["work"] / "llava-7b-shaped" / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        ctx["model_config"] = config
    peak, source = peak_tflops(ctx["machine"].get("device_name"), ctx["peak_tflops"])
    out["mfu"] = {
        "peak_tflops": peak,
        "peak_source": source,
        "flops_per_step": "6 * T * (N + P)",
        "T": "tokens of the 2B scored sequences: 2B * prompt (image + text) + sum(chosen) + "
        "sum(rejected)",
        "N": "decoder Linear weights (q, k, v, o, gate, up, down of every layer)",
        "P": "trainable parameters (LoRA)",
        "counts": "policy forward 2T(N+P), policy backward 2T(N+P) (activation grads) + 2TP "
        "(LoRA weight grads; the frozen base has none), reference forward 2TN; not counted: "
        "LM head, vision tower, projector, attention scores, checkpointing recompute. The same "
        "T for both sides: work a side saves (shared prompt, response-only logits) raises its MFU",
    }
    if config is not None:
        out["model"] = {
            "decoder_linear_parameters": decoder_linear_parameters(config["text_config"]),
            "text_config": {
                k: config["text_config"].get(k)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "vocab_size",
                )
            },
            "vision_tower_parameters": vision_tower_parameters(config["vision_config"]),
            "image_tokens": config.get("image_seq_length"),
        }
    for name, key in (("dpo_bf16", "bf16_lora"), ("dpo_nf4", "nf4_qlora")):
        stage = stages.get(name)
        if stage and stage.result and config is not None and "results" in stage.result:
            out.setdefault("dpo", {})[key] = dpo_figures(
                stage.result, out["model"]["decoder_linear_parameters"], peak
            )
            formula = trainable_parameters(
                config, ctx["recipe"]["model_args"] | {"modules_to_save": None}
            )
            out["dpo"][key]["trainable_formula"] = formula["total"]
    stage = stages.get("rollout")
    if stage and stage.result and "results" in stage.result:
        out["rollout"] = {
            "rows": rollout_figures(stage.result),
            "max_new_tokens": stage.result["settings"]["max_new_tokens"],
        }
    stage = stages.get("augment")
    if stage and stage.result and "results" in stage.result:
        out["augment"] = {
            "presets": augment_figures(stage.result),
            "settings": stage.result.get("settings"),
        }
    stage = stages.get("gpu_tests")
    if stage and stage.result:
        out["gpu_tests"] = stage.result
    stage = stages.get("checkpoint")
    if stage and stage.result:
        out["checkpoint"] = stage.result
    stage = stages.get("recipe_memory")
    if stage and stage.result and config is not None:
        out["recipe_memory"] = recipe_figures(stage.result, config, ctx["recipe"])
    if config is not None:  # the plan at the recipe's own sizes (docs/running.md's table)
        recipe = ctx["recipe"]
        prompt = (config.get("image_seq_length") or 0) + 48  # 40 text tokens + the template
        out["memory_plan_recipe"] = memory_plan(
            config,
            recipe["model_args"],
            recipe["batch_size"],
            prompt,
            recipe["max_new_tokens"],
            recipe["max_new_tokens"],
        )
    return out


# ----------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def markdown(report: dict[str, Any]) -> str:
    m, f = report["machine"], report["figures"]
    lines = [
        "# GPU check" + (" (SMOKE RUN: CPU, tiny sizes, not figures)" if report["smoke"] else ""),
        "",
    ]
    lines.append(
        f"{report['date']}, {m.get('device_name') or 'cpu'}, torch {m.get('torch')} "
        f"(CUDA {m.get('torch_cuda')}), Python {m.get('python')}, {m.get('cpu_count')} CPU "
        f"cores; wall {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget. "
        f"Command: `{report['command']}`."
    )
    if report.get("error"):
        lines += ["", f"## Stopped before the stages: {report['status']}", "", "```"]
        lines += [report["error"], "```"]
    versions = {k: v["version"] for k, v in report["needs"]["packages"].items()}
    lines += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    if report.get("wheels") and report["wheels"].get("site"):
        lines.append(
            f"Installed from .whl into {report['wheels']['site']}: "
            + ", ".join(report["wheels"]["wheels"])
            + "."
        )
    for warning in report["needs"].get("warnings", []):
        lines.append(f"- warning: {warning}")
    lines += ["", "## Stages", ""]
    rows = [
        [s["name"], s["status"], s["seconds"], s["timeout_s"], s["title"], s["reason"]]
        for s in report["stages"]
    ]
    lines += _table(["stage", "status", "s", "deadline s", "what", "note"], rows)

    tests = f.get("gpu_tests")
    if tests:
        lines += ["", "## pytest -m gpu", ""]
        lines.append(
            f"{tests['tests']} tests: {tests['passed']} passed, {tests['failed']} "
            f"failed, {tests['errors']} errors, {tests['skipped']} skipped."
        )
        for case in tests["cases"]:
            if case["outcome"] in ("failed", "error"):
                lines.append(f"- {case['test']}: {case['outcome']}: {case['message'][:300]}")

    if f.get("model"):
        tc = f["model"]["text_config"]
        lines += ["", "## The 7B-shaped model", ""]
        ck = f.get("checkpoint", {})
        lines.append(
            f"Text {tc['hidden_size']} wide x {tc['num_hidden_layers']} layers, "
            f"{tc['num_attention_heads']} heads, MLP {tc['intermediate_size']}, vocabulary "
            f"{tc['vocab_size']}; {f['model']['image_tokens']} image tokens; N (decoder Linear "
            f"weights) = {f['model']['decoder_linear_parameters']:,}; "
            f"{_fmt(ck.get('parameters'))} parameters, "
            f"{_fmt((ck.get('weight_bytes') or 0) / 1e9)} GB written to {ck.get('path')} in "
            f"{_fmt(ck.get('total_s'), 1)} s (build {_fmt(ck.get('build_s'), 1)} s on "
            f"{ck.get('device')}, save {_fmt(ck.get('save_s'), 1)} s)."
        )

    if f.get("dpo"):
        mfu = f["mfu"]
        lines += ["", "## DPO step at the 7B shape: ours vs TRL", ""]
        rows = []
        for key, label in (("bf16_lora", "bf16 + LoRA"), ("nf4_qlora", "NF4 + LoRA (QLoRA)")):
            run = f["dpo"].get(key)
            if not run:
                continue
            for side, s in run["sides"].items():
                rows.append(
                    [
                        label,
                        side,
                        s["seconds_per_step"],
                        s["tokens_per_step"],
                        s["tokens_per_s"],
                        s["tflops_per_s"],
                        None if s["mfu"] is None else 100 * s["mfu"],
                        s["peak_step_mib"],
                        run["speedup_vs_trl"] if side == "ours" else None,
                    ]
                )
        lines += _table(
            [
                "base",
                "side",
                "s/step",
                "tokens/step",
                "tokens/s",
                "TFLOP/s",
                "MFU %",
                "peak MiB added by a step",
                "speedup vs TRL",
            ],
            rows,
        )
        lines.append("")
        for key, run in f["dpo"].items():
            lines.append(
                f"- {key}: {run['pairs']} pairs per step, padded length {run['sequence_length']},"
                f" trainable parameters {run['trainable_parameters']:,} (formula "
                f"{run.get('trainable_formula', 0):,}), largest loss difference to TRL "
                f"{_fmt(run['loss_max_abs_diff'], 6)}, module args `{run['module_args']}`"
            )
        lines.append("")
        lines.append(
            f"FLOPs/step = {mfu['flops_per_step']}; T = {mfu['T']}; "
            f"N = {mfu['N']}; P = {mfu['P']}. {mfu['counts']}. MFU peak: "
            f"{_fmt(mfu['peak_tflops'], 1)} TFLOP/s ({mfu['peak_source']}). Peak memory: what a "
            "step allocates above what was live before it (torch.cuda.max_memory_allocated)."
        )

    if f.get("rollout"):
        lines += [
            "",
            f"## Rollouts at the 7B shape ({f['rollout']['max_new_tokens']} new tokens,"
            " bf16, greedy, reference)",
            "",
        ]
        rows = [
            [
                r["batch_size"],
                r["rollout_tokens_per_s"],
                r["rollout_ms_per_batch"],
                r["rollout_peak_mib"],
                r["pairs_per_s"],
                r["pairs_ms_per_batch"],
                r["pairs_peak_mib"],
            ]
            for r in f["rollout"]["rows"]
        ]
        lines += _table(
            [
                "batch",
                "rollout tokens/s",
                "rollout ms/batch",
                "rollout peak MiB",
                "pairs/s (2B rows)",
                "pairs ms/batch",
                "pairs peak MiB",
            ],
            rows,
        )

    if f.get("augment"):
        st = f["augment"]["settings"] or {}
        lines += [
            "",
            f"## Augmentation presets: {st.get('device')} vs PIL on "
            f"{st.get('workers')} workers (batch {st.get('batch_size')}, {st.get('size')} px)",
            "",
        ]
        rows = [
            [
                name,
                r["device_img_s"],
                r["pil_img_s"],
                r["speedup"],
                r["device_pre_aug_img_s"],
                r["pil_pre_aug_img_s"],
                r["speedup_pre_aug"],
            ]
            for name, r in f["augment"]["presets"].items()
        ]
        lines += _table(
            [
                "preset",
                "device img/s",
                "PIL img/s",
                "speed-up",
                "device pre+aug img/s",
                "PIL pre+aug img/s",
                "speed-up pre+aug",
            ],
            rows,
        )

    plan = f.get("memory_plan_recipe")
    rm = f.get("recipe_memory")
    if plan or rm:
        lines += ["", "## Memory plan of configs/seva_llava15_7b.yaml on one 80 GB GPU", ""]
    if plan:
        s = plan["settings"]
        lines.append(
            f"On paper (batch {s['batch_size']}, prompt {s['prompt_tokens']} tokens, answers and "
            f"rollouts of {s['response_tokens']} tokens, NF4 {s['load_in_4bit']}, gradient "
            f"checkpointing {s['gradient_checkpointing']}, LoRA r={s['lora_r']}: "
            f"{plan['trainable_parameters']['total']:,} trainable parameters):"
        )
        lines += ["", *_table(["component", "GiB"], [[k, v] for k, v in plan["gib"].items()])]
        lines.append(f"\nplanned peak {plan['peak_gib']:.1f} GiB vs {PLAN_LIMIT_GIB} GiB usable.")
    if rm:
        lines += [
            "",
            "Measured (`benchmarks/perf/recipe_memory.py`, "
            f"{rm['settings']['batch_size']} pairs, answers of "
            f"{rm['settings']['response_tokens']} tokens, rollout of "
            f"{rm['settings']['rollout_rows']} rows x {rm['settings']['rollout_new_tokens']}"
            " tokens):",
            "",
        ]
        rows = [
            [name, p.get("peak_allocated_mib"), p.get("peak_reserved_mib"), p.get("seconds")]
            for name, p in rm["phases"].items()
        ]
        lines += _table(["phase", "peak allocated MiB", "peak reserved MiB", "s"], rows)
        lines.append("")
        lines.append(
            f"Plan at these sizes: {rm['plan']['peak_gib']:.2f} GiB; measured peak allocated "
            f"{_fmt(rm['peak_allocated_gib'])} GiB, reserved {_fmt(rm['peak_reserved_gib'])} GiB; "
            f"fits an 80 GB GPU ({PLAN_LIMIT_GIB} GiB): {_fmt(rm['fits_80gb'])}; all phases ran: "
            f"{rm['complete']}. Trainable parameters: formula {rm['trainable_formula']['total']:,}"
            f" (LoRA {rm['trainable_formula']['lora']:,} + projector "
            f"{rm['trainable_formula']['modules_to_save']:,}), PEFT "
            f"{_fmt(rm['trainable_measured']['total'])}: match {rm['trainable_match']}."
        )

    failed = [s for s in report["stages"] if s["status"] in ("failed", "timeout")]
    if failed:
        lines += ["", "## Failed stages (output tail)", ""]
        for s in failed:
            lines += [f"### {s['name']} ({s['status']}: {s['reason']})", "", "```"]
            lines += [s.get("log_tail", "")[-3000:], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _tail(path: Path | None, chars: int = 4000) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return text[-chars:]


def write_outputs(
    report: dict[str, Any], stages: list[Stage], out_dir: Path, started: float | None = None
) -> None:
    """``gpu_check.json``, ``.md`` and ``.log`` into ``out_dir`` (``started``: set wall_s)."""
    if started is not None:
        report["wall_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    try:
        text = markdown(report)
    except Exception:
        error = traceback.format_exc()
        text = f"# GPU check\n\nThe report could not be formatted:\n\n```\n{error}```\n"
    (out_dir / "gpu_check.md").write_text(text)
    with (out_dir / "gpu_check.log").open("w") as log:
        for stage in stages:
            log.write(f"===== {stage.name}: {stage.status} {stage.reason}\n")
            log.write(_tail(stage.log, 200_000) + "\n")
