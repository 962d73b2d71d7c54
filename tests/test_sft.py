"""SFT training: the exact loss, what trains (LoRA, QLoRA, full), exports, a short fit that
learns, byte-identical reruns, resuming full fine-tuning, the CLI, and the SFT -> SeVa hand-off."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_batch, random_images
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from peft import PeftModel
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

from lightning_aug_dpo import LlavaDPOModule, Qwen2VLDPOModule, SFTDataModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.models.tiny_qwen2_vl import write_tiny_qwen2_vl
from lightning_aug_dpo.types import SFTBatch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONVERSATIONS = [
    [("user", "What color is the circle?"), ("assistant", "The circle is red.")],
    [
        ("user", "How many shapes are there?"),
        ("assistant", "There are three shapes."),
        ("user", "Is there a square?"),
        ("assistant", "Yes, on the left."),
    ],
]
QUESTIONS = ["What color is the circle?", "How many shapes are there?"]
CHOSEN = ["The circle is red.", "There are three shapes."]
REJECTED = ["The circle is blue.", "There are two shapes."]
FAMILIES = {
    "llava": (LlavaForConditionalGeneration, "multi_modal_projector", "vision_tower"),
    "qwen2_vl": (Qwen2VLForConditionalGeneration, "visual.merger", "visual."),
}


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def build(cls, path: Path, **kwargs):
    kwargs.setdefault("lora_r", 8)
    kwargs.setdefault("lora_alpha", 16)
    torch.manual_seed(0)
    module = cls(model_name_or_path=str(path), **kwargs)
    module.configure_model()
    return module


def sft_batch(module, conversations=CONVERSATIONS) -> SFTBatch:
    tokens, status = module.tokenize_conversations(conversations)
    assert all(s is None for s in status)
    pixels = module.preprocess_images(random_images(len(conversations)))
    return SFTBatch(pixel_values=pixels, **tokens)


def sft_train(module, batch: SFTBatch, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = module.sft_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def logits_of(model, batch: SFTBatch, module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **module.vision_inputs(batch.pixel_values, batch.input_ids),
        ).logits


# ---------------------------------------------------------------------------- the step
@pytest.mark.parametrize("response_logits_only", [True, False])
def test_sft_loss_is_the_token_mean_nll_of_the_answers(make_module, response_logits_only) -> None:
    module = make_module(response_logits_only=response_logits_only)
    batch = sft_batch(module)
    loss, tokens = module.sft_step(batch)
    logits = logits_of(module.model, batch, module)
    targets = batch.labels[:, 1:]
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )
    assert int(tokens) == int((targets != IGNORE_INDEX).sum()) > 0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_lora_sft_trains_only_lora(make_module) -> None:
    module = make_module()
    batch = sft_batch(module)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = sft_train(module, batch, steps=5)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed), changed
    assert losses[-1] < losses[0]


def test_qlora_sft_runs_on_a_4bit_base_on_cpu(make_module) -> None:
    import bitsandbytes as bnb

    module = make_module(load_in_4bit=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())
    losses = sft_train(module, sft_batch(module), steps=4)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_full_finetune_trains_lm_and_projector_and_exports_a_plain_model(
    family, tiny_llava_dir, tiny_qwen_dir, tmp_path
) -> None:
    hf_class, projector, tower = FAMILIES[family]
    cls, path = {
        "llava": (LlavaDPOModule, tiny_llava_dir),
        "qwen2_vl": (Qwen2VLDPOModule, tiny_qwen_dir),
    }[family]
    module = build(cls, path, finetune="full")
    assert not module.has_adapter
    batch = sft_batch(module)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    sft_train(module, batch, steps=3)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".language_model." in k for k in changed)
    assert any(projector in k for k in changed) and any(k.startswith("lm_head") for k in changed)
    frozen_tower = [k for k in before if tower in k and projector not in k]
    assert frozen_tower and not changed & set(frozen_tower)
    # the export is a plain transformers folder with the processor: the trained model's logits
    module.export_merged(tmp_path / "merged")
    reloaded = hf_class.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        logits_of(reloaded, batch, module),
        logits_of(module.model, batch, module),
        rtol=0,
        atol=1e-5,
    )
    again = build(cls, tmp_path / "merged", finetune="full")  # processor saved too
    assert again.tokenizer.chat_template == module.tokenizer.chat_template
    with pytest.raises(ValueError, match="has no adapter"):
        module.save_adapter(tmp_path / "adapter")


def test_full_finetune_refuses_4bit_and_needs_a_separate_dpo_reference(make_module) -> None:
    with pytest.raises(ValueError, match=r"finetune: full conflicts with model.load_in_4bit"):
        LlavaDPOModule(model_name_or_path="unused", finetune="full", load_in_4bit=True)
    module = make_module(finetune="full")
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    with pytest.raises(ValueError, match=r"set model\.reference: separate"):
        module.preference_step(batch)
    separate = make_module(finetune="full", reference="separate")
    loss, _ = separate.preference_step(make_batch(separate, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ---------------------------------------------------------------------------- exports, hand-off
@pytest.fixture(scope="module")
def sft_exports(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A LoRA SFT (projector trained in full) of the tiny LLaVA, exported both ways."""
    module = build(LlavaDPOModule, tiny_llava_dir, modules_to_save=["multi_modal_projector"])
    batch = sft_batch(module)
    sft_train(module, batch, steps=4)
    out = tmp_path_factory.mktemp("sft-exports")
    module.save_adapter(out / "adapter")
    module.export_merged(out / "merged")
    return {"module": module, "batch": batch, "adapter": out / "adapter", "merged": out / "merged"}


