"""The second model family: Qwen2-VL as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (round-trips through ``from_pretrained``); LoRA and 4-bit
touch the language model only; our fixed-size device preprocessing + ``vision_inputs`` give the
model exactly the inputs (hence logits and greedy answers) of Qwen2-VL's own processor; the DPO
step is exact at step 0 and trains LoRA only; rollouts and pair making work unchanged; the CLI
trains it from YAML by ``class_path``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_batch, random_images
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

from lightning_aug_dpo import AugPairDataModule, DiffusionNoise, Qwen2VLDPOModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.synthetic import write_llava_dataset
from lightning_aug_dpo.models.tiny_qwen2_vl import (
    IMAGE_TOKEN,
    TinyQwen2VLSpec,
    write_tiny_qwen2_vl,
)
from lightning_aug_dpo.types import PromptBatch, Sampling

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Is there a square?"]
CHOSEN = ["The circle is red.", "There are three shapes.", "Yes, on the left."]
REJECTED = ["The circle is blue.", "There are two shapes.", "No."]


def official_processor(path: Path):
    """Qwen2-VL's own processor. ``AutoProcessor`` needs torchvision (transformers also builds
    a video processor); without it, the same class over the checkpoint's tokenizer and image
    processor: only ``__init__``'s type check wants the video half, ``__call__`` on images
    does not touch it."""
    from transformers import AutoProcessor, Qwen2VLProcessor

    try:
        import torchvision  # noqa: F401
    except ImportError:
        processor = object.__new__(Qwen2VLProcessor)
        processor.tokenizer = AutoTokenizer.from_pretrained(path)
        processor.image_processor = AutoImageProcessor.from_pretrained(path)
        processor.video_processor = None
        processor.chat_template = processor.tokenizer.chat_template
        tok = processor.tokenizer
        processor.image_token, processor.video_token = tok.image_token, tok.video_token
        processor.image_token_id = tok.convert_tokens_to_ids(tok.image_token)
        processor.video_token_id = tok.convert_tokens_to_ids(tok.video_token)
        return processor
    return AutoProcessor.from_pretrained(path)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def train_steps(module, batch, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = module.preference_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_round_trips_through_from_pretrained(tiny_qwen2_vl_dir: Path, tmp_path) -> None:
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_dir)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_vl_dir)
    image_processor = AutoImageProcessor.from_pretrained(tiny_qwen2_vl_dir)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.bos_token is None
    assert len(tok) == model.config.text_config.vocab_size == 512
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert image_processor.size["longest_edge"] == image_processor.size["shortest_edge"] == 56**2
    text = "What color is the circle? It is red, and 3 squares."
    assert tok.decode(tok(text).input_ids) == text
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n<|im_start|>assistant\n"
    )
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    # deterministic per seed; a saved copy reloads to the same weights
    again = write_tiny_qwen2_vl(tmp_path / "again")
    other = write_tiny_qwen2_vl(tmp_path / "other", TinyQwen2VLSpec(seed=1))
    load = Qwen2VLForConditionalGeneration.from_pretrained
    weights, same, different = (load(p).state_dict() for p in (tiny_qwen2_vl_dir, again, other))
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_qwen2_vl_dir / "tokenizer.json"
    ).read_bytes()


def test_auto_processor_loads_the_checkpoint(tiny_qwen2_vl_dir: Path) -> None:
    pytest.importorskip("torchvision", reason="transformers' Qwen2VLProcessor needs torchvision")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2_vl_dir)
    assert type(processor).__name__ == "Qwen2VLProcessor"


# ---------------------------------------------------------------------------- model hooks
def test_lora_only_on_language_model_linears(make_qwen) -> None:
    module = make_qwen()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in lora)
    assert not [n for n, _ in module.model.named_modules() if "lora" in n and "visual" in n]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)


def test_qlora_quantises_the_language_model_only(make_qwen) -> None:
    import bitsandbytes as bnb

    module = make_qwen(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".language_model." in n for n in quantized)
    visual = [m for n, m in module.model.named_modules() if ".visual." in n]
    assert not [m for m in visual if isinstance(m, bnb.nn.Linear4bit)]
    losses = train_steps(module, make_batch(module, QUESTIONS, CHOSEN, REJECTED), steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


def test_image_size_must_be_a_multiple_of_28(make_qwen) -> None:
    assert make_qwen(image_size=84).num_image_tokens() == 9
    with pytest.raises(ValueError, match="multiple of 28"):
        make_qwen(image_size=60)


def test_our_image_path_gives_the_processors_inputs_logits_and_answers(
    make_qwen, tiny_qwen2_vl_dir: Path
) -> None:
    """Device preprocessing + ``vision_inputs`` == Qwen2-VL's own processor, for the same image."""
    module = make_qwen()
    processor = official_processor(tiny_qwen2_vl_dir)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_dir).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 56, 56), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)], images=[to_pil(image)], return_tensors="pt"
    )

    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == module.num_image_tokens() == 4
    assert torch.equal(ours["image_grid_thw"], enc.image_grid_thw)
    assert torch.equal(ours["mm_token_type_ids"], enc.mm_token_type_ids)
    torch.testing.assert_close(ours["pixel_values"], enc.pixel_values, rtol=0, atol=1e-6)

    module.model.eval()
    with torch.no_grad():
        logits = module.forward_logits(ids.input_ids, ids.attention_mask, pixels)
        expected = base(**enc).logits
        other_image = module.forward_logits(ids.input_ids, ids.attention_mask, -pixels)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert (other_image - expected).abs().max() > 1e-3  # the image does reach the logits
    # greedy answers through our generate path equal the processor path's
    answer = module.generate(pixels, [question], max_new_tokens=8)
    with torch.no_grad():
        out = base.generate(**enc, **module.generation_kwargs(8))
    decoded = processor.tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert answer == [decoded.strip()]


