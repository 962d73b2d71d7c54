"""``python -m lightning_aug_dpo.recipe_cost``: the cost arithmetic against hand-computed values
(a tiny model, small numbers), the 7B recipe's figures, and the command as a user runs it."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_aug_dpo.model_sizes import complete_config
from lightning_aug_dpo.recipe_cost import (
    Assumptions,
    disk_plan,
    plan_recipe,
    scenario,
    schedule,
)
from lightning_aug_dpo.recipe_read import model_config_for, read_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE_7B = ROOT / "configs" / "seva_llava15_7b.yaml"
# A tiny LLaVA: 2 layers of width 64 (4 heads of 16), MLP 128, vocab 100; CLIP 32 wide, 1 layer,
# 28 px / patch 14 = 4 image tokens.
TINY = {
    "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32,
                      "intermediate_size": 64, "num_hidden_layers": 1, "image_size": 28,
                      "patch_size": 14},
}  # fmt: skip
# N: per layer q, k, v, o 64 x 64 and gate, up, down 64 x 128: 2 x (4 x 4096 + 3 x 8192)
N = 2 * (4 * 4096 + 3 * 8192)  # 81,920
# LoRA r=2 on q and v: 2 x (64 + 64) each, 2 layers; projector 32 x 64 + 64 + 64 x 64 + 64
LORA, PROJECTOR = 2 * 2 * (128 + 128), 2048 + 64 + 4096 + 64  # 1,024 and 6,272
P = LORA + PROJECTOR  # 7,296
# 1 MFLOP/s x MFU 0.5 and 0.1 MB/s x 0.5: seconds come out as plain numbers
SLOW = Assumptions(prompt_text_tokens=4, answer_tokens=3, decode_steps=5, kept_fraction=0.5,
                   mfu=0.5, peak_tflops=1e-6, hbm_tbps=1e-7, bandwidth_efficiency=0.5)  # fmt: skip
RECIPE = """
trainer:
  max_epochs: 3
  accumulate_grad_batches: 2
  callbacks:
    - class_path: lightning_aug_dpo.AdapterCheckpoint
      init_args: {{every_n_train_steps: 2, save_top_k: -1}}
model:
  class_path: lightning_aug_dpo.LlavaDPOModule
  init_args:
    model_name_or_path: {model}
    torch_dtype: bfloat16
    lora_r: 2
    lora_target_modules: [q_proj, v_proj]
    modules_to_save: [multi_modal_projector]
