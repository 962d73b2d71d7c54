"""Soak: the demo pipeline for 500 optimizer steps on CPU, memory sampled every 50 steps.

    python benchmarks/perf/soak.py                       # 500 steps, samples every 50, warm-up 100
    python benchmarks/perf/soak.py --steps 150 --output /tmp/soak.json

What runs: ``configs/demo_mmvet.yaml`` through ``LightningCLI`` (``cli_main(run=False)`` then
``trainer.fit``), on the demo assets (``lightning_aug_dpo.demo.prepare_demo_assets``; written to a
temporary folder unless ``--assets`` names one), with every part of the demo on: online rollouts
of the reference on the clean and the diffusion-noised image (adaptive strength), DPO of the
LoRA policy with the warm-up cosine schedule, validation rollouts every epoch, the CSVLogger
(every step logged and appended to ``metrics.csv``), ``AdapterCheckpoint`` (a ``.ckpt`` and a
PEFT adapter every epoch, the previous ones deleted), ``MMVetCallback`` (toy MM-Vet, rule judge),
``PairGalleryCallback`` (``gallery.html`` rewritten at every logged step) and ``RunSummary``.
Only the sizes change, so that 500 steps are affordable on a CPU (see ``SoakSettings``): a
``--batch-size`` of 2 prompts, ``--max-new-tokens`` 4, ``--num-prompts`` 20 (10 steps per epoch,
50 epochs), 4 validation prompts, MM-Vet every 4 epochs on 8 questions, the gallery every 5
steps, one torch thread. ``trainer.max_steps`` = ``--steps`` (``max_epochs: -1``); no progress
bar. The test suite's assets (32 images) are enough.

Memory: a callback (``MemorySampler``) samples at the end of every ``--every``-th optimizer
step, and once more after ``fit`` (``end``: after the last epoch's evaluation, checkpoint,
summary and adapter). Each sample first runs ``gc.collect()`` and glibc's ``malloc_trim(0)``
(freed heap handed back to the OS: without it RSS also counts free chunks glibc keeps, which
moves with the last step's allocation pattern, not with what is live), then reads ``VmRSS``
from ``/proc/self/status`` (torch's CPU tensors are plain ``malloc``s, invisible to
``tracemalloc``), and counts Python's allocated blocks (``sys.getallocatedblocks``), the objects
the garbage collector tracks and, among them, live ``torch.Tensor``s. The counts cost a walk of
the heap (~1 s), hence only at samples; they catch small leaks (a list of rows or tensors that
grows per step) long before RSS would, and each sample after the baseline names the types that
gained most objects since it (``grown_types`` in the JSON), to point at a leak's owner.

Criterion: after warm-up, RSS grows by at most ``--tolerance`` (5%). **Warm-up** is the first
``--warmup`` steps (100); the **baseline** is the sample at that step. By then every one-time
allocation of the run has happened at least once: AdamW's state (step 1), the first validation,
checkpoint + adapter write (end of epoch 0, step 10), the first MM-Vet evaluation (end of epoch
3, step 40), the gallery's page at its ``max_sections`` = 20 sections (step 95; bounded by
design), and ``generate``'s and the allocator's caches at their working size. **Growth** = (the
largest RSS sampled after the baseline, the ``end`` sample included) / baseline - 1. Taking the
single sample at step 100 rather than a maximum over early samples keeps the bar strict (an
early spike cannot raise it); after ``gc.collect()`` + ``malloc_trim(0)`` its noise is a few MiB
on a ~490 MiB process.

Prints a markdown table (step, RSS MiB, growth vs baseline, Python blocks, gc objects,
tensors, seconds since start) and the verdict, and writes JSON (machine, settings, samples,
verdict, the run's summary) to ``--output``. Exit status 0 when the criterion holds, 1 when not.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.demo import prepare_demo_assets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import machine_info  # beside this script

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo_mmvet.yaml"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "soak.json"
MIB = 2**20

__all__ = ["MemorySampler", "SoakSettings", "judge", "main", "memory_sample", "run_soak"]


@dataclass(frozen=True)
class SoakSettings:
    """The soak's sizes; everything else is ``configs/demo_mmvet.yaml``.

    Args:
        steps: optimizer steps (``trainer.max_steps``).
        every: sample memory at every multiple of this step.
        warmup: the baseline is the sample at this step (a multiple of ``every``).
        tolerance: the largest allowed RSS growth after the baseline, as a fraction.
        batch_size: prompts per step.
        max_new_tokens: rollout length.
        num_prompts: training prompts (``num_prompts / batch_size`` steps per epoch).
        num_val_prompts: validation prompts, rolled out at every epoch end.
        mmvet_every_n_epochs: MM-Vet evaluation period (and after the last epoch).
        mmvet_limit: MM-Vet questions evaluated.
        gallery_every_n_steps: the gallery logs a step at this period.
        seed: ``seed_everything`` and the data seed.
        threads: torch intra-op threads during the run (restored after). One: the tiny
            model's matrices are too small to share, and on a loaded machine two threads
            spin-waiting on each other made steps ~4x slower.
    """

    steps: int = 500
    every: int = 50
    warmup: int = 100
    tolerance: float = 0.05
    batch_size: int = 2
    max_new_tokens: int = 4
    num_prompts: int = 20
    num_val_prompts: int = 4
    mmvet_every_n_epochs: int = 4
    mmvet_limit: int = 8
    gallery_every_n_steps: int = 5
    seed: int = 42
    threads: int = 1

    def check(self) -> None:
        """Refuse settings under which the verdict would mean nothing."""
        if min(self.steps, self.every, self.batch_size, self.max_new_tokens, self.threads) < 1:
            raise ValueError("steps, every, batch_size, max_new_tokens, threads must be >= 1")
        if self.warmup % self.every or not self.every <= self.warmup < self.steps:
            raise ValueError(
                f"warmup ({self.warmup}) must be a multiple of every ({self.every}), at least "
                f"one period and below steps ({self.steps}): samples must follow the baseline"
            )


# ---------------------------------------------------------------------- memory
class _Trim:
    """glibc's ``malloc_trim(0)``, or nothing where there is no glibc."""

    def __init__(self) -> None:
        try:
            self.libc: Any = ctypes.CDLL("libc.so.6")
        except OSError:
            self.libc = None

    def __call__(self) -> bool:
        if self.libc is None:
            return False
        self.libc.malloc_trim(0)
        return True


