"""The per-family test matrix, as checks a family's test file calls with its tiny checkpoint.

Each ``check_*`` asserts one guarantee of the issue "The VLMs people align today" for any
``AugDPOModule`` subclass: step-0 DPO loss exactly ln 2, only LoRA trains, the reference is the
untouched base; prefix sharing and every efficiency switch equal the plain path (values and
gradients); rollouts and pair making; the reuse of rollout log-probs; SFT; a full fine-tune
exported as a plain transformers folder; ``predict`` then ``fit`` by ``class_path``. What is
family-specific (processor equality, image layout, prompt format, config messages) stays in the
family's file.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, random_images
from PIL import Image
from test_efficiency import PLAIN, assert_same, batch_for, perturb, step
from torch import nn

from lightning_aug_dpo import (
    AugPairDataModule,
    CombinedLoss,
    ConditionalPreferenceLoss,
    DiffusionNoise,
    SigmoidDPOLoss,
)
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.synthetic import write_llava_dataset
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.types import PromptBatch, Sampling, SFTBatch
from lightning_aug_dpo.validation import ConfigError

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Is there a square?"]
CHOSEN = ["The circle is red.", "There are three shapes.", "Yes, on the left."]
REJECTED = ["The circle is blue.", "There are two shapes.", "No."]
MDPO = {"loss": CombinedLoss([SigmoidDPOLoss(beta=0.1), ConditionalPreferenceLoss()], [1, 1])}
CONVERSATIONS = [
    [("user", "What color is the circle?"), ("assistant", "The circle is red.")],
    [
        ("user", "How many shapes are there?"),
        ("assistant", "There are three shapes."),
        ("user", "Is there a square?"),
        ("assistant", "Yes, on the left."),
    ],
]
#: ``share_prompt`` (the default) against the plain path, crossed with these settings.
SHARING = pytest.mark.parametrize(
    "settings",
    [{}, {"load_in_4bit": True}, {"gradient_checkpointing": True}, MDPO],
    ids=["default", "nf4", "checkpointing", "mdpo"],
)
#: Each efficiency switch on its own and all of them together, against the plain path.
SWITCHES = pytest.mark.parametrize(
    "switches",
    [
        {"reuse_image_features": True, "response_logits_only": False, "share_prompt": False},
        {"reuse_image_features": False, "response_logits_only": True, "share_prompt": False},
        {"reuse_image_features": True, "response_logits_only": True, "share_prompt": False},
        {"gradient_checkpointing": True},
    ],
    ids=["features", "logits", "features+logits", "all+checkpointing"],
)

Build = Callable[..., Any]


def module_builder(cls: type, default_path: Path) -> Build:
    """``build(path=None, **kwargs)``: a configured ``cls`` on the tiny checkpoint (LoRA r=8)."""

    def build(path: Path | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("lora_r", 8)
        kwargs.setdefault("lora_alpha", 16)
        torch.manual_seed(0)
        module = cls(model_name_or_path=str(path or default_path), **kwargs)
        module.configure_model()
        return module

    return build


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def train_steps(module: Any, batch: Any, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = module.preference_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def prompt_batch(n: int, questions: list[str] = QUESTIONS) -> PromptBatch:
    return PromptBatch(
        ids=[f"p{i}" for i in range(n)],
        indices=list(range(n)),
        image_paths=[f"img{i}.png" for i in range(n)],
        images=random_images(n),
        questions=questions[:n],
    )


def datamodule(noise_step: int = 800, **kwargs: Any) -> AugPairDataModule:
    return AugPairDataModule(
        data_path="unused.json",
        max_new_tokens=6,
        augmentation=DiffusionNoise(noise_step=noise_step),
        drop_identical=False,  # a random tiny model may answer both images alike
        **kwargs,
    )


# ---------------------------------------------------------------------------- DPO
def check_step_zero_and_training(module: Any, base_model: nn.Module) -> None:
    """ln 2 at step 0; training moves only LoRA and lowers the loss; the reference (adapters
    off) is the untouched checkpoint, bit for bit."""
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    loss, values = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(values["rewards/margins"], torch.zeros(3))
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = train_steps(module, batch, steps=5)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed), changed
    assert losses[-1] < math.log(2)
    module.model.eval()
    with torch.no_grad():
        with module.reference_context():
            reference = module.sequence_logps(batch)
        module.model = base_model  # the same computation on the plain base model
        expected = module.sequence_logps(batch)
    assert torch.equal(reference["chosen"], expected["chosen"])
    assert torch.equal(reference["rejected"], expected["rejected"])


def check_shared_prompt_equals_plain(build: Build, settings: dict, **common: Any) -> None:
    """Loss values, gradients and every block's log-probs of the packed path == plain path."""
    plain = build(**common, **settings, **PLAIN)
    shared = build(**common, **settings)
    for module in (plain, shared):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))
    with torch.no_grad():
        blocks = ("chosen", "rejected", "chosen_aug")
        a = plain.sequence_logps(batch_for(plain), blocks)
        b = shared.sequence_logps(batch_for(shared), blocks)
    for name in blocks:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-6, msg=name)


