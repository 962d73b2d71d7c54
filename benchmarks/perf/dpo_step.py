"""One DPO optimizer step, this module (prefix sharing on and off) versus TRL's ``DPOTrainer``.

    python benchmarks/perf/dpo_step.py                      # llava-shaped, 2 pairs, CPU float32
    python benchmarks/perf/dpo_step.py --model body-heavy --response-tokens 64 64
    python benchmarks/perf/dpo_step.py --module-args gradient_checkpointing=true --sides ours trl
    python benchmarks/perf/dpo_step.py --model-path /models/llava-1.5-7b-hf --device cuda

Same model, LoRA, batch, optimizer and machine on every side, in ONE process, alternating:

* **model**: ``--model llava-shaped`` (default; the random-weight checkpoint of
  ``benchmarks/perf/rollout.py``: CLIP 336 px / patch 14 = 576 image tokens, vocab 32000, text
  256 wide x 4 layers: vocabulary-heavy, its LM head costs 2.5x its body per token),
  ``body-heavy`` (the same 576 image tokens and vision tower, text 512 wide x 8 layers, MLP
  1376, vocab 2048: the body costs 24x the head per token, as at 7B, where it is 49x), ``tiny``
  (the test-suite model) or ``--model-path`` (any LLaVA checkpoint directory, e.g. the real 7B
  on a GPU). The JSON's ``shape.flops_per_token`` gives body and head FLOPs per token and their
  ratio (``step_measure.FLOPS_FORMULA``: linear layers, ``2 L (2 h d_q + 2 h d_kv + 3 h i)``
  against ``2 h V``). Weights in ``--dtype`` (float32 on CPU, bfloat16 on CUDA); no autocast.
* **ours**: ``LlavaDPOModule(**module args)`` with its defaults (LoRA r=8 alpha=16 on the
  language model unless ``--module-args`` say otherwise; ``share_prompt``: each pair's chosen
  and rejected answers in one packed row ``[prompt | chosen | rejected]``); a step is
  ``module.training_step`` (policy forward, reference forward with adapters disabled, sigmoid
  DPO, metrics), ``loss.backward()``, ``AdamW.step()``, ``zero_grad``.
* **ours_plain**: the same module arguments plus ``share_prompt=false`` (one row per answer,
  the module's step before prefix sharing), the same start LoRA tensors; skipped (and said so
  in ``settings.sides_skipped``) where the module has no ``share_prompt``.
* **trl**: ``DPOTrainer`` built by ``lightning_aug_dpo.trl_compat.mirror_trl_dpo_trainer`` from
  the module: a fresh copy of the base, the module's LoRA config and current LoRA tensors,
  the same beta and gradient-checkpointing setting, reference = adapters disabled (TRL's PEFT
  default), ``optim="adamw_torch"`` with the same lr and weight decay 0. Every ``DPOConfig``
  option that bears on VLM + LoRA + a shared long prompt is set explicitly and recorded in
  ``settings.trl_flags`` with why it is on or off (``TRL_FLAG_NOTES``). ``--trl-compact-head``
  makes TRL's fused LM head project only completion positions on CPU, as it does on a GPU
  (a benchmark patch, off by default: TRL as installed). A step is
  ``trainer.training_step(model, inputs)`` (``DPOTrainer.compute_loss`` + backward),
  ``trainer.optimizer.step()``, ``zero_grad``, as ``Trainer``'s loop takes it.
* ``--sides`` picks among them (``ours`` always runs); all three by default.
* **batch**: ``--batch-size`` pairs; every prompt has ``--prompt-tokens`` text tokens plus the
  image tokens; the ``2B`` chosen and rejected responses have lengths spread evenly over
  ``--response-tokens MIN MAX`` (``64 64``: all 64; random non-special ids, EOS last); random
  images through the module's preprocessing. TRL gets the same pairs as its collated batch
  (``trl_preference_inputs``: TRL's own ``DataCollatorForPreference`` + the pixel values, which
  ``tests/test_trl_parity.py`` shows equal to TRL's vision collator output). Data loading and
  collation are outside the timed step on every side.

``--warmup`` untimed steps per side, then ``--iters`` timed steps per side, alternating (each
iteration rotates the order, so every side runs in every place in turn). Time is wall clock
per step (CUDA synchronised); the medians give ``speedup_vs_trl = TRL / ours`` and
``speedup_vs_plain = ours_plain / ours``. Peak memory is what a step adds above what was live
just before it, median over the timed steps, ``memory_ratio_vs_trl = ours / TRL``:

* CUDA: ``max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats()``.
* CPU (Linux): the kernel's resident-set high-water mark. Before each step: ``gc.collect()``,
  glibc ``malloc_trim(0)`` (freed heap back to the OS), baseline = ``VmRSS``, then the mark is
  reset by writing ``5`` to ``/proc/self/clear_refs``; after the step, peak = ``VmHWM -
  baseline``. ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` at start pins glibc's mmap threshold so
  every large tensor is its own mapping, unmapped when freed, whichever side ran before.

**Tokens computed per pair**, per side: forward pre-hooks on each model's text decoder record
``rows x width`` (padding included) of every forward, policy (grad on) and reference
(``no_grad``) apart, divided by the pairs (``results.<side>.policy_tokens_per_pair``,
``reference_tokens_per_pair``, the per-forward shapes in ``forwards``; images through the
vision tower in ``images_encoded_per_pair``), beside ``shape.ideal_tokens_per_pair`` = prompt +
chosen + rejected. Plain rows (ours_plain, TRL) compute ``2 x (prompt + longest answer)``;
shared rows ``prompt + longest chosen + longest rejected``.

On CPU the JSON also splits out of TRL's step the time in its fused LM head
(``fused_head_seconds``): without Triton TRL runs that head's torch fallback over every position
(image tokens included), which is not the code it runs on a GPU (see ``--trl-compact-head``).

Every side must compute the same thing: the losses of every step are recorded and their largest
difference from ours reported (``loss_max_abs_diff``, per side in ``loss_max_abs_diff_by_side``;
same start weights, same updates). ``--module-args`` (``key=value``, YAML values) go to the
module constructor (both of ours) and are recorded in the JSON; TRL mirrors what it can (LoRA
config, gradient checkpointing, dtype), and switches TRL has no twin for stay ours only.
Prints a markdown table and writes JSON (machine, settings, per-step numbers) to ``--output``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import torch
import yaml

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.losses import SigmoidDPOLoss
from lightning_aug_dpo.models.llava import LlavaDPOModule
from lightning_aug_dpo.trl_compat import (
    copy_trainable_parameters,
    mirror_trl_dpo_trainer,
    trl_optimizer_step,
    trl_preference_inputs,
)
from lightning_aug_dpo.types import PairStats, PreferenceBatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import machine_info  # beside this script
from rollout import ALL_MODELS, write_model
from step_measure import (
    ForwardCounter,
    PeakMemory,
    flops_per_token,
    trl_compact_head,
    trl_fused_head_timer,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "dpo_step.json"
SIDES = ("ours", "ours_plain", "trl")
LABELS = {
    "ours": "this module",
    "ours_plain": "this module, share_prompt=false",
    "trl": "TRL DPOTrainer",
}
# Every DPOConfig option that bears on this case (VLM, LoRA, a long prompt shared by the two
# answers), with why it is on or off; the values written to the JSON are read back from
# trainer.args. ``mirror_trl_dpo_trainer`` sets each explicitly.
TRL_FLAG_NOTES = {
    "loss_type": "sigmoid DPO: the loss both sides compute",
    "beta": "the module's beta",
    "max_length": "None: no truncation, as ours (576 + ~43 + 256 tokens would fit the default "
    "1024 too)",
    "activation_checkpointing": "the module's gradient_checkpointing (off by default) on both "
    "sides, non-reentrant; TRL's own default is on, which trades ~20-30% time for memory",
    "padding_free": "off: TRL 1.16 disables it (warns and pads as usual) and it needs "
    "FlashAttention 2/3, not CPU / sdpa; it would drop padding, not the second prompt",
    "pad_to_multiple_of": "None: no padding beyond the longest row ('auto' pads only on Neuron)",
    "precompute_ref_log_probs": "off: DPOTrainer 1.16 refuses it for vision datasets, and "
    "SeVa's pairs come from online rollouts, so there is no dataset to precompute over; where "
    "allowed it drops the step's reference forward (no-grad, about a third of a LoRA step's "
    "FLOPs) for a reference pass over every pair before training",
    "use_liger_kernel": "off: deprecated in 1.16, Triton (GPU) kernels; DPOTrainer refuses "
    "Liger's fused linear cross-entropy, its own fused LM head already avoids full logits",
    "disable_dropout": "False: nothing to disable (lora_dropout 0, attention_dropout 0 on both), "
    "so the model stays exactly as configured, as ours",
    "use_weighting": "off: WPO weighting is another loss (and an extra head output)",
    "activation_offloading": "off: moves saved activations to host memory; nothing to gain on "
    "CPU, time for memory on a GPU",
    "sync_ref_model": "off: TR-DPO, not supported with PEFT",
    "torch_compile": "off: ours is not compiled either",
    "bf16": "False (fp16 too): no autocast on either side, weights loaded in --dtype",
    "optim": "adamw_torch: torch AdamW, weight decay 0, as ours",
}
TRL_SETUP_NOTES = {
    "ref_model": "None with a PEFT model: the reference is the same model with adapters "
    "disabled (TRL's PEFT default, one copy of the weights), as ours",
    "fused_lm_head": "always on in TRL 1.16 (no switch; 0.x's use_logits_to_keep is gone): "
    "log-probs in vocabulary tiles, never the full logits; on Triton devices (CUDA / XPU) only "
    "completion positions are projected, elsewhere every position (torch fallback)",
    "compact_head_on_cpu": "--trl-compact-head: benchmark patch making TRL project only "
    "completion positions on CPU too, as on a GPU (off: TRL as installed)",
}
WORDS = "please describe what you see in this picture and tell which colour each thing has".split()  # noqa: SIM905


def _question(module: LlavaDPOModule, text_tokens: int) -> str:
    """A question whose formatted prompt has about ``text_tokens`` non-image tokens."""
    words: list[str] = []
    while True:
        question = " ".join(words) + "?"
        ids = module.tokenizer(module.prompt_texts([question])[0]).input_ids
        if len(ids) - module.num_image_tokens() >= text_tokens:
            return question
        words.append(WORDS[len(words) % len(WORDS)])


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def make_batch(
    module: LlavaDPOModule, pairs: int, text_tokens: int, response: tuple[int, int], seed: int
) -> PreferenceBatch:
    """``pairs`` pairs with one prompt and random responses of the given lengths (module doc)."""
    tok = module.tokenizer
    gen = torch.Generator().manual_seed(seed)
    prompt = tok(module.prompt_texts([_question(module, text_tokens)])[0]).input_ids
    lengths = torch.linspace(response[0], response[1], 2 * pairs).round().long()
    lengths = lengths[torch.randperm(2 * pairs, generator=gen)].tolist()
    vocab = module.model.get_input_embeddings().num_embeddings
    special = set(tok.all_special_ids) | {module.image_token_id()}
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    rows = [
        [*allowed[torch.randint(len(allowed), (n - 1,), generator=gen)].tolist(), tok.eos_token_id]
        for n in lengths
    ]
    size = int(module.preprocessor.size)
    images = [torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)]
    prompt_ids, prompt_mask = _right_pad([prompt] * pairs, tok.pad_token_id)
    chosen_ids, chosen_mask = _right_pad(rows[:pairs], tok.pad_token_id)
    rejected_ids, rejected_mask = _right_pad(rows[pairs:], tok.pad_token_id)
    device = module.device
    return PreferenceBatch(
        pixel_values=module.preprocess_images(images * pairs),
        prompt_input_ids=prompt_ids.to(device),
        prompt_attention_mask=prompt_mask.to(device),
        chosen_input_ids=chosen_ids.to(device),
        chosen_attention_mask=chosen_mask.to(device),
        rejected_input_ids=rejected_ids.to(device),
        rejected_attention_mask=rejected_mask.to(device),
        meta={"stats": PairStats(prompts=pairs, kept=pairs, identical=0)},
    )


def parse_module_args(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` with YAML values (``true``, ``64``, ``[a, b]``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--module-args expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def accepts_share_prompt() -> bool:
    """Whether this checkout's module has the ``share_prompt`` switch (the ``ours_plain`` side)."""
    return "share_prompt" in inspect.signature(LlavaDPOModule).parameters