def test_resizing_stays_within_one_grey_level_of_the_processor(make_qwen, tiny_qwen2_vl_dir):
    """A larger square image: PIL's bicubic in the processor, torch's antialiased one here."""
    module = make_qwen()
    processor = official_processor(tiny_qwen2_vl_dir).image_processor
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 112, 112), generator=g, dtype=torch.uint8)
    expected = processor(images=[to_pil(image)], return_tensors="pt")
    ours = module.vision_inputs(module.preprocess_images([image]), torch.zeros(1, 1).long())
    assert torch.equal(ours["image_grid_thw"], expected.image_grid_thw)
    grey_level = 1.01 / 255 / min(processor.image_std)
    torch.testing.assert_close(ours["pixel_values"], expected.pixel_values, rtol=0, atol=grey_level)


def test_tokenize_pairs_uses_chatml_answers(make_qwen) -> None:
    module = make_qwen()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS
    assert prompt.count(module.image_token_id()) == 4
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # no space before the answer: the tokens are those of the ChatML text
    assert (
        prompt + chosen[:-1] == tok(module.prompt_texts(["Q?"])[0] + "The circle is red.").input_ids
    )


# ---------------------------------------------------------------------------- DPO
def test_step_zero_loss_is_exactly_ln2(make_qwen) -> None:
    module = make_qwen()
    loss, values = module.preference_step(make_batch(module, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(values["rewards/chosen"], torch.zeros(3))
    assert torch.equal(values["rewards/margins"], torch.zeros(3))


def test_training_changes_only_lora_and_reference_stays_the_base(
    make_qwen, tiny_qwen2_vl_dir: Path
) -> None:
    module = make_qwen()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = train_steps(module, batch, steps=5)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed), changed
    assert losses[-1] < math.log(2)
    _, values = module.preference_step(batch)
    assert values["rewards/accuracies"].mean() == 1.0
    # the reference (adapters off) is the untouched checkpoint, bit for bit
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_dir).eval()
    module.model.eval()
    with torch.no_grad():
        with module.reference_context():
            reference = module.sequence_logps(batch)
        module.model = base  # the same computation on the plain base model
        expected = module.sequence_logps(batch)
    assert torch.equal(reference["chosen"], expected["chosen"])
    assert torch.equal(reference["rejected"], expected["rejected"])


