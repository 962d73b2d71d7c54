"""The command line a newcomer meets: --version, help that starts with this project's options,
short error messages that name the file and the key, and runs without upstream noise.

Help and --version run as the user runs them (the console script in a subprocess, a few seconds
of imports each); the error messages go through ``main`` in-process, as the same exit status and
stderr, to keep the suite fast.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest

from lightning_aug_dpo.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCRIPT = Path(sys.executable).with_name("lightning-aug-dpo")
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "lightning_aug_dpo"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_version_names_the_library_and_its_stack() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"lightning-aug-dpo {version('lightning-aug-dpo')}"
    for package in ("torch", "transformers", "lightning"):
        assert f"{package} {version(package)}" in lines


def test_fit_help_shows_the_library_options_first() -> None:
    result = run("fit", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    first_screen = "\n".join(lines[:40])
    for option in ("--config", "--model", "--data", "--model.help", "--data.help"):
        assert option in first_screen, option
    text = result.stdout
    # the Trainer's options come after the model's and the data's
    assert text.index("--data.help [CLASS_PATH_OR_NAME]") < text.index("--trainer.accelerator")
    assert len(lines) < 500


def test_data_help_lists_this_project_augmentations_not_torch_nn() -> None:
    result = run("fit", "--data.help", "lightning_aug_dpo.AugPairDataModule")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert len(text.splitlines()) < 200
    assert "lightning_aug_dpo.DiffusionNoise" in text and "lightning_aug_dpo.Preset" in text
    assert "any Kornia" in text and "kornia.augmentation.RandomGaussianBlur" in text
    assert "torch.nn.Linear" not in text


def test_kornia_class_path_is_still_an_augmentation() -> None:
    from lightning_aug_dpo.augment import KorniaAugmentation
    from lightning_aug_dpo.cli import cli_main

    blur = '{"class_path": "kornia.augmentation.RandomGaussianBlur", "init_args": ' \
        '{"kernel_size": 5, "sigma": [0.5, 2.0], "p": 1.0}}'  # fmt: skip
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]
    base = ["--config", str(CONFIGS / "seva_llava15_7b.yaml"), *cpu]
    cli = cli_main([*base, f"--data.init_args.augmentation={blur}"], run=False)
    assert isinstance(cli.datamodule.augmentation, KorniaAugmentation)
    assert cli.datamodule.augmentation.transform_path.endswith("RandomGaussianBlur")
    cli = cli_main([*base, "--data.init_args.augmentation=moco"], run=False)
    assert cli.datamodule.augmentation.name == "moco"  # a preset name, as before


def user_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``lightning-aug-dpo ARGS`` must stop with exit status 2; what it printed to stderr."""
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and len(err.splitlines()) <= 6, err  # short: no usage dump
    return err


@pytest.mark.parametrize(
    ("content", "line", "fix"),
    [
        ("model:\n\tclass_path: x\n", "line 2", "tab"),
        ("model:\n  init_args:\n   lora_r: 8\n    lora_alpha: 16\n", "line 4", "indentation"),
    ],
    ids=["tab", "indentation"],
)
def test_yaml_error_names_the_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, line: str, fix: str
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(content)
    err = user_error(capsys, "fit", "--config", str(config))
    assert f"{config}, {line}" in err and fix in err
    assert "<unicode string>" not in err


def test_mistyped_keys_get_the_closest_valid_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    demo = str(CONFIGS / "demo.yaml")
    err = user_error(capsys, "fit", "--config", demo, "--model.init_args.lora_rr", "8")
    assert "'lora_rr'" in err and "did you mean 'lora_r'?" in err
    assert "--model.help lightning_aug_dpo.LlavaDPOModule" in err

    overlay = tmp_path / "typo.yaml"
    overlay.write_text("trainer:\n  max_epocs: 2\n")
    err = user_error(capsys, "fit", "--config", demo, "--config", str(overlay))
    assert "did you mean 'trainer.max_epochs'?" in err


def test_upstream_noise_is_filtered_but_the_same_words_elsewhere_show(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from lightning_aug_dpo.cli_noise import install_noise_filters

    deprecated = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    with warnings.catch_warnings(record=True) as caught:  # restores the filters after it
        warnings.simplefilter("always")
        install_noise_filters()
        _tree_flatten(1)  # Lightning's helper builds a deprecated LeafSpec
        warnings.warn_explicit(deprecated, FutureWarning, "x.py", 1, "transformers.modeling_utils")
        warnings.warn_explicit(deprecated, FutureWarning, "mine.py", 1, "my_project.train")
    assert [str(w.message) for w in caught] == [deprecated]  # only the user's own

    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.INFO):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "Set x")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"
        )
        bnb.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


def test_model_summary_leaves_out_flops(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import RichModelSummary
    from lightning.pytorch.utilities.model_summary import summarize
    from torch import nn

    from lightning_aug_dpo.cli_noise import FlopsFreeRichModelSummary, without_flops_summary

    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert any(type(c) is RichModelSummary for c in trainer.callbacks)
    without_flops_summary(trainer)
    quiet = [c for c in trainer.callbacks if isinstance(c, RichModelSummary)]
    assert [type(c) for c in quiet] == [FlopsFreeRichModelSummary]

    module = LightningModule()
    module.layer = nn.Linear(4, 2)
    summary = summarize(module)
    quiet[0].summarize(summary._get_summary_data(), summary.total_parameters,
                       summary.trainable_parameters, summary.model_size,
                       summary.total_training_modes, summary.total_flops)  # fmt: skip
    printed = capsys.readouterr().out
    assert "Linear" in printed and "Total params" in printed
    assert "FLOPs" not in printed
