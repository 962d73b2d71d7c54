"""benchmarks/perf/rollout.py runs end to end on the tiny model; the llava-shaped one has
LLaVA-1.5's sequence and vocabulary shapes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "rollout.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("perf_rollout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def test_benchmark_writes_json_with_positive_throughputs(tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    argv = "--models tiny --batch-sizes 1 2 --max-new-tokens 4 --iters 1 --warmup 0"
    argv = [*argv.split(), "--device", "cpu", "--output", str(out)]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    assert {"machine", "settings", "models", "results", "command", "date"} <= set(report)
    for key in ("platform", "cpu_model", "cpu_count", "torch", "device", "device_name"):
        assert report["machine"][key]
    settings = report["settings"]
    assert settings["batch_sizes"] == [1, 2] and settings["max_new_tokens"] == 4
    assert settings["dtype"] == "float32" and settings["force_length"] is True
    assert report["models"]["tiny"]["image_tokens"] == 16
    assert [(r["model"], r["batch_size"]) for r in report["results"]] == [("tiny", 1), ("tiny", 2)]
    for row in report["results"]:
        rollout, pairs = row["rollout"], row["pairs"]
        for key in ("tokens_per_s", "prompts_per_s", "ms_per_batch"):
            assert rollout[key] > 0
        # min_new_tokens forces every row to the full length
        assert rollout["tokens_per_batch"] == 4 * row["batch_size"]
        assert pairs["prompts_per_s"] > 0 and pairs["ms_per_batch"] > 0
        assert pairs["kept"] + pairs["identical"] == row["batch_size"]
        assert pairs["pairs_per_s"] >= 0


def test_llava_shaped_config_has_llava_sequence_and_vocab() -> None:
    config = bench.llava_shaped_config()
    vision = config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == 576
    assert config.image_seq_length == 576
    assert config.text_config.vocab_size == 32000
    # scaled down for a CPU, LLaVA's head size kept
    text = config.text_config
    assert text.hidden_size // text.num_attention_heads == 128
    assert bench.LLAVA_SHAPED.image_size == 336 and bench.LLAVA_SHAPED.patch_size == 14


def test_llava_shaped_checkpoint_decodes_every_id(tmp_path: Path) -> None:
    from transformers import AutoProcessor, LlavaConfig

    path = bench.write_model("llava-shaped", tmp_path)
    config = LlavaConfig.from_pretrained(path)
    assert config.text_config.vocab_size == 32000 and config.image_seq_length == 576
    processor = AutoProcessor.from_pretrained(path)
    assert len(processor.tokenizer) == 32000
    assert processor.tokenizer.decode([31999]) == "w31999"
    assert processor.image_processor.crop_size["height"] == 336
