"""The evaluation jobs for every family: the module class from the checkpoint's ``model_type``
(or ``--model-class``), the same answers as the epoch-end callback on the same model, progress
on stderr, and ``--help`` defaults that are the values the jobs (and their callbacks) use."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from test_efficiency import perturb

from lightning_aug_dpo import (
    Gemma3DPOModule,
    InternVLDPOModule,
    LLaVABenchCallback,
    LlavaDPOModule,
    LlavaNextDPOModule,
    MMVetCallback,
    POPECallback,
    Qwen2_5_VLDPOModule,
    Qwen2VLDPOModule,
    Qwen3VLDPOModule,
    SmolVLMDPOModule,
    ToyWorldCallback,
)
from lightning_aug_dpo.data.prompts import decode_image
from lightning_aug_dpo.data.synthetic import write_mmvet_benchmark
from lightning_aug_dpo.eval.model_class import (
    MODEL_CLASSES,
    ModelClassError,
    import_module_class,
    module_class,
    parse_model_args,
    read_model_type,
)
from lightning_aug_dpo.eval.pope import SPLITS
from lightning_aug_dpo.models import (
    write_tiny_gemma3,
    write_tiny_internvl,
    write_tiny_llava_next,
    write_tiny_qwen2_5_vl,
    write_tiny_qwen2_vl,
    write_tiny_qwen3_vl,
    write_tiny_smolvlm,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import llava_bench as llava_job  # noqa: E402
import mmvet as mmvet_job  # noqa: E402
import pope as pope_job  # noqa: E402
import toy as toy_job  # noqa: E402
import toy_world_eval as toy_world_job  # noqa: E402

#: model_type -> (tiny checkpoint writer, module class); LLaVA's comes from conftest.
FAMILIES: dict[str, tuple[Any, type]] = {
    "llava": (None, LlavaDPOModule),
    "llava_next": (write_tiny_llava_next, LlavaNextDPOModule),
    "qwen2_vl": (write_tiny_qwen2_vl, Qwen2VLDPOModule),
    "qwen2_5_vl": (write_tiny_qwen2_5_vl, Qwen2_5_VLDPOModule),
    "qwen3_vl": (write_tiny_qwen3_vl, Qwen3VLDPOModule),
    "gemma3": (write_tiny_gemma3, Gemma3DPOModule),
    "internvl": (write_tiny_internvl, InternVLDPOModule),
    "smolvlm": (write_tiny_smolvlm, SmolVLMDPOModule),
    "idefics3": (lambda out: write_tiny_smolvlm(out, architecture="idefics3"), SmolVLMDPOModule),
}
#: Settings a training config may give the module; the job gets them as --model-arg.
SETTINGS: dict[str, dict[str, Any]] = {"qwen2_5_vl": {"image_size": 112}}  # tiny default: 56
NEW_TOKENS = 6


class MarkedLlava(LlavaDPOModule):
    """A user's own subclass, named to the jobs by ``--model-class``."""

    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        MarkedLlava.built += 1


