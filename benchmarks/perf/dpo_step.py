"""One DPO optimizer step, this module versus TRL's ``DPOTrainer``: wall time and peak memory.

    python benchmarks/perf/dpo_step.py                      # llava-shaped, 2 pairs, CPU float32
    python benchmarks/perf/dpo_step.py --module-args response_logits_only=true lora_r=64
    python benchmarks/perf/dpo_step.py --model-path /models/llava-1.5-7b-hf --device cuda

Same model, LoRA, batch, optimizer and machine on both sides, in ONE process, alternating:

* **model**: ``--model llava-shaped`` (default; the random-weight checkpoint of
  ``benchmarks/perf/rollout.py``: CLIP 336 px / patch 14 = 576 image tokens, vocab 32000, text
  256 wide x 4 layers), ``tiny`` (the test-suite model) or ``--model-path`` (any LLaVA checkpoint
  directory, e.g. the real 7B on a GPU). Weights in ``--dtype`` (float32 on CPU, bfloat16 on
  CUDA); no autocast on either side.
* **ours**: ``LlavaDPOModule(**module args)`` configured as usual (LoRA r=8 alpha=16 on the
  language model unless ``--module-args`` say otherwise); a step is ``module.training_step``
  (policy forward of chosen + rejected in one batch, reference forward with adapters disabled,
  sigmoid DPO, metrics), ``loss.backward()``, ``AdamW.step()``, ``zero_grad``.
* **TRL**: ``DPOTrainer`` built by ``lightning_aug_dpo.trl_compat.mirror_trl_dpo_trainer`` from
  the module: a fresh copy of the base, the module's LoRA config and current LoRA tensors,
  the same beta and gradient-checkpointing setting, reference = adapters disabled (TRL's PEFT
  default), ``optim="adamw_torch"`` with the same lr and weight decay 0. A step is
  ``trainer.training_step(model, inputs)`` (``DPOTrainer.compute_loss`` + backward),
  ``trainer.optimizer.step()``, ``zero_grad``, as ``Trainer``'s loop takes it.
* **batch**: ``--batch-size`` pairs; every prompt has ``--prompt-tokens`` text tokens plus the
  image tokens; the ``2B`` chosen and rejected responses have lengths spread evenly over
  ``--response-tokens MIN MAX`` (random non-special ids, EOS last); random images through the
  module's preprocessing. TRL gets the same pairs as its collated batch
  (``trl_preference_inputs``: TRL's own ``DataCollatorForPreference`` + the pixel values, which
  ``tests/test_trl_parity.py`` shows equal to TRL's vision collator output). Data loading and
  collation are outside the timed step on both sides.

``--warmup`` untimed steps per side, then ``--iters`` timed steps per side, alternating (the
order flips every iteration). Time is wall clock per step (CUDA synchronised); the medians
give ``speedup_vs_trl = TRL / ours``. Peak memory is what a step adds above what was live just
before it, median over the timed steps, ``memory_ratio_vs_trl = ours / TRL``:

* CUDA: ``max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats()``.
* CPU (Linux): the kernel's resident-set high-water mark. Before each step: ``gc.collect()``,
  glibc ``malloc_trim(0)`` (freed heap back to the OS), baseline = ``VmRSS``, then the mark is
  reset by writing ``5`` to ``/proc/self/clear_refs``; after the step, peak = ``VmHWM -
  baseline``. ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` at start pins glibc's mmap threshold so
  every large tensor is its own mapping, unmapped when freed, whichever side ran before.

On CPU the JSON also splits out of TRL's step the time in its fused LM head
(``fused_head_seconds``): without Triton TRL runs that head's torch fallback over every position
(image tokens included), which is not the code it runs on a GPU.

Both sides must compute the same thing: the losses of every step are recorded and their largest
difference reported (same start weights, same updates). ``--module-args`` (``key=value``, YAML
values) go to the module constructor and are recorded in the JSON; TRL mirrors what it can
(LoRA config, gradient checkpointing, dtype), and switches TRL has no twin for stay ours only.
Prints a markdown table and writes JSON (machine, settings, per-step numbers) to ``--output``.
"""

from __future__ import annotations

import argparse
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
    mirror_trl_dpo_trainer,
    trl_optimizer_step,
    trl_preference_inputs,
)
from lightning_aug_dpo.types import PairStats, PreferenceBatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import machine_info  # beside this script
from rollout import write_model
from step_measure import PeakMemory, trl_fused_head_timer

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "dpo_step.json"
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