def check_switches(build: Build, switches: dict, **common: Any) -> None:
    plain = build(**common, **PLAIN)
    fast = build(**common, **switches)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))


def check_images_encoded_once(build: Build, tower: Callable[[Any], nn.Module]) -> None:
    """With ``reuse_image_features`` the frozen tower runs once per step (policy and
    reference share it); without, once per forward. ``tower(module)``: its vision tower."""

    def encoded_images(module: Any) -> list[int]:
        calls: list[int] = []
        tower(module).register_forward_pre_hook(
            lambda m, args, kwargs: calls.append(len(kwargs["pixel_values"])), with_kwargs=True
        )
        module.preference_step(batch_for(module))
        return calls

    assert encoded_images(build()) == [3]
    assert encoded_images(build(**PLAIN)) == [6, 6]  # chosen + rejected, policy and reference


def check_separate_reference(build: Build, tmp_path: Path) -> None:
    start = build()
    perturb(start)
    start.save_adapter(tmp_path / "sft")
    common = {"init_adapter": str(tmp_path / "sft"), "reference": "separate"}
    shared, plain = build(**common), build(**common, **PLAIN)
    loss, _ = shared.preference_step(batch_for(shared))
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-6)  # policy == reference at start
    perturb(shared, seed=2)
    perturb(plain, seed=2)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))


