"""Safe loading: no code shipped with a checkpoint runs unless asked (``trust_remote_code``), model
and adapter weights come from safetensors only, and every ``torch.load`` (the resume of a fit
included) is ``weights_only=True``."""

from __future__ import annotations

import ast
import inspect
import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from safetensors.torch import load_file, save_file

from lightning_aug_dpo import AdapterCheckpoint, AugDPOModule, LlavaDPOModule, Qwen2VLDPOModule
from lightning_aug_dpo.checkpoint_io import AtomicCheckpointIO
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.eval.hf_judge import HFJudge
from lightning_aug_dpo.eval.judges import JudgeError
from lightning_aug_dpo.preview import build_preprocessor
from lightning_aug_dpo.safe_loading import check_adapter_dir

ROOT = Path(__file__).resolve().parents[2]


class Recorded(Exception):
    """Raised by a spy after it recorded a call, where loading for real is not the point."""


def spy(monkeypatch, cls: type, calls: list, returns=None) -> None:
    """Record ``cls.from_pretrained``'s keyword arguments; then call through, or return
    ``returns`` (raise :class:`Recorded` when it is an exception class)."""
    real = cls.from_pretrained

    def from_pretrained(*args, **kwargs):
        calls.append((cls.__name__, kwargs))
        if returns is None:
            return real(*args, **kwargs)
        if isinstance(returns, type) and issubclass(returns, Exception):
            raise returns(cls.__name__)
        return returns

    monkeypatch.setattr(cls, "from_pretrained", from_pretrained)


@pytest.mark.parametrize("trust", [None, True], ids=["default", "asked-for"])
def test_trust_remote_code_is_off_unless_asked_and_reaches_every_from_pretrained(
    make_module, monkeypatch, trust
) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    assert inspect.signature(AugDPOModule).parameters["trust_remote_code"].default is False
    calls: list = []
    spy(monkeypatch, AutoProcessor, calls)
    spy(monkeypatch, LlavaForConditionalGeneration, calls)
    make_module(**({} if trust is None else {"trust_remote_code": trust}))
    expected = bool(trust)
    assert [(name, kw["trust_remote_code"]) for name, kw in calls] == [
        ("AutoProcessor", expected),
        ("LlavaForConditionalGeneration", expected),
    ]
    assert calls[1][1]["use_safetensors"] is True  # the model: safetensors only


def test_the_other_loaders_pass_trust_remote_code_too(monkeypatch, tmp_path) -> None:
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    calls: list = []
    spy(monkeypatch, AutoTokenizer, calls, returns=SimpleNamespace(chat_template="{{ x }}"))
    spy(monkeypatch, AutoImageProcessor, calls, returns=SimpleNamespace())
    Qwen2VLDPOModule(str(tmp_path), trust_remote_code=True).load_processor()
    assert [(n, kw["trust_remote_code"]) for n, kw in calls] == [
        ("AutoTokenizer", True),
        ("AutoImageProcessor", True),
    ]

    calls.clear()
    spy(monkeypatch, AutoModelForCausalLM, calls, returns=OSError)
    with pytest.raises(JudgeError):
        HFJudge(str(tmp_path / "judge"))._load()  # the judge: off by default
    assert [(n, kw["trust_remote_code"]) for n, kw in calls] == [
        ("AutoTokenizer", False),
        ("AutoModelForCausalLM", False),
    ]
    assert calls[1][1]["use_safetensors"] is True

    calls.clear()
    spy(monkeypatch, AutoImageProcessor, calls, returns=Recorded)
    with pytest.raises(Recorded):
        build_preprocessor(224, str(tmp_path))  # preview reads a processor config, never code
    assert calls == [("AutoImageProcessor", {"trust_remote_code": False})]


@pytest.fixture
def bin_only_model(tiny_llava_dir: Path, tmp_path: Path) -> Path:
    """The tiny LLaVA with its weights as a PyTorch pickle (``pytorch_model.bin``) only."""
    out = tmp_path / "bin-only"
    shutil.copytree(tiny_llava_dir, out)
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


def test_a_model_folder_with_only_bin_weights_is_refused_naming_it_and_the_fix(
    bin_only_model: Path,
) -> None:
    from transformers import LlavaForConditionalGeneration

    message = rf"{bin_only_model}: holds PyTorch pickle weights only \(pytorch_model.bin\)"
    with pytest.raises(FileNotFoundError, match=message) as err:
        LlavaDPOModule(model_name_or_path=str(bin_only_model)).configure_model()
    assert "use_safetensors=False).save_pretrained(NEW_DIR)" in str(err.value)  # the fix
    with pytest.raises(JudgeError, match=message):
        HFJudge(str(bin_only_model))._load()
    # use_safetensors=True, which every model load passes, refuses it in transformers as well
    # (what guards hub ids, which the folder check cannot see)
    with pytest.raises(OSError, match=r"no file named model\.safetensors"):
        LlavaForConditionalGeneration.from_pretrained(bin_only_model, use_safetensors=True)