def run_benchmark(args: argparse.Namespace, module_args: dict[str, Any]) -> dict[str, Any]:
    """Build both sides, run the alternating steps; settings, shapes and per-side results."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="dpo-step-") as tmp:
        path = args.model_path or write_model(args.model, Path(tmp) / "model")
        kwargs = {"lora_r": 8, "lora_alpha": 16, "torch_dtype": args.dtype, **module_args}
        torch.manual_seed(args.seed)
        module = LlavaDPOModule(str(path), loss=SigmoidDPOLoss(beta=args.beta), **kwargs)
        module.configure_model()
        module.to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = mirror_trl_dpo_trainer(
                module, Path(tmp) / "trl", args.lr, device=device, seed=args.seed
            )
    batch = make_batch(
        module, args.batch_size, args.prompt_tokens, tuple(args.response_tokens), args.seed
    )
    inputs = trl_preference_inputs(batch, module.tokenizer.pad_token_id)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def ours() -> torch.Tensor:
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def trl() -> torch.Tensor:
        return trl_optimizer_step(trainer, inputs)

    memory = PeakMemory(device)
    sides = {"ours": ours, "trl": trl}
    results: dict[str, dict[str, Any]] = {
        name: {"seconds": [], "peak_mib": [], "loss": []} for name in sides
    }
    results["trl"]["fused_head_seconds"] = []
    with warnings.catch_warnings(), trl_fused_head_timer(device.type == "cpu") as head:
        warnings.simplefilter("ignore")  # self.log without a Lightning Trainer, TRL notices
        for i in range(args.warmup + args.iters):
            order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
            for name in order:
                head_before = head[0] if head else 0.0
                loss, seconds, peak = memory.run(sides[name])
                results[name]["loss"].append(loss)
                if i >= args.warmup:
                    results[name]["seconds"].append(seconds)
                    results[name]["peak_mib"].append(peak)
                    if name == "trl" and head:
                        results[name]["fused_head_seconds"].append(head[0] - head_before)
            print(f"  step {i}: " + _progress(results), file=sys.stderr, flush=True)

    text = module.model.config.text_config
    shape = {
        "image_tokens": module.num_image_tokens(),
        "prompt_tokens": int(batch.prompt_attention_mask[0].sum()),
        "chosen_tokens": batch.chosen_attention_mask.sum(1).tolist(),
        "rejected_tokens": batch.rejected_attention_mask.sum(1).tolist(),
        "sequence_length": int(inputs["attention_mask"].shape[1]),
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in params),
    }
    head = results["trl"]["fused_head_seconds"]
    results["trl"]["median_fused_head_seconds"] = median(head) if head else None
    for side in results.values():
        side["median_seconds"] = median(side["seconds"])
        peaks = [p for p in side["peak_mib"] if p is not None]
        side["median_peak_mib"] = median(peaks) if peaks else None
    hparams = {
        k: v
        for k, v in module.hparams.items()
        if isinstance(v, str | int | float | bool) and k != "model_name_or_path"  # temp dir
    }
    return {"shape": shape, "results": results, "memory_method": memory.method, "hparams": hparams}


def _progress(results: dict[str, dict[str, list]]) -> str:
    return ", ".join(f"{k} loss {v['loss'][-1]:.6f}" for k, v in results.items())


def format_table(report: dict[str, Any]) -> str:
    """Per side: median and range of step time, median peak memory, last loss."""
    head = ["side", "step s (median)", "min", "max", "peak MiB (median)", "last loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label in (("ours", "this module"), ("trl", "TRL DPOTrainer")):
        r = report["results"][name]
        peak = "n/a" if r["median_peak_mib"] is None else f"{r['median_peak_mib']:.0f}"
        cells = [label, f"{r['median_seconds']:.3f}", f"{min(r['seconds']):.3f}"]
        cells += [f"{max(r['seconds']):.3f}", peak, f"{r['loss'][-1]:.6f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = report["memory_ratio_vs_trl"]
    lines.append(
        f"\nspeedup_vs_trl = {report['speedup_vs_trl']:.2f}x, memory_ratio_vs_trl = "
        + ("n/a" if ratio is None else f"{ratio:.2f}")
        + f", largest loss difference = {report['loss_max_abs_diff']:.2e}"
    )
    head = report["results"]["trl"]["median_fused_head_seconds"]
    if head is not None:
        lines.append(f"of TRL's step, its fused LM head (torch fallback, no Triton): {head:.3f} s")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    versions = {"transformers": transformers, "peft": peft, "trl": trl}
    return {name: module.__version__ for name, module in versions.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["llava-shaped", "tiny"], default="llava-shaped")
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
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")
    if not 1 <= args.response_tokens[0] <= args.response_tokens[1]:
        parser.error("--response-tokens MIN MAX needs 1 <= MIN <= MAX")
    try:
        module_args = parse_module_args(args.module_args)
    except ValueError as err:
        parser.error(str(err))
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")

    load_before, started = os.getloadavg(), time.perf_counter()
    out = run_benchmark(args, module_args)
    ours, trl = out["results"]["ours"], out["results"]["trl"]
    peaks = (ours["median_peak_mib"], trl["median_peak_mib"])
    diffs = [abs(a - b) for a, b in zip(ours["loss"], trl["loss"], strict=True)]
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
            "module_args": module_args, "module_hparams": out["hparams"],
            "optimizer": "torch AdamW, weight decay 0 (both)", "autocast": False,
            "reference": "adapters disabled (both)", "memory_method": out["memory_method"],
        },
        "shape": out["shape"],
        "results": out["results"],
        "speedup_vs_trl": trl["median_seconds"] / ours["median_seconds"],
        "memory_ratio_vs_trl": None if None in peaks or peaks[1] <= 0 else peaks[0] / peaks[1],
        "loss_max_abs_diff": max(diffs),
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)  # atomic: an interrupted run keeps the old report
    print(format_table(report))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