# ---------------------------------------------------------------------------- rollouts
def check_make_pairs(
    module: Any, monkeypatch: pytest.MonkeyPatch, questions: list[str] = QUESTIONS
) -> dict[str, Any]:
    """Clean and augmented images roll out in ONE left-padded ``generate``; the batch is the
    family-agnostic ``(B, 3, H, W)`` form and starts at ln 2. Returns that call's kwargs."""
    calls = []
    generate = module.model.generate

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(module.model, "generate", spy)
    batch = datamodule().make_pairs(prompt_batch(3, questions), module)
    assert len(calls) == 1
    (call,) = calls
    mask = call["attention_mask"]
    assert call["input_ids"].shape[0] == 6 and (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    side = module.preprocessor.size
    assert len(batch) == 3 and batch.pixel_values.shape == (3, 3, side, side)
    assert batch.aug_pixel_values.shape == batch.pixel_values.shape
    assert not torch.equal(batch.aug_pixel_values, batch.pixel_values)
    clean = module.preprocess_images(random_images(3))
    assert [r["chosen"] for r in batch.meta["rows"]] == module.generate(clean, questions[:3], 6)
    loss, _ = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    return call


def check_rollout_reference_logps(
    module: Any, questions: list[str] = QUESTIONS, **datamodule_kwargs: Any
) -> None:
    """``reuse_rollout_reference_logps``: the reference rollout's own logits (left-padded
    generate, KV cache) score the chosen answers as a reference forward does, and the step
    gives the same values with them as without. ``datamodule_kwargs``: more
    ``AugPairDataModule`` settings (``rollout_model``)."""
    dm = datamodule(noise_step=900, **datamodule_kwargs)
    batch = dm.make_pairs(prompt_batch(3, questions), module)
    assert batch.reference_chosen_logps is not None and len(batch) == 3
    with torch.no_grad(), module.reference_context():
        forward = module.sequence_logps(batch)["chosen"]
    torch.testing.assert_close(batch.reference_chosen_logps, forward, atol=1e-4, rtol=1e-5)
    perturb(module)
    reused = {k: v.detach() for k, v in module.preference_step(batch)[1].items()}
    batch.reference_chosen_logps = None
    computed = {k: v.detach() for k, v in module.preference_step(batch)[1].items()}
    for key in computed:
        torch.testing.assert_close(reused[key], computed[key], atol=1e-4, rtol=1e-4, msg=key)


def check_sampled_rollouts(module: Any) -> None:
    pixels = module.preprocess_images(random_images(2))
    torch.manual_seed(0)
    sampling = Sampling(do_sample=True, temperature=1.0, num_samples=2)
    rollouts = module.rollout(pixels, QUESTIONS[:2], max_new_tokens=5, sampling=sampling)
    assert len(rollouts) == 4 and all(0 < r.num_tokens <= 5 for r in rollouts)


# ---------------------------------------------------------------------------- SFT
def check_sft(
    module: Any, template_text: str | None, trained_text: str | None, steps: int = 4
) -> SFTBatch:
    """The two-round conversation is ``template_text`` (the chat template's rendering, image
    tokens expanded) token for token, its trained tokens decode to ``trained_text`` (each check
    skipped where None: the caller checks the returned batch itself); the SFT loss is the
    token-mean NLL of those tokens, and ``steps`` of training move LoRA only."""
    tok = module.tokenizer
    tokens, status = module.tokenize_conversations(CONVERSATIONS)
    assert status == [None, None]
    row = tokens["input_ids"][1][tokens["attention_mask"][1].bool()].tolist()
    if template_text is not None:
        assert row == tok(template_text).input_ids
    labels = tokens["labels"][1]
    if trained_text is not None:
        assert tok.decode(labels[labels != IGNORE_INDEX]) == trained_text
    batch = SFTBatch(pixel_values=module.preprocess_images(random_images(2)), **tokens)
    loss, count = module.sft_step(batch)
    module.model.eval()
    with torch.no_grad():
        logits = module.forward_logits(batch.input_ids, batch.attention_mask, batch.pixel_values)
    targets = batch.labels[:, 1:]
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )
    assert int(count) == int((targets != IGNORE_INDEX).sum()) > 0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    module.model.train()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = sft_train(module, batch, steps=steps)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed) and losses[-1] < losses[0]
    return batch


def sft_train(module: Any, batch: SFTBatch, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, _ = module.sft_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_full_finetune_export(
    build: Build,
    model_class: type,
    tmp_path: Path,
    trained: list[str],
    frozen: str,
    again: dict[str, Any] | None = None,
) -> Any:
    """``finetune: full`` trains every prefix in ``trained``, never the ``frozen`` tower; the
    merged export reloads with ``model_class`` to the same logits, with its processor. Returns
    the module built on the export with the settings ``again`` (default: ``finetune: full``)."""
    module = build(finetune="full")
    tokens, _ = module.tokenize_conversations(CONVERSATIONS)
    batch = SFTBatch(pixel_values=module.preprocess_images(random_images(2)), **tokens)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    sft_train(module, batch, steps=2)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)}
    for name in trained:
        assert any(name in k for k in changed), name
    assert not any(frozen in k for k in changed)

    def logits(model: nn.Module) -> torch.Tensor:
        model.eval()
        inputs = module.vision_inputs(batch.pixel_values, batch.input_ids)
        with torch.no_grad():
            return model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **inputs
            ).logits

    module.export_merged(tmp_path / "merged")
    reloaded = model_class.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(reloaded), logits(module.model), rtol=0, atol=1e-5)
    rebuilt = build(tmp_path / "merged", **({"finetune": "full"} if again is None else again))
    assert rebuilt.tokenizer.chat_template == module.tokenizer.chat_template  # processor saved
    assert rebuilt.tokenizer.eos_token == module.tokenizer.eos_token
    return rebuilt