def test_an_adapter_loads_only_from_complete_safetensors(make_module, tmp_path: Path) -> None:
    good, pickled = tmp_path / "good", tmp_path / "pickled"
    make_module().save_adapter(good)
    assert check_adapter_dir(good) == good
    shutil.copytree(good, pickled)
    weights = load_file(pickled / "adapter_model.safetensors")
    torch.save(weights, pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{pickled}: holds adapter_model.bin .*Convert"):
        make_module(init_adapter=str(pickled))  # PEFT alone would unpickle it
    with pytest.raises(FileNotFoundError, match=r"adapter folder not found; .*huggingface-cli"):
        check_adapter_dir(tmp_path / "org/adapter-on-the-hub")
    truncated = good / "adapter_model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size - 1])
    with pytest.raises(ValueError, match=rf"{truncated}: not a complete safetensors file"):
        check_adapter_dir(good)
    save_file(weights, truncated)
    (good / "adapter_config.json").write_text('{"r": 8,')
    with pytest.raises(ValueError, match=r"adapter_config.json: not valid JSON"):
        check_adapter_dir(good)


def torch_load_calls(path: Path) -> list[tuple[int, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
    ]


def is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_in_the_project_is_weights_only() -> None:
    folders = ("lightning_aug_dpo", "benchmarks", "tests")
    files = [path for folder in folders for path in (ROOT / folder).rglob("*.py")]
    unsafe = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in files
        for line, call in torch_load_calls(path)
        if not any(kw.arg == "weights_only" and is_true(kw.value) for kw in call.keywords)
    ]
    assert unsafe == []
    assert torch_load_calls(Path(__file__))  # the scan does see calls (this file has some)


def test_adapter_checkpoint_installs_atomic_checkpoint_io_on_a_plain_trainer(tmp_path) -> None:
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
    AdapterCheckpoint(dirpath=tmp_path).setup(trainer, None, "fit")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


class TouchOnLoad:
    """Unpickling this creates a file: the proof that a pickled object's code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoints_load_weights_only_whatever_the_environment_says(tmp_path, monkeypatch):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    marker, path = tmp_path / "code-ran", tmp_path / "unsafe.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "note": TouchOnLoad(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=rf"{path}: refused by torch.load\(weights_only=True\)"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    # Lightning's own CheckpointIO passes weights_only=None: torch's default, which this
    # environment variable turns off, and the pickled object's code runs
    TorchCheckpointIO().load_checkpoint(path)
    assert marker.exists()


FIT = [
    "--config", str(ROOT / "configs" / "demo_mmvet.yaml"),
    "--data.init_args.num_prompts=4", "--data.init_args.num_val_prompts=0",
    "--data.init_args.batch_size=4", "--data.init_args.max_new_tokens=4",
    "--trainer.max_epochs=1", "--trainer.logger=false",
    "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
    "--trainer.callbacks+=" + json.dumps({"class_path": "lightning_aug_dpo.AdapterCheckpoint",
                                          "init_args": {"dirpath": "ckpt", "save_last": True}}),
]  # fmt: skip


def test_a_resumed_fit_loads_with_weights_only_and_refuses_pickled_objects(
    demo_assets, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *FIT])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the CLI's
    last = tmp_path / "ckpt" / "last.ckpt"
    # our checkpoints hold tensors and plain values only: weights_only=True reads all of them
    checkpoint = torch.load(last, weights_only=True)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(
        checkpoint
    )
    assert checkpoint["AugPairDataModule"]["position"] == {"epoch": 0, "batches": 1}

    loads: list = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **kw: loads.append(kw.get("weights_only")) or real_load(*a, **kw)
    )
    cli = cli_main(["fit", *FIT, "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    assert cli.trainer.global_step == 2  # resumed at step 1, trained the second epoch
    assert loads == [True, True]  # the CLI's read of the hyperparameters, the Trainer's restore

    marker, unsafe = tmp_path / "code-ran", tmp_path / "unsafe.ckpt"
    checkpoint["note"] = TouchOnLoad(marker)
    torch.save(checkpoint, unsafe)
    refused = rf"{unsafe}: refused by torch.load\(weights_only=True\).*Unsupported global"
    with pytest.raises(ValueError, match=refused):
        cli_main(["fit", *FIT, f"--ckpt_path={unsafe}"])
    cli = cli_main(FIT, run=False)  # the Trainer's own restore refuses it too
    with pytest.raises(ValueError, match=refused):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=unsafe)
    assert not marker.exists()
    pickle.loads(pickle.dumps(checkpoint["note"]))  # what a plain unpickling would have done
    assert marker.exists()
