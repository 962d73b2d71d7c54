"""``make gpu-check``: every figure this project lacks from a GPU, in one command (<= 8 minutes).

    python3 benchmarks/gpu_check.py                         # on a CUDA machine: the real run
    python3 benchmarks/gpu_check.py --output-dir DIR        # figures into DIR (copy .whl/ first)
    python3 benchmarks/gpu_check.py --smoke                 # CPU, tiny sizes (tests run this)

It first checks its needs (every Python package the stages import, at the versions the project
requires) and stops AT ONCE, naming each missing package and the command that fixes it, instead of
failing minutes in. Wheels in ``.whl/`` at the repository root (``make gpu-wheels`` fills it where
pip reaches the index; the GPU machine has none) are installed into ``--site`` with ``pip install
--no-index --no-deps --target`` and put on ``PYTHONPATH`` first; the project itself is used from
the checkout (``PYTHONPATH`` = repository root, no ``pip install -e .``).

Then the stages run one after another, each as a subprocess of a benchmark's command line with a
deadline of its own, so that one that hangs is killed and reported and the others still run.
Deadlines roll forward: stage ``i`` must end by ``start + scale * (w_1 + ... + w_i)``, ``w`` the
stage weights below and ``scale`` fitting their sum into ``--budget-s`` (480 s), so the time a
stage leaves goes to the next ones and the whole check never exceeds the budget:

==============  ===  ==========================================================================
stage           w/s  what (at the 7B shape unless said)
==============  ===  ==========================================================================
probe            15  imports, CUDA device, a bitsandbytes NF4 round trip on the device
gpu_tests        60  ``pytest -m gpu tests/test_gpu.py`` (JUnit XML: passed/failed/skipped; the
                     smoke run records it as skipped: without CUDA every one of them skips)
augment          40  ``benchmarks/perf/augment.py``: every preset on CUDA vs PIL, all-core workers
checkpoint       40  ``benchmarks/perf/shaped_llava.py``: LLaVA-1.5-7B-shaped random checkpoint
dpo_bf16         80  ``benchmarks/perf/dpo_step.py``: DPO step, bf16 base + recipe LoRA, vs TRL
dpo_nf4          80  the same on the NF4 (QLoRA) base (the base, and TRL's copy, load and
                     quantise straight onto the GPU)
rollout          65  ``benchmarks/perf/rollout.py --model-path``: rollouts at batch 8 / 16 / 32
recipe_memory   100  ``benchmarks/perf/recipe_memory.py``: configs/seva_llava15_7b.yaml's steps and
                     rollouts at its batch and longest answers, peak memory vs the 80 GB plan
==============  ===  ==========================================================================

Figures derived here (the report states each formula): tokens per DPO step ``T`` = every token of
the ``2B`` scored sequences (image + prompt + answer), tokens/s = ``T`` / median s/step; FLOPs per
step ``6 T (N + P)`` with ``N`` the decoder's Linear weights and ``P`` the trainable parameters
(policy forward ``2T(N+P)``, its backward ``2T(N+P)`` for activation gradients plus ``2TP`` for
the LoRA weight gradients - the frozen base has none -, reference forward ``2TN``; LM head, vision
tower, attention scores and checkpointing recompute not counted); MFU = FLOPs / (s/step x peak),
peak = ``--peak-tflops`` or the datasheet's dense bf16 figure for the device (H100 SXM / H200:
989).

Output (``--output-dir``, default ``benchmarks/results/gpu_check``; ``--smoke``:
``gpu_check_smoke``): ``gpu_check.json`` (everything: needs, machine, per-stage status, seconds,
settings and raw results, the derived figures, the memory plan), ``gpu_check.md`` (the same as
tables) and ``gpu_check.log`` (each stage's output, capped). The 7B checkpoint (14 GB) goes to
``--work-dir`` (default: ``/dev/shm`` when it has room, else the temp dir) and is deleted at the
end. Exit status: 0 all stages passed, 1 some failed or timed out, 2 needs missing (nothing ran).
Imports only the standard library (and PyYAML, packaging where present) so that it can report
what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "benchmarks" / "perf"
WHEEL_DIR = ROOT / ".whl"
RECIPE = ROOT / "configs" / "seva_llava15_7b.yaml"
DEFAULT_SITE = Path(tempfile.gettempdir()) / "gpu-check-site"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_report import _tail, figures, write_outputs  # noqa: E402
from gpu_check_sizes import GIB  # noqa: E402
from gpu_wheels import canonical  # noqa: E402
from gpu_wheels import read_pins as wheel_pins  # noqa: E402


# ----------------------------------------------------------------------------------- needs
@dataclass(frozen=True)
class Need:
    """A distribution a stage imports: PEP 440 ``spec``, import ``module``, ``stages`` (empty:
    every stage, because ``lightning_aug_dpo`` itself imports it)."""

    dist: str
    spec: str
    module: str
    stages: tuple[str, ...] = ()


# setup.cfg install_requires (tests/test_gpu_check.py keeps these in step), the test extra's
# trl and pytest, and what those need that the GPU machine lacks. torch is the machine's own CUDA
# build, whatever its version (the report records it): no wheel can replace it there.
NEEDS = (
    Need("torch", "", "torch"),
    Need("transformers", ">=5.24,<6", "transformers"),
    Need("peft", ">=0.21.2,<1", "peft"),
    Need("lightning", ">=2.6.6,<3", "lightning"),
    Need("torchmetrics", ">=1.6,<2", "torchmetrics"),
    Need("kornia", ">=0.9,<1", "kornia"),
    Need("kornia_rs", "", "kornia_rs"),
    Need("jsonargparse", ">=4.53,<5", "jsonargparse"),
    Need("docstring_parser", "", "docstring_parser", ("gpu_tests",)),
    Need("typeshed_client", "", "typeshed_client", ("gpu_tests",)),
    Need("rich", ">=13.7", "rich"),
    Need("pillow", ">=11", "PIL"),
    Need("pyyaml", "", "yaml"),
    Need("safetensors", "", "safetensors"),
    Need("tokenizers", "", "tokenizers"),
    Need("numpy", "", "numpy"),
    Need("bitsandbytes", ">=0.50.2,<1", "bitsandbytes", ("gpu_tests", "dpo_nf4", "recipe_memory")),
    Need("trl", ">=1.16,<2", "trl", ("dpo_bf16", "dpo_nf4")),
    Need("datasets", "", "datasets", ("dpo_bf16", "dpo_nf4")),
    Need("dill", "", "dill", ("dpo_bf16", "dpo_nf4")),
    Need("multiprocess", "", "multiprocess", ("dpo_bf16", "dpo_nf4")),
    Need("accelerate", "", "accelerate", ("dpo_bf16", "dpo_nf4")),
    Need("pytest", ">=8.3", "pytest", ("gpu_tests",)),
)


def read_pins() -> dict[str, str]:
    """``{canonical name: version}`` that ``make gpu-wheels`` carries (the lock's versions)."""
    return {canonical(name): version for name, version in wheel_pins().items()}


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _satisfies(version: str, spec: str) -> bool | None:
    """Whether ``version`` meets ``spec``; ``None`` when ``packaging`` is not importable."""
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return None
    return Version(version) in SpecifierSet(spec)


def check_needs(
    stages: list[str], installed: Any = None, pins: dict[str, str] | None = None
) -> dict[str, Any]:
    """Every need of ``stages``: installed version, whether it meets the spec, whether
    ``make gpu-wheels`` carries it. ``problems``: one line per missing or too old package.
    ``installed(dist)``: its version or ``None`` (default: this interpreter's metadata)."""
    installed = installed or _installed
    pins = read_pins() if pins is None else pins
    packages, problems, unchecked = {}, [], []
    for need in NEEDS:
        if need.stages and not set(need.stages) & set(stages):
            continue
        version = installed(need.dist)
        ok = None if version is None else _satisfies(version, need.spec)
        pin = pins.get(canonical(need.dist))
        packages[need.dist] = {
            "version": version,
            "required": need.spec or "any",
            "ok": bool(version) and ok is not False,
            "wheel": f"{need.dist}=={pin}" if pin else None,
            "for": list(need.stages) or ["all stages"],
        }
        if ok is None and version is not None:
            unchecked.append(need.dist)
        if version is None or ok is False:
            state = "not installed" if version is None else f"{version} installed"
            fix = (
                f"carried by make gpu-wheels as {need.dist}=={pin}"
                if pin
                else (
                    "not in benchmarks/gpu_wheels.txt: preinstall it (pip install "
                    f"'{need.dist}{need.spec}')"
                )
            )
            stage_list = ", ".join(need.stages) or "all stages"
            problems.append(f"  {need.dist}{need.spec or ''}: {state} (for {stage_list}); {fix}")
    return {"packages": packages, "problems": problems, "unchecked_versions": unchecked}


def dependency_warnings(pins: dict[str, str]) -> list[str]:
    """Unmet requirements (no extras, markers evaluated) of the installed carried packages."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging not importable: the carried wheels' own requirements were not checked"]
    warnings = []
    for name in pins:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            have = _installed(req.name)
            if have is None:
                warnings.append(f"{name} requires {req}, not installed")
            elif req.specifier and not req.specifier.contains(have, prereleases=True):
                warnings.append(f"{name} requires {req}, {have} installed")
    return warnings


def needs_message(
    problems: list[str], site: Path, installed: dict[str, Any] | None, wheel_dir: Path = WHEEL_DIR
) -> str:
    wheels = sorted(wheel_dir.glob("*.whl"))
    lines = ["gpu-check: cannot start, missing Python packages:", *problems, "", "Fix:"]
    lines.append(
        "  1. where pip reaches the package index, in the repository root: make gpu-wheels "
        "(= python3 benchmarks/gpu_wheels.py: the packages of benchmarks/gpu_wheels.txt at the "
        "versions of requirements-lock.txt into .whl/, about 30 MiB);"
    )
    lines.append(
        "  2. copy .whl/ into this checkout on this machine, then rerun make "
        f"gpu-check: it installs them into {site} (pip install --no-index --no-deps --target) and "
        "puts that on PYTHONPATH."
    )
    if installed and not installed.get("site"):
        lines.append(
            f"  ({len(wheels)} wheels in {wheel_dir} were not installed: {installed['why']}; they "
            "are for CPython 3.12 on x86-64 Linux, the GPU machine's)"
        )
    elif wheels:
        lines.append(
            f"  ({len(wheels)} wheels in {wheel_dir} are installed: the packages above are not "
            "among them; add them to benchmarks/gpu_wheels.txt and rerun make gpu-wheels)"
        )
    lines.append("  Or run only the stages that need nothing missing: --stages NAME ...")
    return "\n".join(lines)


def incompatible_wheels(wheels: list[Path]) -> list[str]:
    """Wheels this interpreter cannot install (``.whl/`` holds CPython 3.12 x86-64 ones)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # without packaging: by the Python version the wheels were made for
        return [] if sys.version_info[:2] == (3, 12) else [w.name for w in wheels]
    supported = set(sys_tags())
    return [w.name for w in wheels if not parse_wheel_filename(w.name)[3] & supported]


def install_wheels(site: Path, wheel_dir: Path = WHEEL_DIR) -> dict[str, Any] | None:
    """Install ``wheel_dir/*.whl`` into ``site`` (skipped when the same files were installed
    there before); ``None`` when there are no wheels."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        return None
    unusable = incompatible_wheels(wheels)
    if unusable:
        return {
            "site": None,
            "wheels": [],
            "not_installed": unusable,
            "why": f"not for this Python/platform ({sys.version.split()[0]})",
        }
    stamp = site / ".gpu-check-wheels.json"
    listing = [[w.name, w.stat().st_size] for w in wheels]
    if stamp.is_file() and json.loads(stamp.read_text()) == listing:
        return {"site": str(site), "wheels": [w.name for w in wheels], "installed_now": False}
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
    ]
    command += ["--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target"]
    subprocess.run([*command, str(site), *map(str, wheels)], check=True)
    stamp.write_text(json.dumps(listing))
    return {"site": str(site), "wheels": [w.name for w in wheels], "installed_now": True}


# ----------------------------------------------------------------------------------- probe
PROBE_MODULES = [need.module for need in NEEDS] + ["lightning_aug_dpo"]


def probe() -> dict[str, Any]:
    """Run inside the check's Python: imports, versions, device, NF4 round trip (JSON out)."""
    import platform

    out: dict[str, Any] = {"python": platform.python_version(), "imports": {}}
    for name in PROBE_MODULES:
        try:
            module = __import__(name)
            out["imports"][name] = getattr(module, "__version__", "ok")
        except Exception as err:  # each failure is reported, none stops the probe
            out["imports"][name] = f"FAILED: {type(err).__name__}: {err}"
    import torch

    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cpu_count"] = os.cpu_count()
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        props = torch.cuda.get_device_properties(0)
        out["device_name"] = props.name
        out["capability"] = f"{props.major}.{props.minor}"
        out["total_memory_gib"] = props.total_memory / GIB
        out["multiprocessors"] = props.multi_processor_count
        try:
            import bitsandbytes.functional as bnb_f

            w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
            packed, state = bnb_f.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
            error = (bnb_f.dequantize_4bit(packed, state) - w).abs().mean().item()
            out["nf4_cuda"] = {"ok": error < 0.1 * w.abs().mean().item(), "mean_abs_error": error}
        except Exception as err:
            out["nf4_cuda"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    shm = Path("/dev/shm")
    out["dev_shm_free_gib"] = shutil.disk_usage(shm).free / GIB if shm.is_dir() else None
    out["tmp_free_gib"] = shutil.disk_usage(tempfile.gettempdir()).free / GIB
    return out


# ----------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    name: str
    weight: float  # seconds of the full run's budget
    title: str
    needs_checkpoint: bool = False
    needs_nf4: bool = False
    status: str = "pending"  # ok | failed | timeout | skipped
    expected_skip: bool = False  # skipped by design (the smoke run's gpu_tests), not a failure
    reason: str = ""
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    timeout_s: float = 0.0
    output: Path | None = None  # the JSON the stage writes
    log: Path | None = None
    result: Any = None


def make_stages() -> list[Stage]:
    return [
        Stage("gpu_tests", 60, "pytest -m gpu (tests/test_gpu.py)"),
        Stage("augment", 40, "augmentation presets: CUDA vs PIL workers"),
        Stage("checkpoint", 40, "LLaVA-1.5-7B-shaped checkpoint (random weights)"),
        Stage("dpo_bf16", 80, "DPO step, bf16 base + LoRA, ours vs TRL", True),
        Stage("dpo_nf4", 80, "DPO step, NF4 base (QLoRA), ours vs TRL", True, True),
        Stage("rollout", 65, "rollouts at batch 8 / 16 / 32", True),
        Stage("recipe_memory", 100, "seva_llava15_7b.yaml: peak memory vs the plan", True, True),
    ]


STAGE_NAMES = [s.name for s in make_stages()]
PROBE_WEIGHT = 15


def load_recipe(path: Path = RECIPE) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load(path.read_text())
    args = dict(config["model"]["init_args"])
    data = config["data"]["init_args"]
    return {
        "model_args": args,
        "batch_size": data["batch_size"],
        "max_new_tokens": data["max_new_tokens"],
        "path": str(path),
    }


def dpo_module_args(model_args: dict[str, Any], nf4: bool) -> list[str]:
    """``--module-args`` of the DPO-step stages: the recipe's LoRA (rank, alpha, targets,
    dropout, gradient checkpointing), NF4 or not. Not its ``modules_to_save``: dpo_step.py runs
    without autocast, where a bf16 base cannot feed the fp32 projector copy (bf16-mixed can)."""
    keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "gradient_checkpointing")
    out = [f"{k}={json.dumps(model_args[k])}" for k in keys if k in model_args]
    return [*out, f"load_in_4bit={'true' if nf4 else 'false'}"]


def build_command(stage: Stage, ctx: dict[str, Any]) -> list[str]:
    py, smoke, work, device = sys.executable, ctx["smoke"], ctx["work"], ctx["device"]
    out = work / f"{stage.name}.json"
    stage.output = out
    ckpt = str(work / "llava-7b-shaped")
    if stage.name == "gpu_tests":
        stage.output = work / "gpu_tests.xml"
        return [
            py,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "tests/test_gpu.py",
            "-v",
            "-p",
            "no:cacheprovider",
            "-o",
            "junit_family=xunit2",
            "--junitxml",
            str(stage.output),
        ]
    if stage.name == "augment":
        sizes = ["--presets", "diffusion", "hflip", "--batch-size", "2", "--size", "56"]
        sizes += ["--iters", "1", "--warmup", "0", "--workers", "1"]
        full = ["--batch-size", "16", "--iters", "4", "--warmup", "1"]
        full += ["--workers", str(ctx["cpu_count"])]
        return [
            py,
            str(PERF / "augment.py"),
            *(sizes if smoke else full),
            "--device",
            device,
            "--output",
            str(out),
        ]
    if stage.name == "checkpoint":
        extra = ["--smoke"] if smoke else []
        return [
            py,
            str(PERF / "shaped_llava.py"),
            ckpt,
            *extra,
            "--device",
            device,
            "--report",
            str(out),
        ]
    if stage.name in ("dpo_bf16", "dpo_nf4"):
        sizes = ["--batch-size", "1", "--prompt-tokens", "8", "--response-tokens", "4", "8"]
        sizes += ["--warmup", "1", "--iters", "1"]
        full = ["--batch-size", str(ctx["dpo_batch_size"]), "--prompt-tokens", "40"]
        full += ["--response-tokens", *map(str, ctx["dpo_response_tokens"])]
        full += ["--warmup", "1", "--iters", "3"]
        nf4 = stage.name == "dpo_nf4"
        command = [py, str(PERF / "dpo_step.py"), "--model-path", ckpt, "--device", device]
        command += ["--dtype", "bfloat16", *(sizes if smoke else full), "--output", str(out)]
        command += ["--sides", "ours", "trl"]  # a third 7B copy (share_prompt off) would not fit
        return [*command, "--module-args", *dpo_module_args(ctx["recipe"]["model_args"], nf4)]
    if stage.name == "rollout":
        sizes = ["--batch-sizes", "1", "2", "--max-new-tokens", "4", "--iters", "1"]
        sizes += ["--warmup", "0"]
        full = ["--batch-sizes", "8", "16", "32", "--max-new-tokens", str(ctx["rollout_tokens"])]
        full += ["--iters", "1", "--warmup", "1"]
        return [
            py,
            str(PERF / "rollout.py"),
            "--model-path",
            ckpt,
            "--device",
            device,
            "--dtype",
            "bfloat16",
            *(sizes if smoke else full),
            "--output",
            str(out),
        ]
    if stage.name == "recipe_memory":
        sizes = ["--batch-size", "2", "--prompt-tokens", "8", "--response-tokens", "8"]
        sizes += ["--rollout-tokens", "4"]
        return [
            py,
            str(PERF / "recipe_memory.py"),
            "--config",
            ctx["recipe"]["path"],
            "--model-path",
            ckpt,
            "--device",
            device,
            *(sizes if smoke else []),
            "--output",
            str(out),
        ]
    raise ValueError(stage.name)


def _kill(proc: subprocess.Popen) -> None:
    """End the stage's whole process group (DataLoader workers too): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start(stage: Stage, ctx: dict[str, Any], timeout: float) -> tuple[subprocess.Popen, Any]:
    stage.command = build_command(stage, ctx)
    stage.timeout_s = timeout
    stage.log = ctx["work"] / f"{stage.name}.log"
    handle = stage.log.open("w")
    handle.write("$ " + " ".join(stage.command) + "\n")
    handle.flush()
    proc = subprocess.Popen(
        stage.command,
        cwd=ROOT,
        env=ctx["env"],
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    print(f"[gpu-check] {stage.name}: started (deadline {timeout:.0f} s)", flush=True)
    return proc, handle


def finish(stage: Stage, proc: subprocess.Popen, handle: Any, started: float, timed_out: bool):
    if timed_out:
        _kill(proc)
    handle.close()
    stage.seconds = time.perf_counter() - started
    stage.returncode = proc.returncode
    if timed_out:
        stage.status, stage.reason = "timeout", f"killed at its deadline ({stage.timeout_s:.0f} s)"
    elif proc.returncode == 0:
        stage.status = "ok"
    else:
        stage.status, stage.reason = "failed", f"exit status {proc.returncode}"
    if stage.name == "gpu_tests" and stage.output and stage.output.is_file():
        stage.result = parse_junit(stage.output)
        bad = stage.result["failed"] + stage.result["errors"]
        if not timed_out and bad:
            stage.status, stage.reason = "failed", f"{bad} of {stage.result['tests']} tests failed"
        elif not timed_out and proc.returncode == 5:  # pytest: no test selected
            stage.status, stage.reason = "ok", "no test selected"
    elif stage.output and stage.output.is_file():
        try:  # a stage killed late may still have left its JSON (recipe_memory rewrites it)
            stage.result = json.loads(stage.output.read_text())
        except ValueError:
            stage.result = None
    print(
        f"[gpu-check] {stage.name}: {stage.status} in {stage.seconds:.1f} s {stage.reason}",
        flush=True,
    )


def parse_junit(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases, count = [], {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for case in suite.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error"}.get(tag, tag)
                    message = (node.get("message") or node.text or "")[:500]
                    break
            cases.append(
                {
                    "test": f"{case.get('classname')}::{case.get('name')}",
                    "outcome": outcome,
                    "seconds": float(case.get("time") or 0),
                    "message": message,
                }
            )
    count["tests"] = len(cases)
    count["failed"] = sum(c["outcome"] == "failed" for c in cases)
    count["errors"] = sum(c["outcome"] == "error" for c in cases)
    count["skipped"] = sum(c["outcome"] == "skipped" for c in cases)
    count["passed"] = count["tests"] - count["failed"] - count["errors"] - count["skipped"]
    return {**count, "cases": cases}


def run_stages(stages: list[Stage], ctx: dict[str, Any], start_time: float, end_time: float):
    """Run the stages (``ctx['jobs']`` at a time), each with its rolling deadline."""
    total = sum(s.weight for s in stages) or 1.0
    scale = max(0.0, end_time - start_time) / total
    cumulative, deadlines = 0.0, {}
    for stage in stages:
        cumulative += stage.weight
        deadlines[stage.name] = start_time + scale * cumulative
    pending = list(stages)
    running: dict[str, tuple[Stage, subprocess.Popen, Any, float, float]] = {}
    try:
        _schedule(pending, running, deadlines, scale, ctx)
    finally:  # interrupted: no stage may outlive the check (each runs in its own session)
        for stage, proc, handle, started, _ in running.values():
            finish(stage, proc, handle, started, proc.poll() is None)


def _schedule(pending, running, deadlines, scale, ctx) -> None:
    while pending or running:
        for stage in list(pending):
            if len(running) >= ctx["jobs"]:
                break
            blocker = blocked(stage, ctx)
            if blocker == "wait":
                continue
            pending.remove(stage)
            if blocker:
                stage.status, stage.reason = "skipped", blocker
                print(f"[gpu-check] {stage.name}: skipped ({blocker})", flush=True)
                continue
            now = time.perf_counter()
            # one at a time: the rolling deadline; several: each its own share of the budget
            deadline = deadlines[stage.name] if ctx["jobs"] == 1 else now + scale * stage.weight
            proc, handle = start(stage, ctx, max(1.0, deadline - now))
            running[stage.name] = (stage, proc, handle, now, max(now + 1.0, deadline))
        time.sleep(0.2)
        for name, (stage, proc, handle, started, deadline) in list(running.items()):
            if proc.poll() is not None or time.perf_counter() >= deadline:
                finish(stage, proc, handle, started, proc.poll() is None)
                del running[name]


def blocked(stage: Stage, ctx: dict[str, Any]) -> str:
    """Why ``stage`` cannot run ('' if it can; 'wait' while the checkpoint is being written)."""
    if stage.name == "gpu_tests" and ctx["smoke"]:
        stage.expected_skip = True
        return "smoke run: without CUDA every test of tests/test_gpu.py skips (make test runs them)"
    if stage.name in ctx.get("broken_stages", {}):
        return ctx["broken_stages"][stage.name]
    if stage.needs_nf4 and ctx.get("nf4_problem"):
        return ctx["nf4_problem"]
    if stage.needs_checkpoint:
        ckpt = ctx["stages"].get("checkpoint")
        if ckpt is None:
            return "the checkpoint stage was not selected"
        if ckpt.status in ("pending",):
            return "wait"
        if ckpt.status != "ok":
            return f"no checkpoint (checkpoint stage {ckpt.status})"
    return ""


# ------------------------------------------------------------------------------------- main
def choose_work_dir(given: Path | None, needed_gib: float, probe_info: dict[str, Any]) -> Path:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="gpu-check-", dir=given))
    shm = probe_info.get("dev_shm_free_gib")
    base = "/dev/shm" if shm is not None and shm > 1.5 * needed_gib else None
    return Path(tempfile.mkdtemp(prefix="gpu-check-", dir=base))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI runs this)")
    parser.add_argument("--output-dir", type=Path, help="report folder (module docstring)")
    parser.add_argument("--work-dir", type=Path, help="where the checkpoint goes (module doc)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work dir")
    parser.add_argument("--budget-s", type=float, help="whole check (default 480; smoke 600)")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=STAGE_NAMES, default=[], help="not these")
    parser.add_argument(
        "--jobs", type=int, help="stages at once (default 1: timings; smoke: 2 where 2 cores)"
    )
    parser.add_argument("--peak-tflops", type=float, help="MFU denominator (default: datasheet)")
    parser.add_argument("--dpo-batch-size", type=int, default=4, help="pairs per DPO step")
    parser.add_argument("--dpo-response-tokens", type=int, nargs=2, default=[64, 256])
    parser.add_argument("--rollout-tokens", type=int, default=64, help="rollout new tokens")
    parser.add_argument("--wheels", type=Path, default=WHEEL_DIR, help="wheel folder (.whl/)")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where wheels install")
    parser.add_argument(
        "--needs-only", action="store_true", help="install the wheels, check the needs, stop"
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.probe:
        print("GPU-CHECK-PROBE " + json.dumps(probe()))
        return 0
    # wall-clock start, carried across the re-exec after installing wheels
    began = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    started = time.perf_counter() - (time.time() - began)
    budget = args.budget_s or (600.0 if args.smoke else 480.0)
    end_time = started + budget - 5.0  # the report's own seconds
    out_dir = args.output_dir or ROOT / "benchmarks" / "results" / (
        "gpu_check_smoke" if args.smoke else "gpu_check"
    )
    selected = [n for n in (args.stages or STAGE_NAMES) if n not in args.skip]
    wants_checkpoint = any(s.needs_checkpoint for s in make_stages() if s.name in selected)
    if wants_checkpoint and "checkpoint" not in selected and "checkpoint" not in args.skip:
        selected.append("checkpoint")  # the 7B stages need it; make_stages() orders them
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "smoke": args.smoke,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "benchmarks/gpu_check.py", *given]),
        "budget_s": budget,
        "machine": {},
        "stages": [],
        "figures": {},
        "wall_s": 0.0,
    }

    # wheels first, then the needs (in a fresh interpreter that sees the installed wheels)
    env = dict(os.environ)
    wheels = None
    if os.environ.get("GPU_CHECK_SITE") is None and sorted(args.wheels.glob("*.whl")):
        try:
            wheels = install_wheels(args.site, args.wheels)
        except subprocess.CalledProcessError as err:
            print(
                f"gpu-check: installing {args.wheels}/*.whl into {args.site} failed ({err}); "
                "two versions of one package in .whl/? rerun make gpu-wheels",
                file=sys.stderr,
            )
            return 2
    if wheels and wheels["site"]:
        env["GPU_CHECK_SITE"] = str(args.site)
        env["GPU_CHECK_STARTED"] = str(began)
        env["GPU_CHECK_WHEELS"] = json.dumps(wheels)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(args.site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *given], env)
    if os.environ.get("GPU_CHECK_SITE"):
        wheels = json.loads(os.environ.get("GPU_CHECK_WHEELS", "null"))
    report["wheels"] = wheels
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if args.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path, also on a GPU machine

    pins = read_pins()
    needs = check_needs(selected, pins=pins)
    needs["warnings"] = dependency_warnings(pins) if wheels and wheels["site"] else []
    if wheels and not wheels["site"]:
        needs["warnings"].append(f".whl/ not installed: {wheels['why']}")
    if needs["unchecked_versions"]:
        needs["warnings"].append(
            f"packaging missing: versions of {', '.join(needs['unchecked_versions'])} not checked"
        )
    report["needs"] = needs
    if needs["problems"]:
        message = needs_message(needs["problems"], args.site, wheels, args.wheels)
        print(message, file=sys.stderr)
        report["status"], report["error"] = "needs_missing", message
        write_outputs(report, [], out_dir, started)
        return 2
    if args.needs_only:
        report["status"], report["pythonpath"] = "needs_ok", env["PYTHONPATH"]
        write_outputs(report, [], out_dir, started)
        print(f"[gpu-check] needs met: {out_dir / 'gpu_check.json'}")
        return 0

    # the probe: every import in the check's own Python, the device, an NF4 round trip
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(10.0, PROBE_WEIGHT * budget / 480 * 3),
        )
        line = [x for x in done.stdout.splitlines() if x.startswith("GPU-CHECK-PROBE ")]
        info = json.loads(line[-1].split(" ", 1)[1]) if line else None
        probe_error = "" if info else (done.stderr or done.stdout)[-3000:]
    except subprocess.TimeoutExpired as err:
        info, probe_error = None, f"probe timed out after {err.timeout:.0f} s"
    report["probe_s"] = time.perf_counter() - t0
    if info is None:
        print(f"gpu-check: the environment probe failed:\n{probe_error}", file=sys.stderr)
        report["status"], report["error"] = "probe_failed", probe_error
        write_outputs(report, [], out_dir, started)
        return 2
    report["machine"] = info
    broken = {k: v for k, v in info["imports"].items() if str(v).startswith("FAILED")}
    scoped = {n.module: n.stages for n in NEEDS if n.stages}
    fatal = {k: v for k, v in broken.items() if not scoped.get(k)}
    broken_stages: dict[str, str] = {}
    for module, error in broken.items():
        for stage in scoped.get(module, ()):
            broken_stages.setdefault(stage, f"{module} does not import: {error[8:200]}")
    if broken:
        lines = [f"  {name}: {error}" for name, error in broken.items()]
        what = "stopping" if fatal else f"skipping {', '.join(sorted(broken_stages))}"
        message = (
            f"gpu-check: installed but not importable ({what}):\n"
            + "\n".join(lines)
            + "\nFix: make gpu-wheels with matching versions (benchmarks/gpu_wheels.txt), "
            "carry .whl/, rerun; or --stages without the stages that need them"
        )
        print(message, file=sys.stderr)
        report["import_problems"] = message
        if fatal:
            report["status"], report["error"] = "imports_failed", message
            write_outputs(report, [], out_dir, started)
            return 2
    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not info["cuda"]:
        message = "gpu-check: no CUDA device visible to torch; run with --smoke for the CPU path"
        print(message, file=sys.stderr)
        report["status"], report["error"] = "no_cuda", message
        write_outputs(report, [], out_dir, started)
        return 2

    nf4 = info.get("nf4_cuda")
    ctx: dict[str, Any] = {
        "smoke": args.smoke,
        "device": device,
        "env": env,
        "jobs": max(1, args.jobs or (min(2, os.cpu_count() or 1) if args.smoke else 1)),
        "cpu_count": info.get("cpu_count") or 1,
        "recipe": load_recipe(),
        "dpo_batch_size": args.dpo_batch_size,
        "dpo_response_tokens": args.dpo_response_tokens,
        "rollout_tokens": args.rollout_tokens,
        "machine": info,
        "peak_tflops": args.peak_tflops,
        "broken_stages": broken_stages,
        "nf4_problem": ""
        if args.smoke or (nf4 and nf4.get("ok"))
        else f"bitsandbytes NF4 on CUDA failed in the probe: {nf4}",
    }
    needed_gib = 0.1 if args.smoke else 16.0
    ctx["work"] = choose_work_dir(args.work_dir, needed_gib, info)
    report["work_dir"] = str(ctx["work"])
    stages = [s for s in make_stages() if s.name in selected]
    ctx["stages"] = {s.name: s for s in stages}
    try:
        run_stages(stages, ctx, time.perf_counter(), end_time)
        try:  # a bug in the arithmetic must not cost the raw results
            report["figures"] = figures(ctx["stages"], ctx)
        except Exception:
            report["figures_error"] = traceback.format_exc()
            print(report["figures_error"], file=sys.stderr)
    finally:
        report["stages"] = [
            {
                "name": s.name,
                "title": s.title,
                "status": s.status,
                "reason": s.reason,
                "seconds": s.seconds,
                "timeout_s": s.timeout_s,
                "returncode": s.returncode,
                "command": s.command,
                "raw": s.result,
                **({"log_tail": _tail(s.log)} if s.status in ("failed", "timeout") else {}),
            }
            for s in stages
        ]
        report["wall_s"] = time.perf_counter() - started
        ok = all(s.status == "ok" or s.expected_skip for s in stages)
        ok = ok and "figures_error" not in report
        report["status"] = "ok" if ok else "stages_failed"
        write_outputs(report, stages, out_dir)
        if not args.keep_work:
            shutil.rmtree(ctx["work"], ignore_errors=True)
    print(
        f"[gpu-check] {report['status']} in {report['wall_s']:.0f} s: {out_dir / 'gpu_check.md'}",
        flush=True,
    )
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