def test_adapter_and_merged_exports_give_the_trained_logits(sft_exports, tiny_llava_dir) -> None:
    module, batch = sft_exports["module"], sft_exports["batch"]
    trained = logits_of(module.model, batch, module)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    untouched = logits_of(base, batch, module)
    adapter = PeftModel.from_pretrained(base, sft_exports["adapter"])
    merged = LlavaForConditionalGeneration.from_pretrained(sft_exports["merged"])
    torch.testing.assert_close(logits_of(adapter, batch, module), trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(merged, batch, module), trained, rtol=0, atol=1e-4)
    assert not torch.allclose(untouched, trained, atol=1e-3)


def test_merged_sft_model_as_dpo_base_starts_at_ln2(sft_exports) -> None:
    module = build(LlavaDPOModule, sft_exports["merged"])
    loss, _ = module.preference_step(make_batch(module, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_sft_adapter_as_init_adapter_with_separate_reference_starts_at_ln2(
    sft_exports, tiny_llava_dir
) -> None:
    module = build(
        LlavaDPOModule,
        tiny_llava_dir,
        init_adapter=str(sft_exports["adapter"]),
        reference="separate",
    )
    loss, _ = module.preference_step(make_batch(module, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    # the policy is the SFT model (not the base): same loss on an SFT batch
    expected, _ = sft_exports["module"].sft_step(sft_exports["batch"])
    got, _ = module.sft_step(sft_exports["batch"])
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


# ---------------------------------------------------------------------------- Trainer runs
def fit_sft(module, data: Path, root: Path, ckpt_path=None, callbacks=(), **trainer_kwargs):
    datamodule = SFTDataModule(
        str(data), str(data.parent / "images"), num_val_samples=4, batch_size=4, seed=0
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name="run"),
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    pl.seed_everything(0)
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return trainer, datamodule


def test_short_sft_run_lowers_held_out_loss(tiny_llava_dir, demo_assets, tmp_path) -> None:
    module = LlavaDPOModule(
        model_name_or_path=str(tiny_llava_dir),
        lora_r=8,
        lora_alpha=16,
        # the tiny random LM head's logits are too small to fit answers through LoRA alone
        modules_to_save=["multi_modal_projector", "lm_head"],
        optimizer=partial(torch.optim.AdamW, lr=5e-3),
    )
    data = demo_assets["prompts"]
    datamodule = SFTDataModule(
        str(data), str(data.parent / "images"), num_val_samples=4, batch_size=4, seed=0
    )
    before = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    start = before.validate(module, datamodule, verbose=False)[0]["val/loss"]
    trainer, _ = fit_sft(module, data, tmp_path, max_epochs=4)  # 7 steps per epoch
    assert trainer.global_step == 28
    end = float(trainer.callback_metrics["val/loss"])
    assert end < start - 1.0, (start, end)  # measured: 6.28 -> 3.23
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 28 and all(float(r["train/tokens"]) > 0 for r in rows)
    assert (Path(trainer.log_dir) / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_identical_runs_write_identical_weight_bytes(
    finetune, tiny_llava_dir, demo_assets, tmp_path
) -> None:
    exported = []
    for name in ("a", "b"):
        module = LlavaDPOModule(
            model_name_or_path=str(tiny_llava_dir), lora_r=8, lora_alpha=16, finetune=finetune
        )
        trainer, _ = fit_sft(module, demo_assets["prompts"], tmp_path / name, max_steps=5)
        run = Path(trainer.log_dir)
        weights = (
            "adapter/adapter_model.safetensors"
            if finetune == "lora"
            else "merged/model.safetensors"
        )
        exported.append((run / weights).read_bytes())
        assert (run / "adapter").exists() == (finetune == "lora")
    assert exported[0] == exported[1]


def test_full_finetune_resumes_to_the_uninterrupted_weights(
    tiny_llava_dir, demo_assets, tmp_path
) -> None:
    def run(root: Path, ckpt_path=None) -> dict[str, torch.Tensor]:
        module = LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), finetune="full")
        every = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1)
        trainer, _ = fit_sft(module, demo_assets["prompts"], root, ckpt_path, [every], max_steps=6)
        return load_file(Path(trainer.log_dir) / "merged" / "model.safetensors")

    straight = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "ckpt" / "epoch=0-step=3.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert any("vision_tower" in k for k in straight) and not any(
        "vision_tower" in k for k in saved
    )
    resumed = run(tmp_path / "resumed", ckpt_path=checkpoint)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_cli_fits_the_sft_demo_config(demo_assets, tmp_path, monkeypatch) -> None:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "sft_demo.yaml"),
            "--trainer.max_epochs=2",
            "--data.init_args.num_samples=8",
            "--data.init_args.num_val_samples=4",
            "--data.init_args.batch_size=4",
        ]
    )
    run = Path(cli.trainer.log_dir).resolve()
    assert run.parent == tmp_path / "runs" / "sft_demo"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r.get("train/loss")]
    assert len(steps) == 4 and all(float(r["train/tokens"]) > 0 for r in steps)
    assert [r for r in rows if r.get("val/loss")], "validation did not run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert list((run / "checkpoints").glob("*-adapter/adapter_model.safetensors"))
    merged = LlavaForConditionalGeneration.from_pretrained(run / "merged")
    assert merged.config.image_token_index == cli.model.image_token_id()


def test_train_vision_tower_trains_every_weight(tiny_llava_dir) -> None:
    """A model trained from scratch (the toy base) trains its random vision tower too."""
    module = build(LlavaDPOModule, tiny_llava_dir, finetune="full", train_vision_tower=True)
    batch = sft_batch(module)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    sft_train(module, batch, steps=2)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any("vision_tower" in k for k in changed)
    assert all(p.requires_grad for p in module.model.parameters())
    with pytest.raises(ValueError, match=r"needs model\.finetune: full"):
        LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), train_vision_tower=True)