# ---------------------------------------------------------------------------- config, CLI
def config_problems(cls: type, model_dir: Path, **kwargs: Any) -> list[str]:
    """The problems ``configure_model`` refuses (call with ``load_model`` patched to fail)."""
    module = cls(model_name_or_path=str(model_dir), **kwargs)
    with pytest.raises(ConfigError) as error:
        module.configure_model()
    return error.value.problems


def no_weights(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    def load_model(self: Any) -> None:
        raise AssertionError("the weights were loaded before the configuration was checked")

    monkeypatch.setattr(cls, "load_model", load_model)


def cli_config(class_path: str, model_dir: Path, tmp_path: Path, **init_args: Any) -> Path:
    """A CPU ``fit``/``predict`` config (``tmp_path / "family.yaml"``) for the module
    ``class_path`` (LoRA r=8, the model's ``init_args``) on a 4-image synthetic dataset
    (``tmp_path / "data"``) in batches of 2, logging ``metrics.csv`` under ``tmp_path / "runs"``."""
    data = write_llava_dataset(tmp_path / "data", num_images=4, seed=0)
    runs = str(tmp_path / "runs")
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": runs,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": runs, "name": "family"},
            },
        },
        "model": {
            "class_path": class_path,
            "init_args": {
                "model_name_or_path": str(model_dir),
                "lora_r": 8,
                "lora_alpha": 16,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
                **init_args,
            },
        },
        "data": {
            "class_path": "lightning_aug_dpo.AugPairDataModule",
            "init_args": {
                "data_path": str(data),
                "image_folder": str(data.parent / "images"),
                "batch_size": 2,
                "max_new_tokens": 4,
                "drop_identical": False,
            },
        },
    }
    path = tmp_path / "family.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def logged_losses(run: Path) -> list[float]:
    """The ``train/loss`` of every logged step in the run folder's ``metrics.csv``."""
    with open(run / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]


def check_cli_predict_then_fit(
    class_path: str, model_dir: Path, tmp_path: Path, **init_args: Any
) -> Path:
    """``predict`` writes the pairs of live rollouts (the module's own greedy answers) to
    ``tmp_path / "pairs.jsonl"``; ``fit`` by ``class_path`` (with the model's ``init_args``)
    trains on that file, from ln 2. Returns the fit's run folder."""
    path = cli_config(class_path, model_dir, tmp_path, **init_args)
    images_dir = Path(json.loads(path.read_text())["data"]["init_args"]["image_folder"])
    pairs = tmp_path / "pairs.jsonl"
    writer = {
        "class_path": "lightning_aug_dpo.PairsWriter",
        "init_args": {"output_path": str(pairs)},
    }
    cli = cli_main(["predict", "--config", str(path), "--trainer.callbacks+", json.dumps(writer)])
    assert type(cli.model).__name__ == class_path.rsplit(".", 1)[1]
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) == 4  # drop_identical: false
    images = [
        torch.from_numpy(np.array(Image.open(images_dir / r["image"]).convert("RGB"))) for r in rows
    ]
    clean = cli.model.preprocess_images([image.permute(2, 0, 1) for image in images])
    cli.model.model.eval()
    answers = cli.model.generate(clean, [r["prompt"] for r in rows], 4)
    assert [r["chosen"] for r in rows] == answers

    pairs_only = ["--data.init_args.data_path", "null", "--data.init_args.pairs_path", str(pairs)]
    cli = cli_main(["fit", "--config", str(path), *pairs_only])
    assert type(cli.model).__name__ == class_path.rsplit(".", 1)[1]
    run = Path(cli.trainer.log_dir)
    losses = logged_losses(run)
    assert len(losses) == 2  # 4 pairs / batch 2
    assert math.isclose(losses[0], math.log(2), abs_tol=1e-6)
    return run