def _trl_flags(trainer: Any, device: torch.device, compact: bool) -> dict[str, Any]:
    """The TRL options of this comparison: value (read back from the trainer) and why."""
    flags = {
        name: {"value": getattr(trainer.args, name), "why": why}
        for name, why in TRL_FLAG_NOTES.items()
    }
    from trl.kernels.chunked_logprob import _use_triton

    head = "completion positions" if _use_triton(device) or compact else "every position"
    setup = {
        "ref_model": "adapters disabled" if trainer.ref_model is None else "separate model",
        "fused_lm_head": f"on, projects {head}",
        "compact_head_on_cpu": compact,
    }
    flags |= {name: {"value": setup[name], "why": why} for name, why in TRL_SETUP_NOTES.items()}
    return flags


def run_benchmark(args: argparse.Namespace, module_args: dict[str, Any]) -> dict[str, Any]:
    """Build the sides, run the alternating steps; settings, shapes and per-side results."""
    device = torch.device(args.device)
    sides = [side for side in SIDES if side in args.sides]
    skipped = {}
    if "ours_plain" in sides and not accepts_share_prompt():
        sides.remove("ours_plain")
        skipped["ours_plain"] = "this checkout's module has no share_prompt argument"
        print("  ours_plain skipped: the module has no share_prompt", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dpo-step-") as tmp:
        path = args.model_path or write_model(args.model, Path(tmp) / "model")
        kwargs = {"lora_r": 8, "lora_alpha": 16, "torch_dtype": args.dtype, **module_args}
        torch.manual_seed(args.seed)
        module = LlavaDPOModule(str(path), loss=SigmoidDPOLoss(beta=args.beta), **kwargs)
        module.to(device)  # first: the base loads (and 4-bit quantises) straight onto it
        module.configure_model()
        plain = trainer = None
        if "ours_plain" in sides:
            torch.manual_seed(args.seed)
            plain_kwargs = {**kwargs, "share_prompt": False}
            plain = LlavaDPOModule(str(path), loss=SigmoidDPOLoss(beta=args.beta), **plain_kwargs)
            plain.to(device)
            plain.configure_model()
            copy_trainable_parameters(module.model, plain.model)
        if "trl" in sides:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = mirror_trl_dpo_trainer(
                    module, Path(tmp) / "trl", args.lr, device=device, seed=args.seed
                )
    batch = make_batch(
        module, args.batch_size, args.prompt_tokens, tuple(args.response_tokens), args.seed
    )
    inputs = trl_preference_inputs(batch, module.tokenizer.pad_token_id)

    def module_step(m: LlavaDPOModule) -> Any:
        params = [p for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

        def step() -> torch.Tensor:
            loss = m.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    steps = {"ours": module_step(module)}
    models = {"ours": module.model}
    if plain is not None:
        steps["ours_plain"], models["ours_plain"] = module_step(plain), plain.model
    if trainer is not None:
        steps["trl"], models["trl"] = (lambda: trl_optimizer_step(trainer, inputs)), trainer.model
    counters = {name: ForwardCounter(model) for name, model in models.items()}

    memory = PeakMemory(device)
    results: dict[str, dict[str, Any]] = {
        name: {"seconds": [], "peak_mib": [], "loss": []} for name in sides
    }
    compact = args.trl_compact_head and "trl" in sides
    if "trl" in sides:
        results["trl"]["fused_head_seconds"] = []
    with (
        warnings.catch_warnings(),
        trl_compact_head(compact),
        trl_fused_head_timer(device.type == "cpu" and "trl" in sides) as head,
    ):
        warnings.simplefilter("ignore")  # self.log without a Lightning Trainer, TRL notices
        for i in range(args.warmup + args.iters):
            shift = i % len(sides)
            for name in sides[shift:] + sides[:shift]:  # each side in each place in turn
                head_before = head[0] if head else 0.0
                loss, seconds, peak = memory.run(steps[name])
                results[name]["loss"].append(loss)
                results[name] |= counters[name].take(args.batch_size)  # the same every step
                if i >= args.warmup:
                    results[name]["seconds"].append(seconds)
                    results[name]["peak_mib"].append(peak)
                    if name == "trl" and head:
                        results[name]["fused_head_seconds"].append(head[0] - head_before)
            print(f"  step {i}: " + _progress(results), file=sys.stderr, flush=True)
    for counter in counters.values():
        counter.remove()

    text = module.model.config.text_config
    prompt = int(batch.prompt_attention_mask[0].sum())
    chosen = batch.chosen_attention_mask.sum(1).tolist()
    rejected = batch.rejected_attention_mask.sum(1).tolist()
    shape = {
        "model": str(args.model_path or args.model),
        "image_tokens": module.num_image_tokens(),
        "prompt_tokens": prompt,
        "chosen_tokens": chosen,
        "rejected_tokens": rejected,
        "sequence_length": int(inputs["attention_mask"].shape[1]),
        # each pair's prompt once and each answer once: what a forward must compute at least
        "ideal_tokens_per_pair": prompt + (sum(chosen) + sum(rejected)) / len(chosen),
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "flops_per_token": flops_per_token(text),
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }
    if "trl" in results:
        head_s = results["trl"]["fused_head_seconds"]
        results["trl"]["median_fused_head_seconds"] = median(head_s) if head_s else None
    for side in results.values():
        side["median_seconds"] = median(side["seconds"])
        peaks = [p for p in side["peak_mib"] if p is not None]
        side["median_peak_mib"] = median(peaks) if peaks else None
    hparams = {
        k: v
        for k, v in module.hparams.items()
        if isinstance(v, str | int | float | bool) and k != "model_name_or_path"  # temp dir
    }
    return {
        "shape": shape,
        "results": results,
        "sides": sides,
        "sides_skipped": skipped,
        "trl_flags": None if trainer is None else _trl_flags(trainer, device, compact),
        "memory_method": memory.method,
        "hparams": hparams,
    }


def _progress(results: dict[str, dict[str, list]]) -> str:
    return ", ".join(f"{k} loss {v['loss'][-1]:.6f}" for k, v in results.items())


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den <= 0 else num / den


def format_table(report: dict[str, Any]) -> str:
    """Per side: median and range of step time, median peak memory, tokens computed per pair
    (policy and reference forwards, padding included), last loss."""
    head = ["side", "step s (median)", "min", "max", "peak MiB (median)"]
    head += ["policy tok/pair", "reference tok/pair", "last loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["results"].items():
        peak = "n/a" if r["median_peak_mib"] is None else f"{r['median_peak_mib']:.0f}"
        cells = [LABELS[name], f"{r['median_seconds']:.3f}", f"{min(r['seconds']):.3f}"]
        cells += [f"{max(r['seconds']):.3f}", peak, f"{r['policy_tokens_per_pair']:.0f}"]
        cells += [f"{r['reference_tokens_per_pair']:.0f}", f"{r['loss'][-1]:.6f}"]
        lines.append("| " + " | ".join(cells) + " |")

    def show(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    shape = report["shape"]
    lines.append(
        f"\nspeedup_vs_trl = {show(report['speedup_vs_trl'], 'x')}, speedup_vs_plain = "
        f"{show(report['speedup_vs_plain'], 'x')}, memory_ratio_vs_trl = "
        f"{show(report['memory_ratio_vs_trl'])}, largest loss difference = "
        f"{report['loss_max_abs_diff']:.2e}; ideal tokens per pair (prompt + chosen + "
        f"rejected) = {shape['ideal_tokens_per_pair']:.0f}; body / LM head FLOPs per token = "
        f"{shape['flops_per_token']['body_to_head_ratio']:.1f}"
    )
    trl = report["results"].get("trl")
    if trl and trl["median_fused_head_seconds"] is not None:
        lines.append(
            f"of TRL's step, its fused LM head (torch fallback, no Triton): "
            f"{trl['median_fused_head_seconds']:.3f} s"
        )
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    versions = {"transformers": transformers, "peft": peft, "trl": trl}
    return {name: module.__version__ for name, module in versions.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = [m for m in ALL_MODELS if m != "tiny"] + ["tiny"]
    parser.add_argument("--model", choices=models, default="llava-shaped")
    parser.add_argument("--model-path", type=Path, help="an existing LLaVA checkpoint instead")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    parser.add_argument("--prompt-tokens", type=int, default=40, help="text tokens per prompt")
    parser.add_argument("--response-tokens", type=int, nargs=2, default=[100, 200])
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per side")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument(
        "--module-args", nargs="*", default=[], metavar="KEY=VALUE",
        help="extra LlavaDPOModule arguments, e.g. response_logits_only=true lora_r=64",
    )  # fmt: skip
    parser.add_argument(
        "--sides", nargs="+", choices=SIDES, default=list(SIDES),
        help="which steps to run (ours is always run): ours = the module as configured, "
        "ours_plain = the same with share_prompt=false, trl = TRL's DPOTrainer",
    )  # fmt: skip
    parser.add_argument(
        "--trl-compact-head", action="store_true",
        help="patch TRL's fused LM head to project only completion positions on CPU too, as it "
        "does on a GPU (default: TRL as installed)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    if not 1 <= args.response_tokens[0] <= args.response_tokens[1]:
        parser.error("--response-tokens MIN MAX needs 1 <= MIN <= MAX")
    args.sides = ["ours", *(side for side in args.sides if side != "ours")]
    try:
        module_args = parse_module_args(args.module_args)
    except ValueError as err:
        parser.error(str(err))
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    load_before, started = os.getloadavg(), time.perf_counter()
    out = run_benchmark(args, module_args)
    results = out["results"]
    ours, trl, plain = results["ours"], results.get("trl", {}), results.get("ours_plain", {})
    diffs = {
        name: max(abs(a - b) for a, b in zip(ours["loss"], side["loss"], strict=True))
        for name, side in results.items()
        if name != "ours"
    }
    report = {
        "benchmark": "dpo_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/perf/dpo_step.py", *given]),
        "machine": {**machine_info(device), **_versions()},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - started,
        "settings": {
            "model": str(args.model_path or args.model), "batch_size": args.batch_size,
            "prompt_text_tokens": args.prompt_tokens, "response_tokens": args.response_tokens,
            "device": str(device), "dtype": args.dtype, "warmup": args.warmup,
            "iters": args.iters, "lr": args.lr, "beta": args.beta, "seed": args.seed,
            "sides": out["sides"], "sides_skipped": out["sides_skipped"],
            "module_args": module_args, "module_hparams": out["hparams"],
            "plain_module_args": {**module_args, "share_prompt": False},
            "trl_flags": out["trl_flags"],
            "optimizer": "torch AdamW, weight decay 0 (all sides)", "autocast": False,
            "reference": "adapters disabled (all sides)", "memory_method": out["memory_method"],
            "tokens_counted": "rows x width (padding included) of every text-decoder forward, "
            "policy (grad on) and reference (no_grad) apart, divided by the pairs",
        },
        "shape": out["shape"],
        "results": results,
        "tokens_per_pair": {
            **{name: {"policy": r["policy_tokens_per_pair"],
                      "reference": r["reference_tokens_per_pair"]}
               for name, r in results.items()},
            "ideal": out["shape"]["ideal_tokens_per_pair"],
        },
        "speedup_vs_trl": _ratio(trl.get("median_seconds"), ours["median_seconds"]),
        "speedup_vs_plain": _ratio(plain.get("median_seconds"), ours["median_seconds"]),
        "memory_ratio_vs_trl": _ratio(ours["median_peak_mib"], trl.get("median_peak_mib")),
        "memory_ratio_vs_plain": _ratio(ours["median_peak_mib"], plain.get("median_peak_mib")),
        "loss_max_abs_diff": max(diffs.values(), default=0.0),
        "loss_max_abs_diff_by_side": diffs,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)  # atomic: an interrupted run keeps the old report
    print(format_table(report))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
