"""Smoke test of ``benchmarks/perf/dpo_step.py`` on the tiny model (no timing thresholds).

Skipped where TRL is absent. Checks that the script runs both sides, that they computed the
same losses, and that the JSON carries finite ratios and the module arguments it was given.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

PERF = Path(__file__).resolve().parents[1] / "benchmarks" / "perf"


def load_script(name: str):
    sys.path.insert(0, str(PERF))  # the script imports its neighbours (augment, rollout)
    try:
        spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PERF))
    return module


def test_dpo_step_benchmark_writes_finite_ratios(
    tiny_llava_dir: Path, tmp_path: Path, capsys
) -> None:
    script = load_script("dpo_step")
    out = tmp_path / "dpo_step.json"
    argv = ["--model-path", str(tiny_llava_dir), "--device", "cpu", "--prompt-tokens", "8"]
    argv += ["--batch-size", "2", "--response-tokens", "4", "12", "--warmup", "1", "--iters", "2"]
    argv += ["--module-args", "lora_r=4", "lora_alpha=8", "--output", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: thread hand-offs cost more than they save
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)

    report = json.loads(out.read_text())
    for key in ("speedup_vs_trl", "memory_ratio_vs_trl", "loss_max_abs_diff"):
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    assert report["speedup_vs_trl"] > 0 and report["memory_ratio_vs_trl"] > 0
    assert report["settings"]["module_args"] == {"lora_r": 4, "lora_alpha": 8}
    assert report["settings"]["module_hparams"]["lora_r"] == 4
    assert report["machine"]["trl"] and report["settings"]["device"] == "cpu"
    for side in ("ours", "trl"):
        result = report["results"][side]
        assert len(result["seconds"]) == 2 and len(result["loss"]) == 3  # warmup + timed
        assert all(math.isfinite(s) and s > 0 for s in result["seconds"])
        assert math.isfinite(result["median_peak_mib"])
    head = report["results"]["trl"]["median_fused_head_seconds"]  # timed on CPU only
    assert 0 < head < report["results"]["trl"]["median_seconds"]
    # Same start weights, same batch, same updates: both sides computed the same losses.
    assert report["results"]["ours"]["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert report["loss_max_abs_diff"] < 1e-4
    shape = report["shape"]
    assert shape["image_tokens"] == 16 and shape["prompt_tokens"] >= 16 + 8
    assert sorted(shape["chosen_tokens"] + shape["rejected_tokens"]) == [4, 7, 9, 12]
    table = capsys.readouterr().out
    assert "| this module |" in table and "| TRL DPOTrainer |" in table


def test_module_args_parse_yaml_values_and_reject_malformed_items() -> None:
    script = load_script("dpo_step")
    parsed = script.parse_module_args(["response_logits_only=true", "lora_r=64", "x=[a, b]"])
    assert parsed == {"response_logits_only": True, "lora_r": 64, "x": ["a", "b"]}
    with pytest.raises(ValueError, match="key=value"):
        script.parse_module_args(["lora_r"])