_trim = _Trim()


def rss_bytes() -> int:
    """Resident set size of this process (``VmRSS``), in bytes."""
    text = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    if match is None:
        raise RuntimeError("no VmRSS in /proc/self/status: the soak needs Linux")
    return int(match.group(1)) * 1024


def census() -> tuple[int, int, Counter[str]]:
    """Objects the garbage collector tracks, how many are torch tensors (parameters and buffers
    included) and the count per type name.

    ``type()``, not ``isinstance``: the latter reads ``__class__``, which some deprecated torch
    objects turn into a warning."""
    objects = gc.get_objects()
    types = Counter(type(obj).__qualname__ for obj in objects)
    tensors = sum(1 for obj in objects if issubclass(type(obj), torch.Tensor))
    return len(objects), tensors, types


def memory_sample(step: int | str, started: float) -> tuple[dict[str, Any], Counter[str]]:
    """One sample (RSS after ``gc.collect()`` + ``malloc_trim(0)``, object counts) and the
    count of live objects per type."""
    gc.collect()
    trimmed = _trim()
    rss = rss_bytes()
    blocks = sys.getallocatedblocks()
    objects, tensors, types = census()
    sample = {
        "step": step,
        "rss_mib": rss / MIB,
        "python_blocks": blocks,
        "gc_objects": objects,
        "tensors": tensors,
        "seconds": time.perf_counter() - started,
        "malloc_trim": trimmed,
    }
    return sample, types


def grown_types(before: Counter[str], after: Counter[str], top: int = 5) -> dict[str, int]:
    """The ``top`` types whose live object count grew most from ``before`` to ``after``."""
    diff = after - before  # keeps positive differences only
    return dict(diff.most_common(top))


