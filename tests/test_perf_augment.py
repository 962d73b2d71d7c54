"""benchmarks/perf/augment.py runs end to end on a tiny config; every preset has a PIL twin."""

from __future__ import annotations

import importlib.util
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_aug_dpo.augment.presets import PRESET_NAMES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "augment.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("perf_augment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script()
pil_presets = bench.pil_presets


def test_benchmark_writes_json_with_positive_throughputs(tmp_path: Path) -> None:
    out = tmp_path / "augment.json"
    argv = "--presets moco diffusion --batch-size 2 --size 64 --iters 1 --warmup 0 --workers 0"
    argv = [*argv.split(), "--device", "cpu", "--output", str(out)]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    assert {"machine", "settings", "results", "command", "date"} <= set(report)
    machine = report["machine"]
    for key in ("platform", "cpu_model", "cpu_count", "torch", "device", "device_name"):
        assert machine[key]
    settings = report["settings"]
    assert settings["batch_size"] == 2 and settings["size"] == 64 and settings["iters"] == 1
    assert settings["workers"] == 0 and settings["strength"] == 0.5
    assert list(report["results"]) == ["moco", "diffusion"]
    for row in report["results"].values():
        for path in ("device", "pil_workers", "device_preprocess", "pil_workers_preprocess"):
            assert row[path]["images_per_s"] > 0
            assert row[path]["ms_per_batch"] > 0
        assert row["speedup"] > 0 and row["speedup_preprocess"] > 0


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_has_a_pil_version(name: str) -> None:
    assert name in pil_presets.PIL_PRESET_NAMES
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    preset = pickle.loads(pickle.dumps(pil_presets.PILPreset(name, 0.5)))  # as sent to workers
    for seed in range(4):
        out = preset.pixel(image, random.Random(seed))
        assert out.mode == "RGB" and out.size == (48, 48)
        array = preset(image, seed)
        assert array.shape == (3, 48, 48) and array.dtype == np.float32
        assert np.isfinite(array).all()


def test_llava_square_pads_then_resizes() -> None:
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    square = pil_presets.llava_square(image, 32)
    assert square.size == (32, 32)
    assert square.getpixel((16, 0)) == tuple(int(v * 255) for v in pil_presets.CLIP_MEAN)
