"""Gemma 3 as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (round-trips through ``from_pretrained`` and
``AutoProcessor``); LoRA and 4-bit touch the language model only; our device preprocessing +
``vision_inputs`` give the model exactly ``Gemma3Processor``'s inputs (hence logits and greedy
answers); the prompt has one BOS and answers end with ``<end_of_turn>``; prefix sharing is exact
although image tokens attend bidirectionally and a layer's sliding window is shorter than the
rows (each rule of ``packed_attention_mask`` is needed); the config checks catch a wrong setting
before the weights load. The family-agnostic matrix (ln 2, LoRA only, every efficiency switch,
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
from test_efficiency import batch_for, perturb
from torch import nn
from transformers import AutoProcessor, Gemma3ForConditionalGeneration

from lightning_aug_dpo import Gemma3DPOModule
from lightning_aug_dpo.models.tiny_gemma3 import IMAGE_TOKEN, TinyGemma3Spec, write_tiny_gemma3

PROJECTOR = {"modules_to_save": ["multi_modal_projector"]}  # SeVa trains the projector


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture
def make_gemma(tiny_gemma3_dir: Path):
    """Build and configure a ``Gemma3DPOModule`` on the tiny checkpoint (float32, CPU)."""
    return module_builder(Gemma3DPOModule, tiny_gemma3_dir)


@pytest.fixture(scope="module")
def base_model(tiny_gemma3_dir: Path) -> nn.Module:
    return Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3_dir).eval()


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_round_trips_and_loads_with_auto_processor(tiny_gemma3_dir, tmp_path) -> None:
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3_dir)
    processor = AutoProcessor.from_pretrained(tiny_gemma3_dir)  # no torchvision needed
    assert type(processor).__name__ == "Gemma3Processor" and processor.image_seq_length == 4
    assert type(processor.image_processor).__name__ == "Gemma3ImageProcessorPil"
    tok = processor.tokenizer
    assert type(tok).__name__ == "GemmaTokenizer" and len(tok) == 512
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert model.config.text_config.layer_types == ["sliding_attention", "full_attention"]
    text = "What color is the circle? It is red, and 3 squares."
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<bos><start_of_turn>user\n<start_of_image>Hi?<end_of_turn>\n<start_of_turn>model\n"
    )
    language = [m for n, m in model.named_modules() if ".language_model." in n or n == "lm_head"]
    for layer in (m for m in language if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    # deterministic per seed
    again = write_tiny_gemma3(tmp_path / "again")
    other = write_tiny_gemma3(tmp_path / "other", TinyGemma3Spec(seed=1))
    load = Gemma3ForConditionalGeneration.from_pretrained
    weights, same, different = (load(p).state_dict() for p in (tiny_gemma3_dir, again, other))
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_gemma3_dir / "tokenizer.json"
    ).read_bytes()


# ---------------------------------------------------------------------------- model hooks
def test_lora_and_4bit_only_in_the_language_model(make_gemma) -> None:
    import bitsandbytes as bnb

    module = make_gemma()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down); SigLIP has q/k/v too
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in lora)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)

    module = make_gemma(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".language_model." in n for n in quantized)
    losses = train_steps(module, make_batch(module, QUESTIONS, CHOSEN, REJECTED), steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


def test_our_image_path_gives_the_processors_inputs_logits_and_answers(
    make_gemma, tiny_gemma3_dir: Path, base_model
) -> None:
    """Device preprocessing + ``vision_inputs`` == Gemma3Processor, for the same image."""
    module = make_gemma()
    processor = AutoProcessor.from_pretrained(tiny_gemma3_dir)
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)], images=[to_pil(image)], return_tensors="pt"
    )
    # the same ids as the processor's own chat-template path (one BOS)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    templated = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True,
        images=[to_pil(image)], return_tensors="pt",
    )  # fmt: skip
    assert torch.equal(templated["input_ids"], enc.input_ids)

    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == module.num_image_tokens() == 4
    assert torch.equal(ours["token_type_ids"], enc.token_type_ids)
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
def test_resizing_stays_within_one_grey_level_of_the_processor(
    make_gemma, tiny_gemma3_dir, pad_to_square
) -> None:
    """Gemma's processor squashes to 32 x 32 (bilinear); so does ``SquashResize``."""
    module = make_gemma(pad_to_square=pad_to_square)
    image_processor = AutoProcessor.from_pretrained(tiny_gemma3_dir).image_processor
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 90, 60), generator=g, dtype=torch.uint8)
    source = module.preprocessor._square(image) if pad_to_square else image
    expected = image_processor(images=[to_pil(source)], return_tensors="pt").pixel_values
    ours = module.preprocess_images([image])
    grey_level = 1.01 / 255 / min(image_processor.image_std)
    torch.testing.assert_close(ours, expected, rtol=0, atol=grey_level)