class MemorySampler(pl.Callback):
    """Samples memory (``memory_sample``) at every ``every_n_steps``-th optimizer step.

    A step is sampled once, at the end of the batch that completed it (the batch-end hook runs
    again with the same ``global_step`` after a batch left empty by filtering). Samples after
    ``baseline_step`` carry ``grown_types``: the types that gained most objects since it.
    """

    def __init__(self, every_n_steps: int, baseline_step: int) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.baseline_step = baseline_step
        self.samples: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self._last: int | None = None
        self._baseline_types: Counter[str] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last or step % self.every_n_steps:
            return
        self._last = step
        self.sample(step)

    def sample(self, step: int | str) -> dict[str, Any]:
        """Take and keep one sample (``step="end"`` after ``fit`` returned)."""
        sample, types = memory_sample(step, self.started)
        if step == self.baseline_step:
            self._baseline_types = types
        elif self._baseline_types is not None:
            sample["grown_types"] = grown_types(self._baseline_types, types)
        self.samples.append(sample)
        return sample


def judge(samples: list[dict[str, Any]], warmup: int, tolerance: float) -> dict[str, Any]:
    """The verdict: the largest RSS after the step-``warmup`` sample, relative to it."""
    steps = [s["step"] for s in samples]
    if warmup not in steps:
        raise ValueError(f"no sample at the warm-up step {warmup}: sampled {steps}")
    at = steps.index(warmup)
    baseline, after = samples[at], samples[at + 1 :]
    if not after:
        raise ValueError(f"no sample after the warm-up step {warmup}")
    worst = max(after, key=lambda s: s["rss_mib"])
    growth = worst["rss_mib"] / baseline["rss_mib"] - 1.0
    return {
        "baseline_step": warmup,
        "baseline_rss_mib": baseline["rss_mib"],
        "max_rss_mib_after_warmup": worst["rss_mib"],
        "max_at_step": worst["step"],
        "growth": growth,
        "tolerance": tolerance,
        "passed": growth <= tolerance,
        "tensors_at_baseline": baseline["tensors"],
        "max_tensors_after_warmup": max(s["tensors"] for s in after),
        "gc_objects_at_baseline": baseline["gc_objects"],
        "max_gc_objects_after_warmup": max(s["gc_objects"] for s in after),
    }


