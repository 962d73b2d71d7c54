"""Throughput of the augmentation presets: device-side (Kornia) versus PIL on CPU workers.

    python benchmarks/perf/augment.py                      # all presets, batch 16 at 336 x 336
    python benchmarks/perf/augment.py --presets moco diffusion --iters 10 --device cuda

For each preset (plus ``none``, the pipeline without augmentation) it measures, at ``--strength``
(0.5 = SeVa's published settings):

* **device**: ``Preset(name)(batch, seeds)`` on a normalised ``(B, 3, S, S)`` batch already on
  ``--device`` (``torch.cuda.synchronize`` around each batch on CUDA);
* **device pre+aug**: the same, starting from ``B`` decoded uint8 images of mixed COCO-like sizes
  in host memory: transfer, :class:`ImagePreprocessor` (LLaVA pad-to-square, bicubic resize,
  normalise), then the preset;
* **PIL**: the PIL re-implementation of the preset (``pil_presets.py``) on ``S x S`` PIL images,
  then to-tensor + normalise (numpy), in a ``DataLoader`` with ``--workers`` worker processes,
  batch ``B``, each batch moved to ``--device``; for ``diffusion`` the noise is added to the
  normalised array in the worker;
* **PIL pre+aug**: the same starting from the mixed-size PIL images (expand2square + bicubic
  resize in the worker).

Decoding (JPEG -> pixels) is left out of both sides. Each measurement runs ``--warmup`` batches,
then times ``--iters`` batches; throughput is images over the timed wall time. For the workers
warm-up and timed batches are two epochs on persistent workers (worker start-up is excluded when
``--warmup`` > 0), both rounded up to whole rounds of ``--workers`` batches. The
``none`` row has no device number (nothing to do on a ready batch): its PIL column is the fixed
cost of the CPU pipeline, its pre+aug columns that of preprocessing alone. Speed-up is device
img/s over PIL img/s. One run; prints a markdown table and writes JSON (machine, settings,
per-preset numbers, per-batch median and minimum on the device side) to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.augment.preprocess import ImagePreprocessor
from lightning_aug_dpo.augment.presets import Preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pil_presets  # beside this script; spawned workers import it too
from pil_presets import BASELINE, PIL_PRESET_NAMES, PILPreset, llava_square

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "augment.json"
# (height, width) of COCO-like photos, given for --size 336 and scaled with it
NATIVE_SIZES = (
    (480, 640),
    (640, 427),
    (375, 500),
    (640, 480),
    (427, 640),
    (500, 333),
    (512, 512),
    (428, 640),
)

__all__ = ["PILPreset", "machine_info", "main", "pil_presets", "run_benchmark"]


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, CPU model and cores, library versions and the accelerator's name."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import kornia

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "kornia": kornia.__version__,
        "pillow": PIL.__version__, "numpy": np.__version__, "device": str(device),
        "device_name": cpu, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def synthetic_images(size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` smooth-plus-noise uint8 ``(H, W, 3)`` photos of mixed sizes, scaled to ``size``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        h, w = (max(8, round(v * size / 336)) for v in NATIVE_SIZES[i % len(NATIVE_SIZES)])
        coarse = torch.rand(1, 3, max(2, h // 32), max(2, w // 32), generator=gen)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic")[0]
        noisy = smooth + 0.08 * torch.randn(3, h, w, generator=gen)
        out.append((noisy.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return out


class PILPresetDataset(Dataset):
    """Item ``i``: image ``i % len(images)``, (optionally LLaVA-squared), PIL preset, seed ``i``."""

    def __init__(
        self, images: Sequence[Image.Image], preset: PILPreset, size: int, preprocess: bool
    ) -> None:
        self.images, self.preset = list(images), preset
        self.size, self.preprocess = size, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images[index % len(self.images)]
        if self.preprocess:
            img = llava_square(img, self.size, self.preset.mean)
        return torch.from_numpy(self.preset(img, seed=index))


class _Batches:
    """Batch sampler of ``count`` consecutive batches from index ``start`` (set per epoch)."""

    def __init__(self, batch: int) -> None:
        self.batch, self.start, self.count = batch, 0, 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.count):
            first = self.start + b * self.batch
            yield list(range(first, first + self.batch))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(batch: int, iters: int, total: float, times: list[float] | None) -> dict[str, Any]:
    out = {"images_per_s": batch * iters / total, "ms_per_batch": 1000 * total / iters}
    if times:
        out["ms_per_batch_median"] = 1000 * median(times)
        out["ms_per_batch_min"] = 1000 * min(times)
    return out


def time_device(
    step: Callable[[int], Any], batch: int, iters: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Run ``step(i)`` ``warmup`` times, then time ``iters`` calls (synchronised on CUDA)."""
    with torch.inference_mode():
        for i in range(warmup):
            step(i)
        _sync(device)
        times = []
        start = time.perf_counter()
        for i in range(warmup, warmup + iters):
            t0 = time.perf_counter()
            step(i)
            _sync(device)
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
    return {**_stats(batch, iters, total, times), "warmup_batches": warmup, "batches": iters}