data:
  class_path: lightning_aug_dpo.AugPairDataModule
  init_args: {{data_path: {prompts}, batch_size: 2, max_new_tokens: 8}}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """The tiny recipe: 10 prompts from a file, a local model folder with config.json."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"image": "{i}.jpg", "text": "q"}}\n' for i in range(10)))
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE.format(model=model, prompts=prompts))
    return path


def _tiny(path: Path, **overrides):
    recipe = read_recipe(path)
    config, source = model_config_for(recipe)
    assert source.endswith("model/config.json")
    return recipe.__class__(**{**recipe.__dict__, **overrides}), config


def test_schedule(tiny: Path) -> None:
    recipe, _ = _tiny(tiny)
    assert recipe.prompts == 10
    assert recipe.prompts_from == f"{tiny.parent / 'prompts.jsonl'}: 10 rows"
    # ceil(10 / 2) = 5 micro-batches per epoch, ceil(5 / 2) = 3 optimizer steps, 3 epochs
    assert schedule(recipe) == {"micro_batches_per_epoch": 5, "optimizer_steps_per_epoch": 3,
                                "optimizer_steps": 9, "micro_batches": 15}  # fmt: skip
    # 3 devices: ceil(10 / 3) = 4 prompts each, 2 micro-batches, 1 step per epoch; max_steps caps
    assert schedule(_tiny(tiny, devices=3)[0])["optimizer_steps"] == 3
    assert schedule(_tiny(tiny, max_steps=2)[0])["micro_batches"] == 4


def test_typical_scenario_by_hand(tiny: Path) -> None:
    recipe, config = _tiny(tiny)
    s = scenario(recipe, config, SLOW, answer=3, steps=5, kept=0.5)
    # L_p = 4 image + 4 text; 2 prompts x 0.5 kept = 1 pair; share_prompt: 1 x (8 + 2 x 3)
    train_flops = 6 * 14 * (N + P)  # 7,494,144
    prefill_flops, decode_flops = 2 * N * 4 * 8, 2 * N * 4 * 5  # 4 rollout rows
    assert s["flops_total"] == {
        "train": 15 * train_flops,
        "rollout": 15 * (prefill_flops + decode_flops),
    }
    assert s["tokens_per_optimizer_step"] == {
        "rollout_generated": 2 * 4 * 3,
        "rollout_prefill": 2 * 4 * 8,
        "scored": 2 * 14,
    }
    assert s["tokens_total"] == {"rollout_generated": 180, "rollout_prefill": 480, "scored": 210}
    # Decode step reads bf16 weights (2N) + LM head (100 x 64 x 2) + KV cache: 4 rows x mean
    # context (8 + 5 / 2) x (2 layers x K, V x 64 x 2 bytes) = 21,504; at 0.05 MB/s that beats
    # the step's 2N x 4 FLOPs at 0.5 MFLOP/s (1.31 s).
    read = 2 * N + 12_800 + 21_504  # 198,144 bytes: 3.96288 s
    rollout_s = prefill_flops / 5e5 + 5 * read / 5e4  # 10.48576 + 19.8144
    assert s["seconds_per_micro_batch"]["rollout"] == pytest.approx(30.30016)
    assert rollout_s == pytest.approx(30.30016)
    assert s["seconds_per_micro_batch"]["train"] == pytest.approx(train_flops / 5e5)  # 14.988
    assert s["gpu_hours"]["total"] == pytest.approx(15 * (30.30016 + 14.988288) / 3600)
    assert s["wall_hours"] == s["gpu_hours"]["total"]


def test_other_regimes_by_hand(tiny: Path) -> None:
    recipe, config = _tiny(tiny)
    fast_memory = Assumptions(**{**SLOW.__dict__, "hbm_tbps": 1.0})
    # compute-bound decode: 5 steps x 2N x 4 rows / 0.5 MFLOP/s
    s = scenario(recipe, config, fast_memory, 3, 5, 0.5)
    assert s["seconds_per_micro_batch"]["rollout"] == pytest.approx(10.48576 + 5 * 1.31072)
    measured = Assumptions(**{**SLOW.__dict__, "rollout_tokens_per_s": 2.0})
    s = scenario(recipe, config, measured, 3, 5, 0.5)
    assert s["seconds_per_micro_batch"]["rollout"] == 4 * 5 / 2  # rows x steps / rate
    # rollouts from the policy: its LoRA joins the rollout FLOPs
    s = scenario(_tiny(tiny, rollout_model="policy")[0], config, SLOW, 3, 5, 0.5)
    assert s["flops_total"]["rollout"] == 15 * 2 * (N + LORA) * 4 * (8 + 5)
    # without share_prompt every pair is two rows: 2 x 1 x (8 + 3) tokens
    unshared = _tiny(tiny, model_args={**recipe.model_args, "share_prompt": False})[0]
    assert scenario(unshared, config, SLOW, 3, 5, 0.5)["tokens_total"]["scored"] == 15 * 22
    # a pairs file: no rollouts at all
    assert (
        scenario(_tiny(tiny, rollouts=False)[0], config, SLOW, 3, 5, 0.5)["gpu_hours"]["rollout"]
        == 0
    )


def test_bound_scenario_and_disk_by_hand(tiny: Path) -> None:
    recipe, config = _tiny(tiny)
    plan = plan_recipe(recipe, config, SLOW)
    assert plan["estimate"] is True and plan["model"]["trainable_parameters"]["total"] == P
    bound = plan["bound"]  # every answer 8 tokens, every pair kept: 2 x (8 + 16) tokens
    assert (bound["answer_tokens"], bound["decode_steps"], bound["kept_fraction"]) == (8, 8, 1)
    assert bound["flops_total"]["train"] == 15 * 6 * 48 * (N + P)
    assert plan["typical"]["answer_tokens"] == 3
    # .ckpt: fp32 weights + AdamW's two fp32 states = 12 B/param; adapter exports in torch_dtype
    disk = disk_plan(recipe, config)
    assert (disk["ckpt_bytes"], disk["adapter_bytes"], disk["adapter_fp32_bytes"]) == (
        12 * P, 2 * P, 4 * P,
    )  # fmt: skip
    assert disk["adapter_dtype"] == "bfloat16"
    # 9 steps, every 2: 4 checkpoints kept (save_top_k -1), each with its adapter, + adapter/
    assert disk["checkpoints_kept"] == 4 and disk["total_bytes"] == 4 * 12 * P + 5 * 2 * P
    # merged/ in bf16: every weight of the model (N, embeddings + head, 5 norms, vision, projector)
    vision = 3 * 14 * 14 * 32 + 32 + 5 * 32 + 4 * 32 + (4 * 1056 + 2112 + 2080 + 128)
    merged = _tiny(tiny, export_merged=True)[0]
    total = N + 2 * 100 * 64 + 5 * 64 + vision + PROJECTOR  # 128,992
    assert disk_plan(merged, config)["merged_bytes"] == 2 * total


def test_the_7b_recipe_by_hand() -> None:
    recipe = read_recipe(RECIPE_7B, num_prompts=16_000)
    config, source = model_config_for(recipe)
    assert source == "its published config.json"
    plan = plan_recipe(recipe, config)
    n = 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # 6,476,005,376
    p = 1024 * 32 * (4 * 8192 + 3 * 15104) + 1024 * 4096 + 4096 + 4096**2 + 4096  # 2.58 B
    # 16,000 prompts / batch 16 = 1,000 micro-batches, / 8 accumulated = 125 steps, x 2 epochs
    assert plan["schedule"]["optimizer_steps"] == 250
    assert plan["disk"]["ckpt_bytes"] == 12 * p == 30_954_061_824  # ~31 GB per .ckpt
    assert plan["disk"]["adapter_fp32_bytes"] == 4 * p == 10_318_020_608  # ~10 GB in fp32
    assert plan["disk"]["adapter_bytes"] == 2 * p  # exported in bf16, the recipe's torch_dtype
    # 250 steps, a checkpoint every 200: one .ckpt + its adapter, and adapter/ at the end
    assert plan["disk"]["total_bytes"] == 12 * p + 2 * 2 * p
    typical = plan["typical"]  # 624-token prompts, answers 32, 128 decode steps, 32 rows
    achieved = 989.4e12 * 0.35
    train_s = 6 * 16 * (624 + 64) * (n + p) / achieved
    read = n * (0.5 + 1 / 64 + 4 / 16384 + 4) + 32064 * 4096 * 2 + 32 * (624 + 64) * 32 * 8192 * 2
    rollout_s = 2 * n * 32 * 624 / achieved + 128 * read / (3.35e12 * 0.6)
    assert typical["gpu_hours"]["total"] == pytest.approx(2000 * (train_s + rollout_s) / 3600)
    assert 2.5 < typical["gpu_hours"]["total"] < 3.2  # about 3 hours on one H100
    # the README's worked plan for 512-token answers: 4.2 + 38.4 + 13.3 + 4.9 GiB
    assert round(plan["bound"]["train_step_peak_gib"], 1) == 60.9 and plan["bound"]["fits_gpu"]


def test_partial_config_json_is_completed_like_the_published_sizes(tmp_path: Path) -> None:
    # llava-hf/llava-1.5-7b-hf's config.json names only what differs from LlamaConfig
    partial = {"text_config": {"model_type": "llama", "vocab_size": 32064},
               "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                                 "intermediate_size": 4096, "num_hidden_layers": 24,
                                 "image_size": 336, "patch_size": 14}}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(partial))
    recipe = read_recipe(RECIPE_7B, num_prompts=16_000)
    given, _ = model_config_for(recipe, path)
    published, _ = model_config_for(recipe)
    assert plan_recipe(recipe, given)["typical"] == plan_recipe(recipe, published)["typical"]
    with pytest.raises(ValueError, match=r"config\.json: text_config lacks \['hidden_size'.*add"):
        complete_config({**partial, "text_config": {"model_type": "qwen2"}}, str(path))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "lightning_aug_dpo.recipe_cost", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_command_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    ddp = ROOT / "configs" / "multigpu" / "ddp.yaml"
    done = _run(str(RECIPE_7B), str(ddp), "--json", "cost.json", "--mfu", "0.3", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ESTIMATED cost of" in out and "no GPU measured these" in out
    assert "16,000 (SeVa's 16,000; data/seva_prompts_16k.jsonl not found)" in out
    assert "125 per epoch x 2 epochs, batch 16 on each of 8 device(s)" in out
    assert "31.0 GB (28.8 GiB)" in out and "5.2 GB (4.8 GiB) in bfloat16" in out
    assert "MFU 0.3 (ASSUMED)" in out and "wrote cost.json" in out
    plan = json.loads((tmp_path / "cost.json").read_text())
    assert plan["assumptions"]["mfu"] == 0.3 and plan["recipe"]["devices"] == 8
    ty = plan["typical"]
    assert ty["wall_hours"] == pytest.approx(ty["gpu_hours"]["total"] / 8)


def test_command_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    done = _run("missing.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "missing.yaml: config not found" in done.stdout
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE_7B.read_text().replace("llava-hf/llava-1.5-7b-hf", "my/model"))
    done = _run(str(other), cwd=tmp_path)
    assert done.returncode == 2 and "'my/model'" in done.stdout and "--model-config" in done.stdout
    done = _run(str(RECIPE_7B), "--model-config", "nope.json", cwd=tmp_path)
    assert done.returncode == 2 and "nope.json: model config not found" in done.stdout
    done = _run(str(RECIPE_7B), "--mfu", "1.5", cwd=tmp_path)
    assert done.returncode == 2 and "mfu must be in (0, 1], got 1.5" in done.stdout


def test_gpu_check_sizes_is_the_library_copy() -> None:
    spec = importlib.util.spec_from_file_location(
        "gpu_check_sizes_for_test", ROOT / "benchmarks" / "gpu_check_sizes.py"
    )
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    library = ROOT / "lightning_aug_dpo" / "model_sizes.py"
    for name in ("memory_plan", "trainable_parameters", "step_flops", "lora_parameters"):
        assert Path(inspect.getsourcefile(getattr(shim, name))) == library
