"""SmolVLM2 (Idefics3 architecture) as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (round-trips through ``from_pretrained``); LoRA and 4-bit
touch the text model only; our device preprocessing + ``vision_inputs`` give the model exactly
the inputs of ``SmolVLMProcessor`` without image splitting (hence logits and greedy answers);
answers follow ``Assistant:`` after a space and end with ``<end_of_utterance>``; the config
checks catch a wrong setting before the weights load; the ``Idefics3`` class trains the same
way. The family-agnostic matrix (ln 2, LoRA only, prefix sharing and every efficiency switch,
rollouts, SFT, full fine-tune export, ``predict`` and ``fit`` by ``class_path``) comes from
``family_matrix.py``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from family_matrix import (
    CHOSEN,
    QUESTIONS,
    REJECTED,
    SHARING,
    SWITCHES,
    check_cli_predict_then_fit,
    check_full_finetune_export,
    check_images_encoded_once,
    check_make_pairs,
    check_rollout_reference_logps,
    check_sampled_rollouts,
    check_separate_reference,
    check_sft,
    check_shared_prompt_equals_plain,
    check_step_zero_and_training,
    check_switches,
    config_problems,
    module_builder,
    no_weights,
    to_pil,
    train_steps,
)
from test_efficiency import PLAIN, assert_same, batch_for, perturb, step
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, SmolVLMForConditionalGeneration

from lightning_aug_dpo import SmolVLMDPOModule
from lightning_aug_dpo.models.tiny_smolvlm import IMAGE_TOKEN, TinySmolVLMSpec, write_tiny_smolvlm

CONNECTOR = {"modules_to_save": ["connector"]}  # SeVa trains the projector


@pytest.fixture(scope="session")
def tiny_smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture
def make_smolvlm(tiny_smolvlm_dir: Path):
    """Build and configure a ``SmolVLMDPOModule`` on the tiny checkpoint (float32, CPU)."""
    return module_builder(SmolVLMDPOModule, tiny_smolvlm_dir)


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


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_round_trips_through_from_pretrained(tiny_smolvlm_dir, tmp_path) -> None:
    model = SmolVLMForConditionalGeneration.from_pretrained(tiny_smolvlm_dir)
    processor = official_processor(tiny_smolvlm_dir)
    assert type(processor.image_processor).__name__ == "SmolVLMImageProcessorPil"
    assert processor.image_processor.do_image_splitting is False and processor.image_seq_len == 4
    for name in ("preprocessor_config.json", "tokenizer_config.json", "processor_config.json"):
        config = json.loads((tiny_smolvlm_dir / name).read_text())  # what AutoProcessor reads
        assert config["processor_class"] == "SmolVLMProcessor", name
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
    assert module._template_bos() == ""  # the template's <|im_start|> is kept
    assert prompt.count(module.image_token_id()) == 4
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<end_of_utterance>")
    text = module.prompt_texts(["Q?"])[0] + " The circle is red."
    assert prompt + chosen[:-1] == tok(text).input_ids
    assert module.generation_kwargs(4)["eos_token_id"] == tok.eos_token_id


# ---------------------------------------------------------------------------- DPO
def test_step_zero_ln2_training_changes_only_lora_and_reference_is_the_base(
    make_smolvlm, base_model
) -> None:
    check_step_zero_and_training(make_smolvlm(), base_model)


@SHARING
def test_shared_prompt_equals_plain_path(make_smolvlm, settings) -> None:
    """A causal Llama text model: the default packed mask and positions are exact."""
    check_shared_prompt_equals_plain(make_smolvlm, settings, **CONNECTOR)


@SWITCHES
def test_efficiency_switches_give_the_plain_path(make_smolvlm, switches) -> None:
    check_switches(make_smolvlm, switches, **CONNECTOR)


def test_images_are_encoded_once_per_step(make_smolvlm) -> None:
    check_images_encoded_once(make_smolvlm, lambda m: m._smolvlm(m.model).vision_model)


def test_separate_reference_with_shared_prompt(make_smolvlm, tmp_path) -> None:
    check_separate_reference(make_smolvlm, tmp_path)


# ---------------------------------------------------------------------------- SFT
def test_sft_renders_the_chat_template_and_trains_the_answers(make_smolvlm) -> None:
    module = make_smolvlm()
    turns = module.chat_messages(
        [("user", "How many shapes are there?"), ("assistant", "There are three shapes."),
         ("user", "Is there a square?"), ("assistant", "Yes, on the left.")]
    )  # fmt: skip
    text = module.processor.apply_chat_template(turns).rstrip("\n")  # "\n" is not trained
    trained = " There are three shapes.<end_of_utterance> Yes, on the left.<end_of_utterance>"
    check_sft(module, module.expand_image_tokens(text), trained)


def test_full_finetune_trains_lm_and_connector_and_exports_a_plain_model(
    make_smolvlm, tmp_path
) -> None:
    trained = [".text_model.", "connector", "lm_head"]
    again = check_full_finetune_export(
        make_smolvlm, SmolVLMForConditionalGeneration, tmp_path, trained, "vision_model"
    )
    assert again.tokenizer.eos_token == "<end_of_utterance>"


# ---------------------------------------------------------------------------- pair making
def test_make_pairs_rolls_out_in_one_left_padded_generate(make_smolvlm, monkeypatch) -> None:
    module = make_smolvlm()
    call = check_make_pairs(module, monkeypatch)
    assert call["pixel_values"].shape == (6, 1, 3, 32, 32)  # one image per row
    assert call["pixel_attention_mask"].shape == (6, 1, 32, 32)
    markers = ["<image>", "<fake_token_around_image>", "<global-img>"]
    assert sorted(call["suppress_tokens"]) == sorted(
        module.tokenizer.convert_tokens_to_ids(markers)
    )


def test_reference_logps_from_the_rollout_equal_a_reference_forward(make_smolvlm) -> None:
    check_rollout_reference_logps(make_smolvlm(reuse_rollout_reference_logps=True))


def test_sampled_rollouts_give_num_samples_answers_per_image(make_smolvlm) -> None:
    check_sampled_rollouts(make_smolvlm())


# ---------------------------------------------------------------------------- config checks
@pytest.fixture
def no_smolvlm_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    no_weights(monkeypatch, SmolVLMDPOModule)


@pytest.mark.usefixtures("no_smolvlm_weights")
def test_config_checks_catch_targets_image_size_and_max_length(tiny_smolvlm_dir, tmp_path) -> None:
    # "fc1" exists in the vision tower only, which LoRA must not adapt
    (problem,) = config_problems(
        SmolVLMDPOModule, tiny_smolvlm_dir, lora_target_modules=["q_proj", "fc1"]
    )
    assert problem.startswith("model.lora_target_modules: ['fc1'] match no module")
    (problem,) = config_problems(SmolVLMDPOModule, tiny_smolvlm_dir, max_length=12)
    assert problem.startswith("model.max_length=12 cannot hold one image")
    assert "4 of them image tokens" in problem
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_smolvlm_dir, model_dir)
    config_file = model_dir / "preprocessor_config.json"
    processor = json.loads(config_file.read_text())
    processor["max_image_size"] = {"longest_edge": 64}
    config_file.write_text(json.dumps(processor))
    (size,) = config_problems(SmolVLMDPOModule, model_dir)
    assert "max_image_size.longest_edge is 64" in size and "takes 32x32" in size
    assert "Fix: set max_image_size to {longest_edge: 32}" in size


# ---------------------------------------------------------------------------- CLI
def test_cli_predict_then_fit_with_the_smolvlm_class_path(tiny_smolvlm_dir, tmp_path) -> None:
    run = check_cli_predict_then_fit(
        "lightning_aug_dpo.SmolVLMDPOModule", tiny_smolvlm_dir, tmp_path
    )
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.text_model\.")


# ---------------------------------------------------------------------------- Idefics3
def test_the_idefics3_class_trains_the_same_way(make_smolvlm, tmp_path) -> None:
    """``Idefics3ForConditionalGeneration`` (SmolVLM v1, Idefics3-8B) has SmolVLM's modules
    under another ``model_type``: the same module loads it, exact at step 0, and the fast path
    (shared prompt, reused features, response logits) gives the plain path's values."""
    path = write_tiny_smolvlm(tmp_path / "idefics3", architecture="idefics3")
    # Idefics3's Llama 3 tokenizer adds the BOS its chat template also writes: one BOS stays
    tokenizer_file = path / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    data["post_processor"]["single"].insert(0, bos)
    data["post_processor"]["special_tokens"] = {
        "<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}
    }
    tokenizer_file.write_text(json.dumps(data))
    plain = make_smolvlm(path, modules_to_save=["connector"], **PLAIN)
    fast = make_smolvlm(path, modules_to_save=["connector"])
    assert type(fast.model.get_base_model()).__name__ == "Idefics3ForConditionalGeneration"
    assert fast.num_image_tokens() == 4
    tok = fast.tokenizer
    assert tok("").input_ids == [tok.convert_tokens_to_ids("<|im_start|>")] == [1]
    assert fast._template_bos() == "<|im_start|>"
    ids = fast.tokenize_pairs(["Q?"], ["A."], ["B."])["prompt_input_ids"][0].tolist()
    assert ids.count(1) == 1 and ids[0] == 1
    loss, _ = fast.preference_step(batch_for(fast))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))
    lora = [n for n, _ in fast.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7 and all(".text_model.layers." in n for n in lora)