@pytest.fixture(scope="module")
def checkpoints(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    dirs = {"llava": tiny_llava_dir}
    for model_type, (write, _) in FAMILIES.items():
        if write is not None:
            dirs[model_type] = Path(write(root / model_type))
    return dirs


@pytest.fixture(scope="module")
def mmvet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three MM-Vet-format questions about generated images."""
    return write_mmvet_benchmark(tmp_path_factory.mktemp("mmvet"), num_questions=3, seed=3).parent


def test_the_family_comes_from_config_json(checkpoints: dict[str, Path]) -> None:
    assert set(MODEL_CLASSES) == set(FAMILIES)
    for model_type, (_, cls) in FAMILIES.items():
        path = checkpoints[model_type]
        assert read_model_type(str(path)) == (model_type, str(path / "config.json"))
        assert module_class(str(path)) is cls, model_type


def test_the_job_answers_with_every_family(checkpoints, mmvet_dir, tmp_path, capsys) -> None:
    """Each family's tiny checkpoint through the MM-Vet job: loaded as its own class, one
    answer per question written, graded and scored."""
    for model_type, (_, cls) in FAMILIES.items():
        out = tmp_path / model_type
        argv = ["--data-dir", str(mmvet_dir), "--out", str(out), "--limit", "1", "--device",
                "cpu", "--model", str(checkpoints[model_type]), "--dtype", "float32",
                "--max-new-tokens", "2"]  # fmt: skip
        assert mmvet_job.main(argv) == 0, model_type
        assert list(json.loads((out / "answers.json").read_text())) == ["v1_0"]
        assert json.loads((out / "scores.json").read_text())["complete"]
        err = capsys.readouterr().err
        assert f"as {cls.__module__}.{cls.__name__}" in err, model_type


def _trained(model_type: str, path: Path, adapter: Path) -> Any:
    """The module as training leaves it at an epoch's end: LoRA moved away from the identity
    (saved as ``adapter``), in train mode."""
    _, cls = FAMILIES[model_type]
    torch.manual_seed(0)
    module = cls(
        model_name_or_path=str(path), lora_r=8, lora_alpha=16, **SETTINGS.get(model_type, {})
    )
    module.configure_model()
    perturb(module)
    module.save_adapter(adapter)
    return module.train()


def _decode(path: Path) -> torch.Tensor:
    return decode_image(str(path))


def _callback_answers(module: Any, mmvet_dir: Path, root: Path) -> dict[str, str]:
    """What ``MMVetCallback`` writes at an epoch's end (a real Trainer, no fit needed)."""
    callback = MMVetCallback(str(mmvet_dir), limit=3, max_new_tokens=NEW_TOKENS, batch_size=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, default_root_dir=str(root),
        enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    callback.evaluate(trainer, module)
    return json.loads((root / "eval" / "mmvet" / "epoch=0" / "answers.json").read_text())


@pytest.mark.parametrize("model_type", ["llava", "qwen2_5_vl", "gemma3"])
def test_job_and_callback_give_the_same_answers(
    model_type: str, checkpoints, mmvet_dir: Path, tmp_path: Path, capsys
) -> None:
    """A trained module's answers at an epoch's end (MMVetCallback) are the answers the job
    gives for the checkpoint + the adapter saved from it: same questions, images, greedy
    decoding, answer length and batch size, and the training config's module settings."""
    path, adapter, out = checkpoints[model_type], tmp_path / "adapter", tmp_path / "job"
    module = _trained(model_type, path, adapter)
    expected = _callback_answers(module, mmvet_dir, tmp_path / "run")
    # The adapter matters: the base model answers otherwise (else equality would be cheap).
    with torch.no_grad():
        pixels = module.preprocess_images(
            [_decode(mmvet_dir / "images" / f"v1_{i}.png") for i in range(3)]
        )
        questions = json.loads((mmvet_dir / "mm-vet.json").read_text())
        asked = [questions[f"v1_{i}"]["question"] for i in range(3)]
        base = module.generate(pixels, asked, NEW_TOKENS, use_reference=True)
    assert base != list(expected.values())
    assert any(expected.values())

    argv = ["--data-dir", str(mmvet_dir), "--out", str(out), "--model", str(path),
            "--adapter", str(adapter), "--dtype", "float32", "--device", "cpu", "--limit", "3",
            "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "2"]  # fmt: skip
    for key, value in SETTINGS.get(model_type, {}).items():
        argv += ["--model-arg", f"{key}={json.dumps(value)}"]
    if model_type == "qwen2_5_vl":  # as a user runs it
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "mmvet.py"), *argv],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        stdout, stderr = result.stdout, result.stderr
        # stdout is the results only; rich draws the progress on stderr (once, at the end,
        # when stderr is not a terminal)
        assert json.loads(stdout.strip().splitlines()[-1])["mmvet/total"] >= 0
        assert re.search(r"answering .*3/3 .*\d+\.\d\d answers/s", stderr), stderr
    else:
        assert mmvet_job.main(argv) == 0
        stdout, stderr = capsys.readouterr()
    _, cls = FAMILIES[model_type]
    assert f"as {cls.__module__}.{cls.__name__}" in stderr and "answers/s" in stderr
    assert "answers/s" not in stdout
    assert json.loads((out / "answers.json").read_text()) == expected


# ---------------------------------------------------------------------------- errors, overrides
def test_an_unknown_model_type_names_the_file_the_known_types_and_the_fix(
    mmvet_dir: Path, tmp_path: Path, capsys
) -> None:
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv = ["--data-dir", str(mmvet_dir), "--out", str(tmp_path / "o"), "--model", str(model)]
    assert mmvet_job.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmvet.py: error: {model / 'config.json'}: model_type 'bert' ")
    assert "known model types: gemma3, idefics3, internvl, llava, llava_next" in err
    assert "--model-class my_pkg.MyDPOModule" in err and len(err.splitlines()) == 1
    (model / "config.json").write_text("{}")
    with pytest.raises(ModelClassError, match=r"config\.json: has no model_type.*--model-class"):
        module_class(str(model))
    (model / "config.json").unlink()
    with pytest.raises(ModelClassError, match=r"bert/config\.json: not found; --model must"):
        module_class(str(model))


@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("MarkedLlava", "not a class path; write the module and the class"),
        ("no_such_package.Module", "cannot import no_such_package .*PYTHONPATH"),
        ("lightning_aug_dpo.models.llava.Llava", "llava has no Llava; check the spelling"),
        ("torch.nn.Linear", "not a subclass of lightning_aug_dpo.AugDPOModule"),
    ],
)
def test_a_bad_model_class_is_a_clear_error(class_path: str, message: str) -> None:
    with pytest.raises(ModelClassError, match=f"--model-class {class_path}.*{message}"):
        import_module_class(class_path)