# ---------------------------------------------------------------------------- pair making
def prompt_batch(n: int) -> PromptBatch:
    return PromptBatch(
        ids=[f"p{i}" for i in range(n)],
        indices=list(range(n)),
        image_paths=[f"img{i}.png" for i in range(n)],
        images=random_images(n),
        questions=["What color is the circle?", "Why?", "How many shapes are there?"][:n],
    )


def test_make_pairs_rolls_out_in_one_left_padded_generate(make_qwen, monkeypatch) -> None:
    module = make_qwen()
    calls = []
    generate = module.model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(module.model, "generate", spy)
    dm = AugPairDataModule(
        data_path="unused.json",
        max_new_tokens=6,
        augmentation=DiffusionNoise(noise_step=800),
        drop_identical=False,  # a random tiny model may answer both images alike
    )
    batch = dm.make_pairs(prompt_batch(3), module)
    assert len(calls) == 1  # clean and augmented images together
    call = calls[0]
    mask, ids = call["attention_mask"], call["input_ids"]
    assert ids.shape[0] == 6 and (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    assert call["pixel_values"].shape == (6 * 16, 3 * 2 * 14 * 14)
    assert call["image_grid_thw"].tolist() == [[1, 4, 4]] * 6
    assert call["mm_token_type_ids"].sum(-1).tolist() == [4] * 6
    config = module.model.config
    markers = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    assert sorted(call["suppress_tokens"]) == sorted(getattr(config, m) for m in markers)
    # a PreferenceBatch in the family-agnostic (B, 3, H, W) form, ready for the DPO step
    assert len(batch) == 3 and batch.pixel_values.shape == (3, 3, 56, 56)
    assert batch.aug_pixel_values.shape == batch.pixel_values.shape
    assert not torch.equal(batch.aug_pixel_values, batch.pixel_values)
    rows = batch.meta["rows"]
    clean = module.preprocess_images(random_images(3))
    assert [r["chosen"] for r in rows] == module.generate(clean, prompt_batch(3).questions, 6)
    loss, _ = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_sampled_rollouts_give_num_samples_answers_per_image(make_qwen) -> None:
    module = make_qwen()
    pixels = module.preprocess_images(random_images(2))
    torch.manual_seed(0)
    sampling = Sampling(do_sample=True, temperature=1.0, num_samples=2)
    rollouts = module.rollout(pixels, QUESTIONS[:2], max_new_tokens=5, sampling=sampling)
    assert len(rollouts) == 4 and all(0 < r.num_tokens <= 5 for r in rollouts)


# ---------------------------------------------------------------------------- CLI
def test_cli_fit_with_the_qwen2_vl_class_path(tiny_qwen2_vl_dir: Path, tmp_path: Path) -> None:
    data = write_llava_dataset(tmp_path / "data", num_images=4, seed=0)
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
            "default_root_dir": str(tmp_path / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "qwen"},
            },
        },
        "model": {
            "class_path": "lightning_aug_dpo.Qwen2VLDPOModule",
            "init_args": {
                "model_name_or_path": str(tiny_qwen2_vl_dir),
                "image_size": 56,
                "lora_r": 8,
                "lora_alpha": 16,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
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
    path = tmp_path / "qwen.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    cli = cli_main(["fit", "--config", str(path)])
    assert isinstance(cli.model, Qwen2VLDPOModule) and cli.model.hparams.image_size == 56
    run = Path(cli.trainer.log_dir)
    with open(run / "metrics.csv") as f:
        steps = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert len(steps) == 2  # 4 prompts / batch 2
    assert math.isclose(float(steps[0]["train/loss"]), math.log(2), abs_tol=1e-6)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.language_model\.")