def test_tokenize_pairs_one_bos_and_end_of_turn_answers(make_gemma) -> None:
    module = make_gemma()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt.count(tok.bos_token_id) == 1 and prompt[0] == tok.bos_token_id
    assert module._template_bos() == "<bos>"  # written by the template, added by the tokenizer
    assert prompt.count(module.image_token_id()) == 4
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<end_of_turn>")
    assert (
        prompt + chosen[:-1] == tok(module.prompt_texts(["Q?"])[0] + "The circle is red.").input_ids
    )
    assert module.generation_kwargs(4)["eos_token_id"] == tok.eos_token_id


# ---------------------------------------------------------------------------- DPO
def test_step_zero_ln2_training_changes_only_lora_and_reference_is_the_base(
    make_gemma, base_model
) -> None:
    check_step_zero_and_training(make_gemma(), base_model)


@SHARING
def test_shared_prompt_equals_plain_path(make_gemma, settings) -> None:
    """The rows are longer than the tiny model's 16-token sliding window, so the window counts."""
    module = make_gemma()
    window = module.model_config.text_config.sliding_window
    assert int(batch_for(module).prompt_attention_mask.sum(1).min()) > window
    check_shared_prompt_equals_plain(make_gemma, settings, **PROJECTOR)


def test_each_rule_of_the_packed_mask_is_needed(make_gemma, monkeypatch) -> None:
    """Without the image blocks, without the window, or with neither (the default causal block
    mask), the packed scores differ from the exact ones: each part of the hook matters."""
    import lightning_aug_dpo.models.gemma3 as gemma3

    module = make_gemma()
    perturb(module)
    batch = batch_for(module)
    exact_mask = module.packed_attention_mask

    def scores() -> torch.Tensor:
        with torch.no_grad():
            return module.sequence_logps(batch)["chosen"]

    exact = scores()
    monkeypatch.setattr(
        module, "packed_attention_mask", lambda p, _: p.attention_bias(module.compute_dtype)
    )
    causal = scores()
    monkeypatch.setattr(
        module, "packed_attention_mask", lambda p, pos: dict.fromkeys(
            ("full_attention", "sliding_attention"), exact_mask(p, pos)["full_attention"]
        )
    )  # fmt: skip
    no_window = scores()
    monkeypatch.setattr(module, "packed_attention_mask", exact_mask)
    monkeypatch.setattr(
        gemma3, "image_blocks", lambda is_image: torch.full_like(is_image, -1).long()
    )
    no_blocks = scores()
    for wrong in (causal, no_window, no_blocks):
        assert (exact - wrong).abs().max() > 1e-4


@SWITCHES
def test_efficiency_switches_give_the_plain_path(make_gemma, switches) -> None:
    check_switches(make_gemma, switches, **PROJECTOR)


def test_images_are_encoded_once_per_step(make_gemma) -> None:
    check_images_encoded_once(make_gemma, lambda module: module._gemma(module.model).vision_tower)


def test_separate_reference_with_shared_prompt(make_gemma, tmp_path) -> None:
    check_separate_reference(make_gemma, tmp_path)


