"""``benchmarks/perf/dpo_step.py`` on the tiny model (no timing thresholds).

Skipped where TRL is absent. Checks that the script runs its three sides (ours, ours with
``share_prompt=false``, TRL), that they computed the same losses, that the tokens each side's
forwards computed per pair are what the batch's shapes imply, that the TRL options are
recorded with their reasons, and the body-to-LM-head FLOPs formula on the body-heavy shape.
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


def test_dpo_step_benchmark_sides_agree_and_count_tokens(
    tiny_llava_dir: Path, tmp_path: Path, capsys
) -> None:
    script = load_script("dpo_step")
    out = tmp_path / "dpo_step.json"
    pairs, answer = 2, 6  # every answer 6 tokens: the shared row is exactly prompt + 6 + 6
    argv = ["--model-path", str(tiny_llava_dir), "--device", "cpu", "--prompt-tokens", "8"]
    argv += ["--batch-size", str(pairs), "--response-tokens", str(answer), str(answer)]
    argv += ["--warmup", "1", "--iters", "1", "--module-args", "lora_r=4", "lora_alpha=8"]
    argv += ["--output", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: thread hand-offs cost more than they save
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)

    report = json.loads(out.read_text())
    assert script.accepts_share_prompt()
    sides = ["ours", "ours_plain", "trl"]
    assert report["settings"]["sides"] == sides and list(report["results"]) == sides
    ratios = ["speedup_vs_trl", "memory_ratio_vs_trl", "loss_max_abs_diff"]
    for key in [*ratios, "speedup_vs_plain", "memory_ratio_vs_plain"]:
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    assert report["speedup_vs_trl"] > 0 and report["memory_ratio_vs_trl"] > 0
    assert report["settings"]["module_args"] == {"lora_r": 4, "lora_alpha": 8}
    assert report["settings"]["plain_module_args"] == {**report["settings"]["module_args"],
                                                       "share_prompt": False}  # fmt: skip
    assert report["settings"]["module_hparams"]["lora_r"] == 4
    assert report["settings"]["module_hparams"]["share_prompt"] is True  # ours: the default
    assert report["machine"]["trl"] and report["settings"]["device"] == "cpu"
    for side in sides:
        result = report["results"][side]
        assert len(result["seconds"]) == 1 and len(result["loss"]) == 2  # warmup + timed
        assert all(math.isfinite(s) and s > 0 for s in result["seconds"])
        assert math.isfinite(result["median_peak_mib"])
    head = report["results"]["trl"]["median_fused_head_seconds"]  # timed on CPU only
    assert 0 < head < report["results"]["trl"]["median_seconds"]

    # Same start weights, same batch, same updates: every side computed the same losses.
    assert report["results"]["ours"]["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert set(report["loss_max_abs_diff_by_side"]) == set(sides) - {"ours"}
    assert report["loss_max_abs_diff"] < 1e-4
    for side in sides:
        assert report["results"][side]["loss"] == pytest.approx(
            report["results"]["ours"]["loss"], abs=1e-4
        )

    # Tokens the text decoder computed per pair, read off the forwards' tensors.
    shape = report["shape"]
    prompt = shape["prompt_tokens"]
    assert shape["image_tokens"] == 16 and prompt >= 16 + 8
    assert shape["chosen_tokens"] == shape["rejected_tokens"] == [answer] * pairs
    assert shape["ideal_tokens_per_pair"] == prompt + 2 * answer
    one_row_per_answer = 2 * (prompt + answer)  # TRL and the plain path
    expected = {"trl": one_row_per_answer, "ours_plain": one_row_per_answer}
    expected["ours"] = prompt + 2 * answer  # share_prompt: the prompt once, both answers
    for side in sides:
        result = report["results"][side]
        assert result["policy_tokens_per_pair"] == expected[side], side
        assert result["reference_tokens_per_pair"] == expected[side], side
        assert report["tokens_per_pair"][side] == {
            "policy": expected[side], "reference": expected[side]
        }  # fmt: skip
        assert [f["policy"] for f in result["forwards"]] == [True, False]  # policy, reference
    assert report["tokens_per_pair"]["ideal"] == prompt + 2 * answer
    # our step encodes each image once; TRL once per row and forward (2 rows x 2 forwards)
    assert report["results"]["ours"]["images_encoded_per_pair"] == 1
    assert report["results"]["trl"]["images_encoded_per_pair"] == 4

    # Every TRL option of the comparison, with its value as the trainer has it and a reason.
    flags = report["settings"]["trl_flags"]
    assert set(script.TRL_FLAG_NOTES) | set(script.TRL_SETUP_NOTES) == set(flags)
    assert all(entry["why"] for entry in flags.values())
    assert flags["loss_type"]["value"] == ["sigmoid"] and flags["max_length"]["value"] is None
    assert flags["activation_checkpointing"]["value"] is False  # the module's setting
    for off in ("padding_free", "precompute_ref_log_probs", "use_liger_kernel", "bf16"):
        assert flags[off]["value"] is False, off
    assert flags["ref_model"]["value"] == "adapters disabled"
    assert flags["fused_lm_head"]["value"] == "on, projects every position"  # CPU, unpatched
    assert flags["compact_head_on_cpu"]["value"] is False

    flops = shape["flops_per_token"]  # tiny: 2 layers, h 64, MLP 128, vocab 512
    assert flops["body"] == 2 * 2 * (4 * 64 * 64 + 3 * 64 * 128)
    assert flops["lm_head"] == 2 * 64 * 512
    table = capsys.readouterr().out
    assert "| this module |" in table and "| TRL DPOTrainer |" in table
    assert "| this module, share_prompt=false |" in table


def test_body_heavy_shape_costs_its_body_over_20x_its_lm_head() -> None:
    """The FLOPs formula on the benchmark's shapes and on 7B (``LlamaConfig()`` = Llama-7B)."""
    from transformers import LlamaConfig

    flops_per_token = load_script("dpo_step").flops_per_token  # from step_measure.py
    rollout = load_script("rollout")
    config = rollout.llava_shaped_config("body-heavy")
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size // vision.patch_size) ** 2 == 576 == config.image_seq_length
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (512, 8, 2048)
    flops = flops_per_token(text)
    # 2 L (2 h d_q + 2 h d_kv + 3 h i) against 2 h V: 8 (4 * 512 + 3 * 1376) / 2048
    assert flops["body"] == 2 * 8 * (4 * 512 * 512 + 3 * 512 * 1376)
    assert flops["lm_head"] == 2 * 512 * 2048
    assert (
        flops["body_to_head_ratio"] == pytest.approx(24.125) and flops["body_to_head_ratio"] >= 20
    )
    vocab_heavy = flops_per_token(rollout.llava_shaped_config().text_config)
    assert vocab_heavy["body_to_head_ratio"] == pytest.approx(4 * (4 * 256 + 3 * 704) / 32000)
    seven_b = flops_per_token(LlamaConfig())  # 4096 wide, 32 layers, MLP 11008, vocab 32000
    assert seven_b["body_to_head_ratio"] == pytest.approx(32 * (4 * 4096 + 3 * 11008) / 32000)
    assert "2 L (2 h d_q + 2 h d_kv + 3 h i)" in flops["formula"]


def test_module_args_parse_yaml_values_and_reject_malformed_items() -> None:
    script = load_script("dpo_step")
    parsed = script.parse_module_args(["response_logits_only=true", "lora_r=64", "x=[a, b]"])
    assert parsed == {"response_logits_only": True, "lora_r": 64, "x": ["a", "b"]}
    with pytest.raises(ValueError, match="key=value"):
        script.parse_module_args(["lora_r"])
