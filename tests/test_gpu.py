"""CUDA-only checks (marker ``gpu``; skipped without a device): QLoRA on the GPU, bf16 fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_batch

from lightning_aug_dpo.augment import PRESET_NAMES

pytestmark = pytest.mark.gpu


def test_qlora_step_zero_is_ln2_on_cuda(make_module) -> None:
    import bitsandbytes as bnb

    module = make_module(load_in_4bit=True, torch_dtype="bfloat16").cuda()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())
    batch = make_batch(module, ["What color?", "How many?"], ["red", "two"], ["blue", "one"])
    loss, _ = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_separate_4bit_reference_and_switches_on_cuda(make_module, tmp_path) -> None:
    """``reference: separate`` with a starting adapter is ln 2 at step 0 on CUDA (bf16 nf4), and
    the efficiency switches give the plain path's loss (bf16 tolerance)."""
    start = make_module()
    with torch.no_grad():
        for param in start.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    start.save_adapter(tmp_path / "sft")
    adapter = str(tmp_path / "sft")
    common = {"load_in_4bit": True, "torch_dtype": "bfloat16", "init_adapter": adapter}
    fast = make_module(reference="separate", **common).cuda()
    plain = make_module(
        reference="separate",
        reuse_image_features=False,
        response_logits_only=False,
        share_prompt=False,
        **common,
    ).cuda()
    batch = make_batch(fast, ["What color?", "How many?"], ["red", "two"], ["blue", "one"])
    loss, _ = fast.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert plain.preference_step(batch)[0].item() == pytest.approx(loss.item(), abs=1e-3)


# Presets whose result may flip at a threshold (equalize/autocontrast histogram bins, posterize
# and solarize cut-offs) can differ by a whole level at the few pixels sitting on it.
DISCONTINUOUS = {"equalize", "autocontrast", "posterize", "solarize", "randaugment", "autoaugment"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_replay_on_cuda_matches_cpu(name: str) -> None:
    """Parameters come from CPU generators, so CUDA applies the same ones: within 1e-5."""
    from lightning_aug_dpo.augment import Preset, replay

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    out_gpu, records = Preset(name)(x.cuda(), [1, 2])
    out_cpu, cpu_records = Preset(name)(x, [1, 2])
    assert records == cpu_records
    torch.testing.assert_close(replay(records[0], x[0].cuda()), out_gpu[0], rtol=0, atol=0)
    diff = (out_gpu.cpu() - out_cpu).abs()
    if name in DISCONTINUOUS:
        assert (diff > 1e-5).float().mean() < 1e-3
    else:
        assert diff.max() < 1e-5


def test_fit_bf16_on_cuda(demo_assets, tmp_path: Path, monkeypatch) -> None:
    from lightning_aug_dpo.cli import cli_main

    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "demo_mmvet.yaml"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.accelerator=gpu",
            "--trainer.precision=bf16-mixed",
            "--trainer.max_epochs=1",
            "--data.init_args.num_prompts=16",
            "--model.init_args.load_in_4bit=true",
        ]
    )
    assert (Path(cli.trainer.log_dir) / "adapter" / "adapter_model.safetensors").is_file()