def time_pil(
    dataset: PILPresetDataset,
    batch: int,
    iters: int,
    warmup: int,
    workers: int,
    device: torch.device,
) -> dict[str, Any]:
    """Batches of ``dataset`` from a DataLoader with ``workers`` processes, moved to ``device``.

    Two epochs on persistent workers: the warm-up epoch starts the workers, the timed one then
    hands all of them work at once. Both are rounded up to whole rounds of ``workers`` batches,
    as each worker builds whole batches.
    """
    per_round = max(1, workers)
    warmup = -(-warmup // per_round) * per_round
    iters = -(-iters // per_round) * per_round
    sampler = _Batches(batch)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    totals = []
    for start, count in ((0, warmup), (warmup * batch, iters)):
        sampler.start, sampler.count = start, count
        if count == 0:
            continue
        t0 = time.perf_counter()
        for images in loader:
            images.to(device, non_blocking=True)
        _sync(device)
        totals.append(time.perf_counter() - t0)
    del loader  # shuts the workers down
    return {**_stats(batch, iters, totals[-1], None), "warmup_batches": warmup, "batches": iters}


def run_benchmark(
    presets: Sequence[str],
    batch: int,
    size: int,
    iters: int,
    warmup: int,
    workers: int,
    device: torch.device,
    strength: float,
    preprocess: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per-preset throughput of the device path and the PIL-worker path (see module docstring)."""
    natives = synthetic_images(size, batch)
    pil_natives = [Image.fromarray(a) for a in natives]
    pil_squares = [llava_square(img, size) for img in pil_natives]
    to_norm = pil_presets.to_normalized
    squares = [torch.from_numpy(to_norm(img, CLIP_MEAN, CLIP_STD)) for img in pil_squares]
    squares = torch.stack(squares).to(device)
    host = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in natives]
    if device.type == "cuda":
        host = [t.pin_memory() for t in host]
    preprocessor = ImagePreprocessor(size, CLIP_MEAN, CLIP_STD).to(device)

    results: dict[str, dict[str, Any]] = {}
    for name in presets:
        aug = (lambda x, _: (x, [])) if name == BASELINE else Preset(name, strength).to(device)

        def seeds(i: int) -> list[int]:
            return list(range(i * batch, (i + 1) * batch))

        def augment(i: int, aug=aug) -> Any:
            return aug(squares, seeds(i))

        def pre_augment(i: int, aug=aug) -> Any:
            pixels = preprocessor([t.to(device, non_blocking=True) for t in host])
            return aug(pixels, seeds(i))

        pil = PILPreset(name, strength)
        # "none" on a ready batch does nothing: no device number, only the PIL pipeline's cost
        row: dict[str, Any] = {"device": None, "speedup": None}
        if name != BASELINE:
            row["device"] = time_device(augment, batch, iters, warmup, device)
        row["pil_workers"] = time_pil(
            PILPresetDataset(pil_squares, pil, size, False),
            batch,
            iters,
            warmup,
            workers,
            device,
        )
        if row["device"] is not None:
            row["speedup"] = row["device"]["images_per_s"] / row["pil_workers"]["images_per_s"]
        if preprocess:
            row["device_preprocess"] = time_device(pre_augment, batch, iters, warmup, device)
            row["pil_workers_preprocess"] = time_pil(
                PILPresetDataset(pil_natives, pil, size, True),
                batch,
                iters,
                warmup,
                workers,
                device,
            )
            row["speedup_preprocess"] = (
                row["device_preprocess"]["images_per_s"]
                / row["pil_workers_preprocess"]["images_per_s"]
            )
        results[name] = row
        print(f"  {name}: {_cells(row)}", file=sys.stderr, flush=True)
    return results


def _cells(row: dict[str, Any]) -> str:
    def rate(path: str) -> str:
        return "-" if row.get(path) is None else f"{row[path]['images_per_s']:.1f}"

    def ratio(key: str) -> str:
        return "-" if row.get(key) is None else f"{row[key]:.2f}x"

    ms = "-" if row["device"] is None else f"{row['device']['ms_per_batch']:.1f}"
    cells = [rate("device"), ms, rate("pil_workers"), ratio("speedup")]
    if "device_preprocess" in row:
        cells += [rate("device_preprocess"), rate("pil_workers_preprocess")]
        cells.append(ratio("speedup_preprocess"))
    return " | ".join(cells)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a markdown table (one row per preset)."""
    head = ["preset", "device img/s", "device ms/batch", "PIL-workers img/s", "speed-up"]
    if any("device_preprocess" in row for row in results.values()):
        head += ["device pre+aug img/s", "PIL-workers pre+aug img/s", "speed-up (pre+aug)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {name} | {_cells(row)} |" for name, row in results.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(PIL_PRESET_NAMES),
        choices=PIL_PRESET_NAMES,
        metavar="NAME",
        help=f"subset of {', '.join(PIL_PRESET_NAMES)} (default: all)",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=336, help="side of the model input")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader worker processes of the PIL path (default: all cores)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument(
        "--no-preprocess", action="store_true", help="skip the preprocess + augment measurements"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be >= 1, --warmup >= 0")

    device = torch.device(args.device)
    settings = {
        "batch_size": args.batch_size, "size": args.size, "iters": args.iters,
        "warmup": args.warmup, "workers": args.workers, "strength": args.strength,
        "device": str(device), "presets": list(args.presets), "preprocess": not args.no_preprocess,
    }  # fmt: skip
    print(f"augment throughput: {settings}", file=sys.stderr, flush=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    results = run_benchmark(
        args.presets,
        args.batch_size,
        args.size,
        args.iters,
        args.warmup,
        args.workers,
        device,
        args.strength,
        not args.no_preprocess,
    )
    report = {
        "benchmark": "augment",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/perf/augment.py", *given]),
        "machine": machine_info(device),
        # other processes on the machine skew wall-clock numbers: 1-minute load around the run
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - started,
        "settings": settings,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)  # atomic: an interrupted run keeps the old report
    print(format_table(results))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
