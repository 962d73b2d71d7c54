"""Configuration errors stop the run before any weights load, naming the key and the fix.

The model-level checks run with ``load_model`` replaced by a function that fails the test: a
check that only fired after ``from_pretrained`` (minutes and GPU memory for a 7B model) would
not count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightning_aug_dpo import LlavaDPOModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.validation import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo_mmvet.yaml"
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1"]


def cli_error(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """Parse the demo config with ``overrides``; the parser's error message."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", str(DEMO), *CPU, *overrides], run=False)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def test_unknown_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = cli_error(capsys, "--model.init_args.lora_rank=8")
    assert "lora_rank" in err


def test_wrong_type_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = cli_error(capsys, "--model.init_args.lora_r=eight")
    assert "lora_r" in err and "eight" in err


def test_nonpositive_beta_is_refused() -> None:
    beta = "--model.init_args.loss.init_args.beta=0"
    with pytest.raises(
        ValueError, match=r"beta must be a finite number > 0, got 0.0; .*e\.g\. 0\.1"
    ):
        cli_main(["--config", str(DEMO), *CPU, beta], run=False)


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_model(self: LlavaDPOModule) -> None:
        raise AssertionError("the weights were loaded before the configuration was checked")

    monkeypatch.setattr(LlavaDPOModule, "load_model", load_model)


def config_problems(model_dir: Path, **kwargs) -> list[str]:
    module = LlavaDPOModule(model_name_or_path=str(model_dir), **kwargs)
    with pytest.raises(ConfigError) as error:
        module.configure_model()
    assert "no model was loaded" in str(error.value)
    return error.value.problems


@pytest.mark.usefixtures("no_weights")
def test_lora_targets_matching_no_module_are_listed_with_what_exists(tiny_llava_dir: Path) -> None:
    # "fc1" exists, but only in the vision tower, which LoRA must not adapt.
    (problem,) = config_problems(tiny_llava_dir, lora_target_modules=["q_proj", "qkv", "fc1"])
    assert problem.startswith("model.lora_target_modules: ['qkv', 'fc1'] match no module")
    # what exists, grouped by block:
    assert "model.language_model.layers.*.{down_proj, gate_proj, k_proj, o_proj" in problem
    assert "model.vision_tower.encoder.layers.*.{fc1, fc2, k_proj, out_proj" in problem
    assert "model.multi_modal_projector.{linear_1, linear_2}" in problem


@pytest.mark.usefixtures("no_weights")
def test_modules_to_save_matching_no_module_are_refused(tiny_llava_dir: Path) -> None:
    (problem,) = config_problems(tiny_llava_dir, modules_to_save=["mm_projector"])
    assert problem.startswith("model.modules_to_save: ['mm_projector'] match no module")
    assert "'multi_modal_projector'" in problem


@pytest.mark.usefixtures("no_weights")
def test_image_size_disagreeing_with_the_model_is_refused(
    tiny_llava_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llava_dir, model_dir)
    config_file = model_dir / "processor_config.json"  # transformers >= 5 keeps it here
    processor = json.loads(config_file.read_text())
    side = json.loads((model_dir / "config.json").read_text())["vision_config"]["image_size"]
    processor["image_processor"]["crop_size"] = {"height": side * 2, "width": side * 2}
    config_file.write_text(json.dumps(processor))
    (problem,) = config_problems(model_dir)
    where = "processor_config.json image_processor.crop_size"
    assert f"makes {side * 2}x{side * 2} inputs ({where})" in problem
    assert f"takes {side}x{side} (config.json vision_config.image_size)" in problem
    assert f"Fix: set that crop_size (and size.shortest_edge) to {side}" in problem


@pytest.mark.usefixtures("no_weights")
def test_max_length_that_would_cut_image_tokens_is_refused(tiny_llava_dir: Path) -> None:
    spec = json.loads((tiny_llava_dir / "tiny_llava_spec.json").read_text())
    image_tokens = (spec["image_size"] // spec["patch_size"]) ** 2
    (problem,) = config_problems(tiny_llava_dir, max_length=image_tokens)
    assert problem.startswith(f"model.max_length={image_tokens} cannot hold one image")
    assert f"{image_tokens} of them image tokens" in problem
    assert "Fix: set model.max_length to at least" in problem


@pytest.mark.usefixtures("no_weights")
def test_every_problem_is_reported_at_once(tiny_llava_dir: Path) -> None:
    problems = config_problems(tiny_llava_dir, lora_target_modules=["qkv"], max_length=8)
    assert [p.split(":")[0].split("=")[0] for p in problems] == [
        "model.lora_target_modules",
        "model.max_length",
    ]


def test_a_valid_configuration_loads(tiny_llava_dir: Path) -> None:
    module = LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), lora_r=4, lora_alpha=8)
    module.configure_model()  # the checks pass for the shipped defaults
    assert module.model is not None


