"""The CLI: every config parses; ``fit`` and ``predict`` run end to end on the demo, in-process."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor

from lightning_aug_dpo.augment import ImagePreprocessor, replay
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.prompts import decode_image

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TRL_NAMES = [
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/accuracies",
    "train/rewards/margins",
    "train/logps/chosen",
    "train/logps/rejected",
    "train/logits/chosen",
    "train/logits/rejected",
    "train/pairs/kept",
    "train/pairs/identical_rate",
    "train/lengths/chosen",
    "train/lengths/rejected",
    "mmvet/total",
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_aug_dpo",
            "fit",
            "--config",
            str(config),
            "--print_config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model_name_or_path" in result.stdout
    assert "class_path: lightning_aug_dpo" in result.stdout


OVERLAYS = sorted((CONFIGS[0].parent / "augment").glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_augmentation_overlays_compose_with_the_recipe(overlay: Path) -> None:
    from lightning_aug_dpo import AugPairDataModule
    from lightning_aug_dpo.augment import Augmentation

    base = CONFIGS[0].parent / "seva_llava15_7b.yaml"
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
    cli = cli_main(["--config", str(base), "--config", str(overlay), *cpu], run=False)
    assert isinstance(cli.datamodule, AugPairDataModule)
    assert isinstance(cli.datamodule.augmentation, Augmentation)
    assert cli.datamodule.hparams.data_path == "data/seva_prompts_16k.jsonl"  # base kept


DEMO_ARGS = [
    "--config",
    str(CONFIGS[0].parent / "demo_mmvet.yaml"),
    "--data.init_args.num_prompts=16",
    "--data.init_args.num_val_prompts=4",
    "--trainer.max_epochs=2",
]


@pytest.fixture
def demo_cwd(demo_assets, tmp_path: Path, monkeypatch) -> Path:
    """Run from a fresh folder holding ``demo_assets/``, as ``make demo`` does from the repo."""
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_runs_end_to_end_on_the_demo_config(demo_cwd: Path, capsys) -> None:
    cli = cli_main(["fit", *DEMO_ARGS])
    run = Path(cli.trainer.log_dir).resolve()
    assert run.parent == demo_cwd / "runs" / "demo"

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(TRL_NAMES) <= set(rows[0])
    steps = [r for r in rows if r["train/loss"]]
    assert len(steps) == 2 * 2  # 16 prompts / batch 8 x 2 epochs (no batch was all identical)
    assert math.isclose(float(steps[0]["train/loss"]), math.log(2), abs_tol=1e-6)
    assert [r for r in rows if r["mmvet/total"]], "mmvet/total was never logged"
    assert [r for r in rows if r.get("val/loss")], "validation did not run"
    # adaptive strength (demo_mmvet): t = 500 is too strong for the tiny model, so it steps down
    strengths = [float(r["train/augment/strength"]) for r in steps]
    assert strengths[0] == 0.5 and strengths[-1] < 0.5, strengths
    # the gallery (demo_mmvet: every 8 steps and on the first) shows real pairs with their records
    page = (run / "gallery.html").read_text(encoding="utf-8")
    assert re.findall(r'<section id="step-(\d+)"', page) == ["1"]
    pairs = page.count('<div class="pair">')
    assert pairs >= 1 and page.count('<img src="data:image/png;base64,') == 2 * pairs
    assert re.search(r"<dd>diffusion, [^<]*seed \d+", page)

    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert list((run / "checkpoints").glob("*-adapter/adapter_model.safetensors"))
    answers = json.loads((run / "eval" / "mmvet" / "epoch=1" / "answers.json").read_text())
    assert list(answers) == [f"v1_{i}" for i in range(24)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prompts"] == 16 and summary["prompt_visits"] == 32  # 16 prompts x 2 epochs
    assert summary["pairs_kept"] + summary["pairs_identical"] == 32
    assert 0.0 <= summary["final_epoch_reward_accuracy_pct"] <= 100.0  # percent, as named
    assert "mmvet/total_pct" in summary and "mmvet/complete" in summary
    printed = capsys.readouterr().out
    assert "run summary" in printed
    assert "prompts (distinct)" in printed and "prompt visits (all epochs)" in printed
    # the progress bar's last frame comes before the summary, not under it; no FLOPs column
    # (always 0 for a module without example_input_array)
    assert printed.rindex("Epoch 1/1") < printed.index("run summary")
    assert "Total params" in printed and "FLOPs" not in printed


def test_predict_writes_a_pairs_file(demo_cwd: Path, demo_assets) -> None:
    out = demo_cwd / "pairs.jsonl"
    writer = {"class_path": "lightning_aug_dpo.PairsWriter", "init_args": {"output_path": str(out)}}
    cli_main(["predict", *DEMO_ARGS, "--trainer.callbacks+", json.dumps(writer)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(rows) <= 16
    processor = AutoImageProcessor.from_pretrained(demo_assets["model"])
    preprocessor = ImagePreprocessor.from_image_processor(processor)
    for row in rows:
        assert set(row) == {"id", "image", "prompt", "chosen", "rejected", "augmentation",
                            "chosen_finished", "rejected_finished"}  # fmt: skip
        assert row["chosen"] != row["rejected"]
        image = demo_assets["prompts"].parent / "images" / row["image"]
        assert image.is_file()
        # the record rebuilds the rejected image: replay re-draws and checks the parameters
        clean = preprocessor([decode_image(image)])[0]
        augmented = replay(row["augmentation"], clean)
        assert augmented.shape == clean.shape and not torch.equal(augmented, clean)


@pytest.mark.parametrize(
    "overlay", sorted((CONFIGS[0].parent / "multigpu").glob("*.yaml")), ids=lambda p: p.name
)
def test_multigpu_overlays_compose_with_the_recipe(overlay: Path) -> None:
    base = CONFIGS[0].parent / "seva_llava15_7b.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "lightning_aug_dpo", "fit", "--config", str(base),
         "--config", str(overlay), "--print_config"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "devices: 8" in result.stdout and "accumulate_grad_batches: 1" in result.stdout
    strategy = "DeepSpeedStrategy" if "deepspeed" in overlay.name else "DDPStrategy"
    assert strategy in result.stdout
