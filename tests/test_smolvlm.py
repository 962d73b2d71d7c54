"""SmolVLM2 (Idefics3 architecture) as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (round-trips through ``from_pretrained``); LoRA and 4-bit
touch the text model only; our device preprocessing + ``vision_inputs`` give the model exactly
the inputs of ``SmolVLMProcessor`` without image splitting (hence logits and greedy answers); the
DPO step is exact at step 0 and trains LoRA only; prefix sharing and every efficiency switch
give the plain path's values; SFT renders the chat template token for token; rollouts, pair
making, ``predict`` and ``fit`` by ``class_path`` work; the config checks catch a wrong setting
before the weights load.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, random_images
from PIL import Image
from test_efficiency import PLAIN, assert_same, batch_for, perturb, step
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, SmolVLMForConditionalGeneration

from lightning_aug_dpo import (
    AugPairDataModule,
    CombinedLoss,
    ConditionalPreferenceLoss,
    DiffusionNoise,
    SigmoidDPOLoss,
    SmolVLMDPOModule,
)
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.synthetic import write_llava_dataset
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.models.tiny_smolvlm import IMAGE_TOKEN, TinySmolVLMSpec, write_tiny_smolvlm
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


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture
def make_smolvlm(tiny_smolvlm_dir: Path):
    """Build and configure a ``SmolVLMDPOModule`` on the tiny checkpoint (float32, CPU)."""

    def build(path: Path | None = None, **kwargs) -> SmolVLMDPOModule:
        kwargs.setdefault("lora_r", 8)
        kwargs.setdefault("lora_alpha", 16)
        torch.manual_seed(0)
        module = SmolVLMDPOModule(model_name_or_path=str(path or tiny_smolvlm_dir), **kwargs)
        module.configure_model()
        return module

    return build


@pytest.fixture(scope="module")
def base_model(tiny_smolvlm_dir: Path) -> nn.Module:
    return SmolVLMForConditionalGeneration.from_pretrained(tiny_smolvlm_dir).eval()


def official_processor(path: Path):
    """SmolVLM's own processor class over the checkpoint's tokenizer and image processor.

    ``AutoProcessor`` would also build a video processor (torchvision) and needs ``num2words``;
    only ``__init__`` wants those, ``__call__`` on images does not touch them, so the processor
    is assembled without running ``__init__`` (its attributes set as ``__init__`` sets them).
    """
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor

    processor = object.__new__(SmolVLMProcessor)
    tok = processor.tokenizer = AutoTokenizer.from_pretrained(path)
    processor.image_processor = AutoImageProcessor.from_pretrained(path)
    processor.video_processor = None
    processor.chat_template = tok.chat_template
    processor.fake_image_token, processor.image_token = tok.fake_image_token, tok.image_token
    processor.image_token_id = tok.convert_tokens_to_ids(tok.image_token)
    processor.end_of_utterance_token = tok.end_of_utterance_token
    processor.global_image_token, processor.video_token = tok.global_image_token, "<video>"
    config = json.loads((path / "processor_config.json").read_text())
    processor.image_seq_len = config["image_seq_len"]
    return processor


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
def test_checkpoint_round_trips_through_from_pretrained(tiny_smolvlm_dir, tmp_path) -> None:
    model = SmolVLMForConditionalGeneration.from_pretrained(tiny_smolvlm_dir)
    processor = official_processor(tiny_smolvlm_dir)
    assert type(processor.image_processor).__name__ == "SmolVLMImageProcessorPil"
    assert processor.image_processor.do_image_splitting is False and processor.image_seq_len == 4
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size == 512 and tok.bos_token_id is not None
    assert (tok.eos_token, tok.pad_token) == ("<end_of_utterance>", "<|im_end|>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text = "What color is the circle? It is red, and 3 squares."
    assert tok.decode(tok(text).input_ids) == text  # no BOS added, as SmolVLM2's tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>User:<image>Hi?<end_of_utterance>\nAssistant:"
    )
    language = [m for n, m in model.named_modules() if ".text_model." in n or n == "lm_head"]
    for layer in (m for m in language if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    # deterministic per seed
    again = write_tiny_smolvlm(tmp_path / "again")
    other = write_tiny_smolvlm(tmp_path / "other", TinySmolVLMSpec(seed=1))
    load = SmolVLMForConditionalGeneration.from_pretrained
    weights, same, different = (load(p).state_dict() for p in (tiny_smolvlm_dir, again, other))
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_smolvlm_dir / "tokenizer.json"
    ).read_bytes()


# ---------------------------------------------------------------------------- model hooks
def test_lora_and_4bit_only_in_the_text_model(make_smolvlm) -> None:
    import bitsandbytes as bnb

    module = make_smolvlm()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down); SigLIP has q/k/v too
    assert all(n.startswith("base_model.model.model.text_model.layers.") for n in lora)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".text_model." in n for n in trainable)

    module = make_smolvlm(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".text_model." in n for n in quantized)
    losses = train_steps(module, make_batch(module, QUESTIONS, CHOSEN, REJECTED), steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


def test_our_image_path_gives_the_processors_inputs_logits_and_answers(
    make_smolvlm, tiny_smolvlm_dir: Path, base_model
) -> None:
    """Device preprocessing + ``vision_inputs`` == SmolVLMProcessor, for the same image."""
    module = make_smolvlm()
    processor = official_processor(tiny_smolvlm_dir)
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)], images=[[to_pil(image)]], return_tensors="pt"
    )
    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == module.num_image_tokens() == 4
    assert torch.equal(ours["pixel_attention_mask"], enc.pixel_attention_mask)
    torch.testing.assert_close(ours["pixel_values"], enc.pixel_values, rtol=0, atol=1e-6)

    module.model.eval()
    with torch.no_grad():
        logits = module.forward_logits(ids.input_ids, ids.attention_mask, pixels)
        expected = base_model(**enc).logits
        other_image = module.forward_logits(ids.input_ids, ids.attention_mask, -pixels)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert (other_image - expected).abs().max() > 1e-3  # the image does reach the logits
    answer = module.generate(pixels, [question], max_new_tokens=8)
    with torch.no_grad():
        out = base_model.generate(**enc, **module.generation_kwargs(8))
    decoded = processor.tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert answer == [decoded.strip()]


@pytest.mark.parametrize("pad_to_square", [False, True])
def test_resizing_stays_close_to_the_processor(make_smolvlm, tiny_smolvlm_dir, pad_to_square):
    """The processor squashes to 32 x 32 with Lanczos, we with bicubic: close, not equal."""
    module = make_smolvlm(pad_to_square=pad_to_square)
    image_processor = official_processor(tiny_smolvlm_dir).image_processor
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 90, 60), generator=g, dtype=torch.uint8)
    image = F.interpolate(image[None].float(), size=(9, 6), mode="area")  # smooth content
    image = F.interpolate(image, size=(90, 60), mode="bilinear")[0].round().byte()
    source = module.preprocessor._square(image) if pad_to_square else image
    expected = image_processor(images=[[to_pil(source)]], return_tensors="pt").pixel_values[:, 0]
    ours = module.preprocess_images([image])
    grey_level = 1 / 255 / min(image_processor.image_std)
    assert (ours - expected).abs().mean() < 1 * grey_level
    assert (ours - expected).abs().max() < 8 * grey_level


def test_tokenize_pairs_answers_after_a_space_end_with_end_of_utterance(make_smolvlm) -> None:
    module = make_smolvlm()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS of its own
    assert prompt.count(module.image_token_id()) == 4
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<end_of_utterance>")
    text = module.prompt_texts(["Q?"])[0] + " The circle is red."
    assert prompt + chosen[:-1] == tok(text).input_ids
    assert module.generation_kwargs(4)["eos_token_id"] == tok.eos_token_id


# ---------------------------------------------------------------------------- DPO
def test_step_zero_ln2_training_changes_only_lora_and_reference_is_the_base(
    make_smolvlm, base_model
) -> None:
    module = make_smolvlm()
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


@pytest.mark.parametrize(
    "settings",
    [{}, {"load_in_4bit": True}, {"gradient_checkpointing": True}, MDPO],
    ids=["default", "nf4", "checkpointing", "mdpo"],
)
def test_shared_prompt_equals_plain_path(make_smolvlm, settings) -> None:
    """A causal Llama text model: the default packed mask and positions are exact."""
    plain = make_smolvlm(modules_to_save=["connector"], **settings, **PLAIN)
    shared = make_smolvlm(modules_to_save=["connector"], **settings)
    for module in (plain, shared):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))
    with torch.no_grad():
        blocks = ("chosen", "rejected", "chosen_aug")
        a = plain.sequence_logps(batch_for(plain), blocks)
        b = shared.sequence_logps(batch_for(shared), blocks)
    for name in blocks:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-6, msg=name)


@pytest.mark.parametrize(
    "switches",
    [
        {"reuse_image_features": True, "response_logits_only": False, "share_prompt": False},
        {"reuse_image_features": False, "response_logits_only": True, "share_prompt": False},
        {"reuse_image_features": True, "response_logits_only": True, "share_prompt": False},
        {"gradient_checkpointing": True},
    ],
    ids=["features", "logits", "features+logits", "all+checkpointing"],
)
def test_efficiency_switches_give_the_plain_path(make_smolvlm, switches) -> None:
    common = {"modules_to_save": ["connector"]}  # SeVa trains the projector
    plain = make_smolvlm(**common, **PLAIN)
    fast = make_smolvlm(**common, **switches)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))


def test_images_are_encoded_once_per_step(make_smolvlm) -> None:
    def encoded_images(module) -> list[int]:
        calls: list[int] = []
        tower = module._smolvlm(module.model).vision_model
        tower.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append(len(kwargs["pixel_values"])), with_kwargs=True
        )
        module.preference_step(batch_for(module))
        return calls

    assert encoded_images(make_smolvlm()) == [3]  # once, for policy and reference
    assert encoded_images(make_smolvlm(**PLAIN)) == [6, 6]  # chosen + rejected, twice


def test_separate_reference_with_shared_prompt(make_smolvlm, tmp_path) -> None:
    start = make_smolvlm()
    perturb(start)
    start.save_adapter(tmp_path / "sft")
    common = {"init_adapter": str(tmp_path / "sft"), "reference": "separate"}
    shared, plain = make_smolvlm(**common), make_smolvlm(**common, **PLAIN)
    loss, _ = shared.preference_step(batch_for(shared))
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-6)  # policy == reference at start
    perturb(shared, seed=2)
    perturb(plain, seed=2)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))


# ---------------------------------------------------------------------------- SFT
def test_sft_renders_the_chat_template_and_trains_the_answers(make_smolvlm) -> None:
    module = make_smolvlm()
    tok = module.tokenizer
    tokens, status = module.tokenize_conversations(CONVERSATIONS)
    assert status == [None, None]
    # the multi-turn row is the template's text token for token; answers + <end_of_turn> trained
    turns = CONVERSATIONS[1]
    messages = module.chat_messages(turns)
    text = module.expand_image_tokens(module.processor.apply_chat_template(messages))
    row = tokens["input_ids"][1][tokens["attention_mask"][1].bool()].tolist()
    assert row == tok(text.rstrip("\n")).input_ids
    labels = tokens["labels"][1]
    trained = tok.decode(labels[labels != IGNORE_INDEX])
    assert trained == (
        " There are three shapes.<end_of_utterance> Yes, on the left.<end_of_utterance>"
    )
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
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = []
    for _ in range(4):
        loss, _ = module.sft_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed) and losses[-1] < losses[0]


def test_full_finetune_trains_lm_and_projector_and_exports_a_plain_model(
    make_smolvlm, tiny_smolvlm_dir, tmp_path
) -> None:
    module = make_smolvlm(finetune="full")
    tokens, _ = module.tokenize_conversations(CONVERSATIONS)
    batch = SFTBatch(pixel_values=module.preprocess_images(random_images(2)), **tokens)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, _ = module.sft_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".text_model." in k for k in changed)
    assert any("connector" in k for k in changed) and any(k.startswith("lm_head") for k in changed)
    assert not any("vision_model" in k for k in changed)

    def logits(model) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            inputs = module.vision_inputs(batch.pixel_values, batch.input_ids)
            return model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **inputs
            ).logits

    module.export_merged(tmp_path / "merged")
    reloaded = SmolVLMForConditionalGeneration.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(reloaded), logits(module.model), rtol=0, atol=1e-5)
    again = make_smolvlm(tmp_path / "merged", finetune="full")  # processor saved too
    assert again.tokenizer.chat_template == module.tokenizer.chat_template
    assert again.tokenizer.eos_token == "<end_of_utterance>"


# ---------------------------------------------------------------------------- pair making
def prompt_batch(n: int) -> PromptBatch:
    return PromptBatch(
        ids=[f"p{i}" for i in range(n)],
        indices=list(range(n)),
        image_paths=[f"img{i}.png" for i in range(n)],
        images=random_images(n),
        questions=QUESTIONS[:n],
    )


def test_make_pairs_rolls_out_in_one_left_padded_generate(make_smolvlm, monkeypatch) -> None:
    module = make_smolvlm()
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
        drop_identical=False,
    )
    batch = dm.make_pairs(prompt_batch(3), module)
    assert len(calls) == 1  # clean and augmented images together
    call = calls[0]
    mask = call["attention_mask"]
    assert call["input_ids"].shape[0] == 6 and (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    assert call["pixel_values"].shape == (6, 1, 3, 32, 32)
    assert call["pixel_attention_mask"].shape == (6, 1, 32, 32)
    tok = module.tokenizer
    markers = ["<image>", "<fake_token_around_image>", "<global-img>"]
    assert sorted(call["suppress_tokens"]) == sorted(tok.convert_tokens_to_ids(markers))
    assert len(batch) == 3 and batch.pixel_values.shape == (3, 3, 32, 32)
    assert not torch.equal(batch.aug_pixel_values, batch.pixel_values)
    clean = module.preprocess_images(random_images(3))
    rows = batch.meta["rows"]
    assert [r["chosen"] for r in rows] == module.generate(clean, QUESTIONS, 6)
    loss, _ = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


def test_reference_logps_from_the_rollout_equal_a_reference_forward(make_smolvlm) -> None:
    """``reuse_rollout_reference_logps``: the reference rollout's own logits (left-padded
    generate, KV cache) score the chosen answers as a reference forward does."""
    module = make_smolvlm(reuse_rollout_reference_logps=True)
    dm = AugPairDataModule(
        data_path="unused.json",
        max_new_tokens=6,
        augmentation=DiffusionNoise(noise_step=900),
        drop_identical=False,
    )
    batch = dm.make_pairs(prompt_batch(3), module)
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


def test_sampled_rollouts_give_num_samples_answers_per_image(make_smolvlm) -> None:
    module = make_smolvlm()
    pixels = module.preprocess_images(random_images(2))
    torch.manual_seed(0)
    sampling = Sampling(do_sample=True, temperature=1.0, num_samples=2)
    rollouts = module.rollout(pixels, QUESTIONS[:2], max_new_tokens=5, sampling=sampling)
    assert len(rollouts) == 4 and all(0 < r.num_tokens <= 5 for r in rollouts)


# ---------------------------------------------------------------------------- config checks
@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_model(self) -> None:
        raise AssertionError("the weights were loaded before the configuration was checked")

    monkeypatch.setattr(SmolVLMDPOModule, "load_model", load_model)


def config_problems(model_dir: Path, **kwargs) -> list[str]:
    module = SmolVLMDPOModule(model_name_or_path=str(model_dir), **kwargs)
    with pytest.raises(ConfigError) as error:
        module.configure_model()
    return error.value.problems


@pytest.mark.usefixtures("no_weights")
def test_config_checks_catch_targets_image_size_and_max_length(tiny_smolvlm_dir, tmp_path) -> None:
    # "fc1" exists in the vision tower only, which LoRA must not adapt
    (problem,) = config_problems(tiny_smolvlm_dir, lora_target_modules=["q_proj", "fc1"])
    assert problem.startswith("model.lora_target_modules: ['fc1'] match no module")
    (problem,) = config_problems(tiny_smolvlm_dir, max_length=12)
    assert problem.startswith("model.max_length=12 cannot hold one image")
    assert "4 of them image tokens" in problem
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_smolvlm_dir, model_dir)
    config_file = model_dir / "preprocessor_config.json"
    processor = json.loads(config_file.read_text())
    processor["max_image_size"] = {"longest_edge": 64}
    config_file.write_text(json.dumps(processor))
    (size,) = config_problems(model_dir)
    assert "max_image_size.longest_edge is 64" in size and "takes 32x32" in size
    assert "Fix: set max_image_size to {longest_edge: 32}" in size


# ---------------------------------------------------------------------------- CLI
def cli_config(tiny_smolvlm_dir: Path, tmp_path: Path, data: Path) -> dict:
    return {
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
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "smolvlm"},
            },
        },
        "model": {
            "class_path": "lightning_aug_dpo.SmolVLMDPOModule",
            "init_args": {
                "model_name_or_path": str(tiny_smolvlm_dir),
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


def test_cli_predict_then_fit_with_the_smolvlm_class_path(tiny_smolvlm_dir, tmp_path) -> None:
    """``predict`` writes the pairs of live rollouts; ``fit`` trains on that file."""
    data = write_llava_dataset(tmp_path / "data", num_images=4, seed=0)
    config = cli_config(tiny_smolvlm_dir, tmp_path, data)
    path = tmp_path / "smolvlm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    pairs = tmp_path / "pairs.jsonl"
    writer = {
        "class_path": "lightning_aug_dpo.PairsWriter",
        "init_args": {"output_path": str(pairs)},
    }
    cli = cli_main(["predict", "--config", str(path), "--trainer.callbacks+", json.dumps(writer)])
    assert isinstance(cli.model, SmolVLMDPOModule)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) == 4  # drop_identical: false
    questions = [row["prompt"] for row in rows]
    images = [
        torch.from_numpy(np.array(Image.open(data.parent / "images" / row["image"]).convert("RGB")))
        .permute(2, 0, 1)
        for row in rows
    ]  # fmt: skip
    cli.model.model.eval()
    clean = cli.model.preprocess_images(images)
    assert [row["chosen"] for row in rows] == cli.model.generate(clean, questions, 4)

    cli = cli_main(
        ["fit", "--config", str(path), "--data.init_args.data_path", "null",
         "--data.init_args.pairs_path", str(pairs)]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    with open(run / "metrics.csv") as f:
        steps = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert len(steps) == 2  # 4 pairs / batch 2
    assert math.isclose(float(steps[0]["train/loss"]), math.log(2), abs_tol=1e-6)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.text_model\.")


# ---------------------------------------------------------------------------- Idefics3
def test_the_idefics3_class_trains_the_same_way(make_smolvlm, tmp_path) -> None:
    """``Idefics3ForConditionalGeneration`` (SmolVLM v1, Idefics3-8B) has SmolVLM's modules
    under another ``model_type``: the same module loads it, exact at step 0, and the fast path
    (shared prompt, reused features, response logits) gives the plain path's values."""
    path = write_tiny_smolvlm(tmp_path / "idefics3", architecture="idefics3")
    plain = make_smolvlm(path, modules_to_save=["connector"], **PLAIN)
    fast = make_smolvlm(path, modules_to_save=["connector"])
    assert type(fast.model.get_base_model()).__name__ == "Idefics3ForConditionalGeneration"
    assert fast.num_image_tokens() == 4
    loss, _ = fast.preference_step(batch_for(fast))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))
    lora = [n for n, _ in fast.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7 and all(".text_model.layers." in n for n in lora)