# ---------------------------------------------------------------------- the run
def soak_config(assets: dict[str, Path], out: Path, s: SoakSettings) -> dict[str, Any]:
    """``configs/demo_mmvet.yaml`` with the demo assets at ``assets``, outputs under ``out`` and the
    sizes of ``s`` (see the module docstring); every callback of the demo but the progress bar."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["seed_everything"] = s.seed
    trainer = config["trainer"]
    trainer |= {"max_epochs": -1, "max_steps": s.steps, "default_root_dir": str(out)}
    trainer |= {"enable_progress_bar": False, "enable_model_summary": False}
    trainer["logger"]["init_args"] |= {"save_dir": str(out), "name": "soak"}
    callbacks = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ProgressBar")]
    overrides = {
        "MMVetCallback": {
            "data_dir": str(assets["benchmark"].parent),
            "every_n_epochs": s.mmvet_every_n_epochs,
            "limit": s.mmvet_limit,
        },
        "PairGalleryCallback": {"every_n_steps": s.gallery_every_n_steps},
    }
    for callback in callbacks:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name in overrides:
            callback["init_args"] = callback.get("init_args", {}) | overrides[name]
    trainer["callbacks"] = callbacks
    config["model"]["init_args"]["model_name_or_path"] = str(assets["model"])
    config["data"]["init_args"] |= {
        "data_path": str(assets["prompts"]),
        "image_folder": str(assets["prompts"].parent / "images"),
        "num_prompts": s.num_prompts,
        "num_val_prompts": s.num_val_prompts,
        "seed": s.seed,
        "batch_size": s.batch_size,
        "max_new_tokens": s.max_new_tokens,
    }
    return config


def run_soak(s: SoakSettings, assets_dir: Path, out: Path) -> dict[str, Any]:
    """Fit the soak configuration; the samples, the verdict and what the run did."""
    s.check()
    assets = prepare_demo_assets(assets_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "soak.yaml"
    config_path.write_text(yaml.safe_dump(soak_config(assets, out, s), sort_keys=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        cli = cli_main(["--config", str(config_path)], run=False)
        sampler = MemorySampler(s.every, s.warmup)
        cli.trainer.callbacks.append(sampler)
        started = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_seconds = time.perf_counter() - started
        sampler.sample("end")
    finally:
        torch.set_num_threads(threads)
    run = Path(cli.trainer.log_dir)
    summary = json.loads((run / "summary.json").read_text())
    report = {
        "samples": sampler.samples,
        "verdict": judge(sampler.samples, s.warmup, s.tolerance),
        "optimizer_steps": cli.trainer.global_step,
        # steps whose batch had no pair left (every answer pair identical): Lightning counts
        # them as steps, the module makes no update in them
        "empty_batches": cli.model.empty_batches,
        "nonfinite_steps": cli.model.nonfinite_steps,
        "epochs": cli.trainer.current_epoch,
        "fit_seconds": fit_seconds,
        "run_dir": str(run),
        "summary": summary,
    }
    del cli, sampler
    gc.collect()
    return report


# ---------------------------------------------------------------------- report
def format_table(samples: list[dict[str, Any]], baseline_step: int) -> str:
    """The samples as a markdown table, growth relative to the step-``baseline_step`` one."""
    base = next(s["rss_mib"] for s in samples if s["step"] == baseline_step)
    head = ["step", "RSS MiB", "vs baseline", "Python blocks", "gc objects", "tensors", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in samples:
        mark = " (baseline)" if s["step"] == baseline_step else ""
        growth = f"{100 * (s['rss_mib'] / base - 1):+.2f}%{mark}"
        cells = [str(s["step"]), f"{s['rss_mib']:.1f}", growth, str(s["python_blocks"])]
        cells += [str(s["gc_objects"]), str(s["tensors"]), f"{s['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_line(verdict: dict[str, Any]) -> str:
    state = "PASS" if verdict["passed"] else "FAIL"
    return (
        f"{state}: RSS growth after warm-up {100 * verdict['growth']:+.2f}% "
        f"(max {verdict['max_rss_mib_after_warmup']:.1f} MiB at step {verdict['max_at_step']} "
        f"vs {verdict['baseline_rss_mib']:.1f} MiB at step {verdict['baseline_step']}; "
        f"tolerance {100 * verdict['tolerance']:.0f}%)"
    )


def _machine() -> dict[str, Any]:
    info = machine_info(torch.device("cpu"))
    match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    info["ram_gib"] = round(int(match.group(1)) / 2**20, 1) if match else None
    import lightning
    import peft
    import transformers

    info |= {"transformers": transformers.__version__, "peft": peft.__version__}
    info["lightning"] = lightning.__version__
    return info


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakSettings()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value, help=f"(default {value})")
    parser.add_argument("--assets", type=Path, default=None, help="demo assets (default: temp)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    fields = SoakSettings.__dataclass_fields__
    settings = SoakSettings(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        settings.check()
    except ValueError as err:
        parser.error(str(err))
    print(f"soak: {asdict(settings)}", file=sys.stderr, flush=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        assets = args.assets or Path(tmp) / "demo_assets"
        result = run_soak(settings, assets, Path(tmp) / "runs")
    report = {
        "benchmark": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/perf/soak.py", *given]),
        "machine": _machine() | {"torch_threads": settings.threads},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - started,
        "settings": asdict(settings),
        **result,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(result["samples"], settings.warmup))
    print(verdict_line(result["verdict"]))
    print(
        f"{result['optimizer_steps']} optimizer steps ({result['empty_batches']} without pairs), "
        f"{result['epochs']} epochs, "
        f"fit {result['fit_seconds']:.0f} s",
        file=sys.stderr,
    )
    print(f"wrote {args.output}", file=sys.stderr)
    return 0 if result["verdict"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