@pytest.mark.usefixtures("no_weights")
def test_qwen2_vl_image_size_off_the_patch_grid_is_refused(tmp_path: Path) -> None:
    from lightning_aug_dpo.models.qwen2_vl import Qwen2VLDPOModule
    from lightning_aug_dpo.models.tiny_qwen2_vl import write_tiny_qwen2_vl

    model_dir = write_tiny_qwen2_vl(tmp_path / "qwen")
    module = Qwen2VLDPOModule(model_name_or_path=str(model_dir), image_size=30)
    module.load_model = lambda: pytest.fail("weights loaded before the checks")  # type: ignore
    with pytest.raises(ConfigError, match=r"model.image_size must be a positive multiple of 28"):
        module.configure_model()


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "MODEL_TYPE"

    def __init__(self, hidden=8, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)
"""
REMOTE_MODEL = """
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.language_model = nn.ModuleDict({"q_proj": nn.Linear(config.hidden, config.hidden)})
        self.post_init()
"""


def remote_code_dir(tmp_path: Path, auto_class: str) -> Path:
    """A checkpoint whose model class ships with it (``auto_map``, registered for
    ``auto_class`` only): it builds only with ``trust_remote_code=True``."""
    folder = tmp_path / "remote"
    folder.mkdir()
    # transformers registers remote classes for the process: one model type per auto class
    model_type = f"tiny_remote_{auto_class.lower()}"
    (folder / "configuration_tiny_remote.py").write_text(
        REMOTE_CONFIG.replace("MODEL_TYPE", model_type)
    )
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    auto_map = {
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        auto_class: "modeling_tiny_remote.TinyRemoteModel",
    }
    config = {"model_type": model_type, "hidden": 8, "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_lora_check_builds_remote_code_models_when_trusted(tmp_path: Path) -> None:
    # trust_remote_code must reach the meta-device skeleton too, not only from_pretrained:
    # otherwise every remote-code model fails the check (or prompts on a terminal).
    from lightning_aug_dpo.module import AugDPOModule
    from lightning_aug_dpo.validation import lora_target_problems

    folder = remote_code_dir(tmp_path, "AutoModelForImageTextToText")
    module = AugDPOModule(
        model_name_or_path=str(folder), trust_remote_code=True, lora_target_modules=["q_proj"]
    )
    model = module.empty_model(module.load_config())
    assert lora_target_problems(module, model) == []


def test_a_family_whose_model_class_the_skeleton_cannot_build_is_not_refused(
    tiny_llava_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A family that loads another auto class (here: a remote-code model registered for
    # AutoModelForCausalLM only) and does not override empty_model: the LoRA targets cannot be
    # checked before the weights load, which must not stop a valid run (PEFT checks at load).
    import logging

    from transformers import AutoTokenizer

    from lightning_aug_dpo.module import AugDPOModule
    from lightning_aug_dpo.validation import check_config

    class CausalFamily(AugDPOModule):
        def format_prompt(self, question: str) -> str:
            return f"USER: {question} ASSISTANT:"

    folder = remote_code_dir(tmp_path, "AutoModelForCausalLM")
    module = CausalFamily(model_name_or_path=str(folder), trust_remote_code=True)
    module.processor = AutoTokenizer.from_pretrained(tiny_llava_dir)
    with caplog.at_level(logging.WARNING):
        check_config(module, module.load_config())
    assert any("lora_target_modules" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("no_weights")
def test_modules_to_save_match_by_suffix_as_peft_does(tiny_llava_dir: Path) -> None:
    # PEFT wraps every module whose path ends with a modules_to_save entry ("projector" ->
    # model.multi_modal_projector): the check must not refuse what PEFT trains.
    from transformers import AutoConfig

    from lightning_aug_dpo.validation import lora_target_problems

    module = LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), modules_to_save=["projector"])
    model = module.empty_model(AutoConfig.from_pretrained(tiny_llava_dir))
    assert lora_target_problems(module, model) == []
