"""A user's mistakes, driven through the command line as they make them: each is caught at the
door (before any weights load) with its YAML key, its value and the fix, exit status 2, no
traceback; a run that fails before training leaves no run folder and no adapter; a run never
"succeeds" on nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_aug_dpo import LlavaDPOModule
from lightning_aug_dpo.cli import main
from lightning_aug_dpo.data.toy_world import write_toy_world
from lightning_aug_dpo.preflight import SAMPLE_IMAGES, spread
from lightning_aug_dpo.toy_base import TOY_BASE_DIR

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 1
  num_sanity_val_steps: 0
  limit_val_batches: 0
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {runs}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {runs}, name: user}}
  callbacks:
    - class_path: lightning_aug_dpo.AdapterCheckpoint
model:
  class_path: lightning_aug_dpo.LlavaDPOModule
  init_args:
    model_name_or_path: {model}
    lora_r: 4
    lora_alpha: 8
    max_length: 256
data:
  class_path: lightning_aug_dpo.AugPairDataModule
  init_args:
    data_path: {world}/pool.jsonl
    image_folder: {world}/images
    batch_size: 4
    num_prompts: 4
    max_new_tokens: 4
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_toy_world(out, splits=("pool",), sizes={"pool": 64})
    return out


@pytest.fixture
def config(tmp_path: Path, world: Path) -> Path:
    path = tmp_path / "fit.yaml"
    path.write_text(CONFIG.format(runs=tmp_path / "runs", model=TOY_BASE_DIR, world=world))
    return path


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_model(self: LlavaDPOModule) -> None:
        raise AssertionError("the weights were loaded before the configuration was checked")

    monkeypatch.setattr(LlavaDPOModule, "load_model", load_model)


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    """``lightning-aug-dpo fit --config CONFIG ARGS``: its exit status and stderr."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config), *args])
    return stop.value.code, capsys.readouterr().err


def nothing_left(config: Path) -> bool:
    """No run folder (hence no adapter, no checkpoint) under the config's runs folder."""
    runs = config.parent / "runs"
    return not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.usefixtures("no_weights")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.model_name_or_path", "./checkpoints/llava-7b"],
         ["model.model_name_or_path='./checkpoints/llava-7b': no such folder, and not a hub id",
          "Fix: the path of a checkpoint folder"]),
        (["--data.init_args.batch_size", "0"],
         ["data.batch_size=0 is out of range. Fix: an integer >= 1"]),
        (["--data.init_args.data_path", "prompts.jsonl"],
         ["data.data_path='prompts.jsonl': no such file. Fix: the path of a prompt file"]),
        (["--model.init_args.optimizer.init_args.lr=-1e-5", "--data.init_args.num_workers=-1",
          "--model.init_args.lora_dropout", "1.0"],
         ["3 configuration problems", "model.lora_dropout=1.0", "model.optimizer.init_args.lr",
          "data.num_workers=-1"]),
    ],
    ids=["model-path", "batch-size", "data-path", "every-problem-at-once"],
)  # fmt: skip
def test_a_bad_value_is_named_with_its_fix_before_the_weights_load(
    capsys: pytest.CaptureFixture[str], config: Path, args: list[str], expected: list[str]
) -> None:
    code, err = run_cli(capsys, config, *args)
    assert code == 2
    assert err.startswith("lightning-aug-dpo: error: ") and "no model was loaded" in err
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert nothing_left(config)


@pytest.mark.usefixtures("no_weights")
def test_a_wrong_image_folder_is_caught_from_a_sample_of_rows(
    capsys: pytest.CaptureFixture[str], config: Path, world: Path
) -> None:
    code, err = run_cli(capsys, config, "--data.init_args.image_folder", str(world))
    assert code == 2
    assert f"data.image_folder='{world}'" in err
    assert f"missing: {SAMPLE_IMAGES} of {SAMPLE_IMAGES}" in err
    assert "Fix: point data.image_folder at the folder the rows' paths are relative to" in err
    # skipping bad images does not make a wrong folder trainable: nothing would be left
    code, err = run_cli(
        capsys, config, "--data.init_args.image_folder", str(world),
        "--data.init_args.on_bad_image", "skip",
    )  # fmt: skip
    assert code == 2 and "over data.max_bad_fraction=0.1" in err
    assert nothing_left(config)


@pytest.mark.usefixtures("no_weights")
def test_a_malformed_line_is_named_without_a_traceback(
    capsys: pytest.CaptureFixture[str], config: Path, world: Path, tmp_path: Path
) -> None:
    lines = (world / "pool.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut: no longer JSON
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, config, "--data.init_args.data_path", str(bad))
    assert code == 2
    assert f"data.data_path: {bad}: line 3 not valid JSON" in err
    assert "fix or remove the line" in err and "Traceback" not in err


@pytest.mark.usefixtures("no_weights")
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_accelerator_without_a_gpu_is_named(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, err = run_cli(capsys, config, "--trainer.accelerator", "gpu")
    assert code == 2
    assert "trainer.accelerator='gpu', but this machine has no CUDA device" in err
    assert "Fix: --trainer.accelerator cpu" in err and "Traceback" not in err


def test_a_run_that_fails_before_training_leaves_no_run_folder(
    config: Path, tmp_path: Path
) -> None:
    """Damaged weights pass the up-front check (config.json is there) and fail in
    ``from_pretrained``: an unexpected error keeps its traceback, the folder goes."""
    model = tmp_path / "model"
    shutil.copytree(TOY_BASE_DIR, model)
    (model / "model.safetensors").write_bytes(b"not safetensors")
    command = [str(Path(sys.executable).parent / "lightning-aug-dpo"), "fit", "--config"]
    command += [str(config), "--model.init_args.model_name_or_path", str(model)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert nothing_left(config), sorted((tmp_path / "runs").rglob("*"))


def test_a_run_that_keeps_no_pair_stops_naming_the_reasons(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """The identity augmentation gives the same answer twice: every pair is dropped."""
    args = ["--data.init_args.augmentation", "lightning_aug_dpo.Identity"]
    code, err = run_cli(capsys, config, *args, "--trainer.max_steps", "-1")
    assert code == 2
    assert "no pair was kept this epoch (kept: 0 of 4, identical: 4 of 4)" in err
    assert "no adapter is written" in err
    assert nothing_left(config)


def test_too_many_bad_images_stop_the_run_before_an_adapter(
    capsys: pytest.CaptureFixture[str], config: Path, world: Path, tmp_path: Path
) -> None:
    """Images the up-front sample does not see are missing: the run's own count stops it."""
    images = tmp_path / "images"
    shutil.copytree(world / "images", images)
    rows = (world / "pool.jsonl").read_text().splitlines()
    sampled = set(spread(len(rows), SAMPLE_IMAGES))
    for i, row in enumerate(rows):
        if i not in sampled:
            (images / row.split('"image": "')[1].split('"')[0]).unlink()
    args = ["--data.init_args.image_folder", str(images), "--data.init_args.num_prompts", "64"]
    args += ["--data.init_args.on_bad_image", "skip", "--data.init_args.batch_size", "32"]
    code, err = run_cli(capsys, config, *args, "--trainer.max_steps", "-1")
    assert code == 2
    assert "images are unusable, over data.max_bad_fraction=0.1" in err
    assert "missing: " in err and " of 32" in err
    assert nothing_left(config)