def test_model_class_overrides_the_model_type(
    tiny_llava_dir: Path, mmvet_dir: Path, tmp_path: Path, capsys
) -> None:
    class_path = f"{__name__}.MarkedLlava"
    assert module_class(str(tmp_path / "anything"), class_path) is MarkedLlava  # no config read
    before = MarkedLlava.built
    argv = ["--data-dir", str(mmvet_dir), "--out", str(tmp_path / "o"), "--limit", "1",
            "--model", str(tiny_llava_dir), "--model-class", class_path, "--dtype", "float32",
            "--max-new-tokens", "2", "--device", "cpu"]  # fmt: skip
    assert mmvet_job.main(argv) == 0 and MarkedLlava.built == before + 1
    assert f"as {class_path}" in capsys.readouterr().err


def test_model_args_are_the_classes_own_arguments() -> None:
    pairs = ["image_size=112", "pad_to_square=false", 'lora_target_modules=["q_proj"]', "x="]
    with pytest.raises(ModelClassError, match=r"no argument 'x'; its arguments: .*image_size"):
        parse_model_args(pairs, Qwen2_5_VLDPOModule)
    assert parse_model_args(pairs[:3], Qwen2_5_VLDPOModule) == {
        "image_size": 112,
        "pad_to_square": False,
        "lora_target_modules": ["q_proj"],
    }
    assert parse_model_args(["reference=separate"], LlavaDPOModule) == {"reference": "separate"}
    with pytest.raises(ModelClassError, match="--model-arg init_adapter: set it with --adapter"):
        parse_model_args(["init_adapter=x"], LlavaDPOModule)
    with pytest.raises(ModelClassError, match="--model-arg 'image_size': write KEY=VALUE"):
        parse_model_args(["image_size"], Qwen2_5_VLDPOModule)


# ---------------------------------------------------------------------------- --help defaults
def _parsers() -> dict[str, argparse.ArgumentParser]:
    return {
        "mmvet": mmvet_job.run_parser(),
        "mmvet score": mmvet_job.score_parser(),
        "llava_bench": llava_job.run_parser(),
        "llava_bench score": llava_job.score_parser(),
        "pope": pope_job.parser(),
        "toy": toy_job.run_parser(),
        "toy_world_eval": toy_world_job.parser(),
    }


def test_every_stated_default_is_the_default() -> None:
    """Where an option's help names a default, it is the value argparse holds."""
    for name, parser in _parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help or action.default is None:
                continue
            text = " ".join(formatter._expand_help(action).split())
            stated = re.search(r"default: ([^,;)]+)", text)
            if stated is None:
                continue
            shown = action.default
            if isinstance(shown, list):
                shown = " ".join(shown)
            elif isinstance(shown, str) and "\n" in shown:
                shown = repr(shown)
            assert stated.group(1).strip() == str(shown), f"{name}: {text}"


def _default(callback: type, name: str) -> Any:
    return inspect.signature(callback.__init__).parameters[name].default


@pytest.mark.parametrize(
    ("job", "callback", "protocol"),
    [
        ("mmvet", MMVetCallback, "LLaVA-1.5's model_vqa.py"),
        ("llava_bench", LLaVABenchCallback, "LLaVA-1.5's model_vqa.py"),
        ("pope", POPECallback, "LLaVA-1.5's model_vqa_loader.py"),
        ("toy_world_eval", ToyWorldCallback, "the toy world's"),
    ],
)
def test_job_defaults_are_the_callbacks(job: str, callback: type, protocol: str) -> None:
    """A job answers as its callback does by default: length, batch, suffix, splits."""
    parser = _parsers()[job]
    assert parser.get_default("max_new_tokens") == _default(callback, "max_new_tokens")
    assert parser.get_default("batch_size") == _default(callback, "batch_size")
    if callback is POPECallback:
        assert parser.get_default("prompt_suffix") == _default(callback, "prompt_suffix")
        assert _default(callback, "splits") is None  # None: every split, as the job
        assert parser.get_default("splits") == list(SPLITS)
    (action,) = [a for a in parser._actions if a.dest == "max_new_tokens"]
    assert protocol in action.help
    if job == "toy_world_eval":
        assert "LLaVA" not in action.help