# ---------------------------------------------------------------------------- SFT
def test_sft_renders_the_chat_template_and_trains_the_answers(make_gemma) -> None:
    module = make_gemma()
    turns = module.chat_messages(
        [("user", "How many shapes are there?"), ("assistant", "There are three shapes."),
         ("user", "Is there a square?"), ("assistant", "Yes, on the left.")]
    )  # fmt: skip
    # the template's text without its <bos> (the tokenizer adds it) and the untrained "\n"
    text = module.processor.apply_chat_template(turns).removeprefix("<bos>").rstrip("\n")
    trained = "There are three shapes.<end_of_turn>Yes, on the left.<end_of_turn>"
    check_sft(module, module.expand_image_tokens(text), trained)


def test_full_finetune_trains_lm_and_projector_and_exports_a_plain_model(
    make_gemma, tmp_path
) -> None:
    # lm_head is tied to the language model's embeddings: trained with it
    trained = [".language_model.", "multi_modal_projector"]
    again = check_full_finetune_export(
        make_gemma, Gemma3ForConditionalGeneration, tmp_path, trained, "vision_tower"
    )
    assert again.tokenizer.eos_token == "<end_of_turn>"


# ---------------------------------------------------------------------------- pair making
def test_make_pairs_rolls_out_in_one_left_padded_generate(make_gemma, monkeypatch) -> None:
    module = make_gemma()
    call = check_make_pairs(module, monkeypatch)
    assert call["pixel_values"].shape == (6, 3, 32, 32)
    assert call["token_type_ids"].sum(-1).tolist() == [4] * 6  # the bidirectional blocks
    config = module.model_config
    markers = [config.image_token_id, config.boi_token_id, config.eoi_token_id]
    assert sorted(call["suppress_tokens"]) == sorted(markers)


def test_reference_logps_from_the_rollout_equal_a_reference_forward(make_gemma) -> None:
    check_rollout_reference_logps(make_gemma(reuse_rollout_reference_logps=True))


def test_sampled_rollouts_give_num_samples_answers_per_image(make_gemma) -> None:
    check_sampled_rollouts(make_gemma())


# ---------------------------------------------------------------------------- config checks
@pytest.fixture
def no_gemma_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    no_weights(monkeypatch, Gemma3DPOModule)


@pytest.mark.usefixtures("no_gemma_weights")
def test_config_checks_catch_targets_image_size_and_max_length(tiny_gemma3_dir, tmp_path) -> None:
    # "fc1" exists in SigLIP only, which LoRA must not adapt
    (problem,) = config_problems(
        Gemma3DPOModule, tiny_gemma3_dir, lora_target_modules=["q_proj", "fc1"]
    )
    assert problem.startswith("model.lora_target_modules: ['fc1'] match no module")
    (problem,) = config_problems(Gemma3DPOModule, tiny_gemma3_dir, max_length=20)
    assert problem.startswith("model.max_length=20 cannot hold one image")
    assert "4 of them image tokens" in problem
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_gemma3_dir, model_dir)
    config_file = model_dir / "processor_config.json"
    processor = json.loads(config_file.read_text())
    processor["image_processor"]["size"] = {"height": 64, "width": 64}
    processor["image_seq_length"] = 16
    config_file.write_text(json.dumps(processor))
    size, tokens = config_problems(Gemma3DPOModule, model_dir)
    assert "makes 64x64 inputs" in size and "takes 32x32" in size
    assert "Fix: set size to {height: 32, width: 32}" in size
    assert "image_seq_length=16" in tokens and "Fix: set image_seq_length to 4" in tokens


# ---------------------------------------------------------------------------- CLI
def test_cli_predict_then_fit_with_the_gemma3_class_path(tiny_gemma3_dir, tmp_path) -> None:
    run = check_cli_predict_then_fit("lightning_aug_dpo.Gemma3DPOModule", tiny_gemma3_dir, tmp_path)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.language_model\.")
