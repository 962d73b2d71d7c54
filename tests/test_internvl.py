"""InternVL 3 (transformers-native) as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (``from_pretrained``, the auto tokenizer and image
processor); LoRA and 4-bit touch the language model only; our fixed one-tile layout gives the
model exactly the inputs, logits and greedy answers of ``InternVLProcessor`` (over the
checkpoint's tokenizer and image processor: its video half needs torchvision) for the same image;
the DPO step is exact at step 0, trains LoRA only and gives the plain path's values with every
efficiency switch; SFT works; rollouts, pair making, ``predict`` and ``fit`` work from the CLI by
``class_path``; config checks catch wrong settings.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import make_batch
from family_matrix import (
    CHOSEN,
    QUESTIONS,
    REJECTED,
    SHARING,
    check_cli_predict_then_fit,
    check_full_finetune_export,
    check_make_pairs,
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
from test_efficiency import PLAIN
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

from lightning_aug_dpo import InternVLDPOModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.models.tiny_internvl import TinyInternVLSpec, write_tiny_internvl

SIDE, TOKENS = 32, 4  # tiny tile side; 4 x 4 patches of 8 px, pixel-shuffled 2 x 2
PROJECTOR = {"modules_to_save": ["multi_modal_projector"]}  # SeVa trains the projector


@pytest.fixture(scope="module")
def tiny_internvl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_internvl(tmp_path_factory.mktemp("tiny-internvl"))


@pytest.fixture
def make_next(tiny_internvl_dir: Path):
    return module_builder(InternVLDPOModule, tiny_internvl_dir)


def official_processor(path: Path):
    """``InternVLProcessor`` over the checkpoint's tokenizer and image processor. With
    torchvision, ``AutoProcessor``; without, the same class built around its video processor
    (only ``__init__`` wants it; ``__call__`` on images never touches it)."""
    from transformers import AutoProcessor, InternVLProcessor

    try:
        import torchvision  # noqa: F401
    except ImportError:
        tok = AutoTokenizer.from_pretrained(path)
        processor = object.__new__(InternVLProcessor)
        processor.tokenizer = tok
        processor.image_processor = AutoImageProcessor.from_pretrained(path)
        processor.video_processor = None
        processor.chat_template = tok.chat_template
        config = json.loads((path / "processor_config.json").read_text())
        processor.image_seq_length = config["image_seq_length"]
        processor.start_image_token, processor.end_image_token = (
            tok.start_image_token,
            tok.end_image_token,
        )
        processor.start_image_token_id = tok.start_image_token_id
        processor.end_image_token_id = tok.end_image_token_id
        processor.image_token, processor.video_token = tok.context_image_token, tok.video_token
        processor.image_token_id = tok.context_image_token_id
        processor.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(processor.image_token)})|"
            f"(?P<video>{re.escape(processor.video_token)})"
        )
        return processor
    return AutoProcessor.from_pretrained(path)


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_loads_with_the_auto_classes(tiny_internvl_dir: Path, tmp_path) -> None:
    model = InternVLForConditionalGeneration.from_pretrained(tiny_internvl_dir)
    tok = AutoTokenizer.from_pretrained(tiny_internvl_dir)
    image_processor = AutoImageProcessor.from_pretrained(tiny_internvl_dir)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.bos_token is None
    assert type(image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert len(tok) == model.config.text_config.vocab_size == 512
    assert model.config.text_config.model_type == "qwen2"
    assert model.config.image_token_id == tok.context_image_token_id
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = "What color is the circle? It is red, and 3 squares."
    assert tok.decode(tok(text).input_ids) == text
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\n<IMG_CONTEXT>\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    other = write_tiny_internvl(tmp_path / "other", TinyInternVLSpec(seed=1))
    weights = model.state_dict()
    different = InternVLForConditionalGeneration.from_pretrained(other).state_dict()
    assert not all(torch.equal(weights[k], different[k]) for k in weights)


def test_cli_flags_reach_config_json(tmp_path: Path) -> None:
    from lightning_aug_dpo.models.tiny_internvl import main

    assert main([str(tmp_path / "m"), "--hidden-size", "128", "--image-size", "48"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["vision_config"]["image_size"] == [48, 48]
    assert config["image_seq_length"] == 9  # 6 x 6 patches, pixel-shuffled
    with pytest.raises(ValueError, match="even multiple"):
        write_tiny_internvl(tmp_path / "odd", TinyInternVLSpec(image_size=24))


# ---------------------------------------------------------------------------- model hooks
def test_lora_only_on_language_model_linears(make_next) -> None:
    module = make_next()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down); not the vision q/k/v
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in lora)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)


def test_qlora_quantises_the_language_model_only(make_next) -> None:
    import bitsandbytes as bnb

    module = make_next(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".language_model." in n for n in quantized)
    losses = train_steps(module, make_batch(module, QUESTIONS, CHOSEN, REJECTED), steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("crop_to_patches", [False, True])
def test_our_image_path_gives_the_processors_inputs_logits_and_answers(
    make_next, tiny_internvl_dir: Path, crop_to_patches: bool
) -> None:
    """Device preprocessing + ``vision_inputs`` == InternVL's own processor, same image: one
    tile whether or not the processor may crop (a square at tile size gets the 1 x 1 grid)."""
    module = make_next()
    processor = official_processor(tiny_internvl_dir)
    base = InternVLForConditionalGeneration.from_pretrained(tiny_internvl_dir).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)],
        images=[to_pil(image)],
        crop_to_patches=crop_to_patches,
        return_tensors="pt",
    )
    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == TOKENS
    torch.testing.assert_close(ours["pixel_values"], enc.pixel_values, rtol=0, atol=1e-6)

    module.model.eval()
    with torch.no_grad():
        expected = base(**enc).logits
        logits = module.forward_logits(ids.input_ids, ids.attention_mask, pixels)
        features = module.encode_images(pixels)  # the reuse_image_features path
        reused = module.forward_logits(
            ids.input_ids, ids.attention_mask, pixels, vision_features=features
        )
        other_image = module.forward_logits(ids.input_ids, ids.attention_mask, -pixels)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(reused, expected, rtol=0, atol=1e-5)
    assert (other_image - expected).abs().max() > 1e-3  # the image does reach the logits
    answer = module.generate(pixels, [question], max_new_tokens=8)
    with torch.no_grad():
        out = base.generate(**enc, **module.generation_kwargs(8))
    decoded = processor.tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert answer == [decoded.strip()]


def test_resizing_stays_within_one_grey_level_of_the_processor(make_next, tiny_internvl_dir):
    """A larger square image: PIL's bicubic in the processor, torch's antialiased one here."""
    module = make_next()
    image_processor = AutoImageProcessor.from_pretrained(tiny_internvl_dir)
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 2 * SIDE, 2 * SIDE), generator=g, dtype=torch.uint8)
    expected = image_processor(images=[to_pil(image)], return_tensors="pt").pixel_values
    ours = module.vision_inputs(module.preprocess_images([image]), torch.zeros(1, 1).long())
    grey_level = 1.01 / 255 / min(image_processor.image_std)
    torch.testing.assert_close(ours["pixel_values"], expected, rtol=0, atol=grey_level)


def test_tokenize_pairs_uses_chatml_answers(make_next) -> None:
    module = make_next()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS
    start = prompt.index(tok.start_image_token_id)
    assert prompt[start : start + TOKENS + 2] == (
        [tok.start_image_token_id] + [module.image_token_id()] * TOKENS + [tok.end_image_token_id]
    )
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    text = module.prompt_texts(["Q?"])[0] + "The circle is red."
    assert prompt + chosen[:-1] == tok(text).input_ids


# ---------------------------------------------------------------------------- DPO
def test_step_zero_loss_is_ln2_and_training_changes_only_lora(
    make_next, tiny_internvl_dir: Path
) -> None:
    base = InternVLForConditionalGeneration.from_pretrained(tiny_internvl_dir).eval()
    check_step_zero_and_training(make_next(), base)


@SHARING
def test_every_switch_gives_the_plain_path(make_next, settings) -> None:
    """Defaults (shared prompt, reused CLIP features, response-only logits) == the plain path,
    with the projector trained as SeVa does (its copy differs from the reference's)."""
    check_shared_prompt_equals_plain(make_next, settings, **PROJECTOR)


@pytest.mark.parametrize("switch", ["share_prompt", "reuse_image_features", "response_logits_only"])
def test_each_switch_alone_gives_the_plain_path(make_next, switch) -> None:
    check_switches(make_next, {**PLAIN, switch: True}, **PROJECTOR)


def test_separate_reference_with_shared_prompt(make_next, tmp_path) -> None:
    check_separate_reference(make_next, tmp_path)


# ---------------------------------------------------------------------------- SFT
def test_sft_loss_is_the_answers_nll_and_trains_lora_only(make_next) -> None:
    module = make_next()
    batch = check_sft(module, None, None, steps=3)
    # ChatML answers: "answer" + <|im_end|>, two of them trained in the second row
    trained = batch.labels[1][batch.labels[1] != IGNORE_INDEX].tolist()
    tok = module.tokenizer
    assert trained.count(tok.eos_token_id) == 2
    assert tok.decode(trained, skip_special_tokens=True) == (
        "There are three shapes.Yes, on the left."
    )


def test_full_finetune_trains_lm_and_projector_and_exports(make_next, tmp_path) -> None:
    trained = [".language_model.", "lm_head.weight", "multi_modal_projector"]
    again = check_full_finetune_export(
        make_next, InternVLForConditionalGeneration, tmp_path, trained, "vision_tower", again={}
    )
    # processor saved too: a DPO base at ln 2
    loss, _ = again.preference_step(make_batch(again, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ---------------------------------------------------------------------------- config checks
@pytest.fixture
def no_internvl_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    no_weights(monkeypatch, InternVLDPOModule)


@pytest.mark.usefixtures("no_internvl_weights")
def test_config_checks_catch_wrong_settings(tiny_internvl_dir: Path, tmp_path: Path) -> None:
    # "fc1" exists only in the vision tower, which LoRA must not adapt; max_length below the
    # prompt with its image tokens
    problems = config_problems(
        InternVLDPOModule, tiny_internvl_dir, lora_target_modules=["fc1"], max_length=8
    )
    assert problems[0].startswith("model.lora_target_modules: ['fc1'] match no module")
    assert "model.vision_tower.encoder.layer.*.{fc1, fc2" in problems[0]
    assert problems[1].startswith("model.max_length=8 cannot hold one image")
    assert f"{TOKENS} of them image tokens" in problems[1]
    # an image processor making other tiles than the tower takes; a tile of odd patch rows
    model_dir = tmp_path / "model"
    write_tiny_internvl(model_dir)
    processor_file = model_dir / "preprocessor_config.json"
    processor = json.loads(processor_file.read_text())
    processor["size"] = {"height": 64, "width": 64}
    processor_file.write_text(json.dumps(processor))
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["image_size"] = [24, 24]  # 3 x 3 patches of 8 px
    config_file.write_text(json.dumps(config))
    problems = config_problems(InternVLDPOModule, model_dir)
    assert len(problems) == 2
    assert "makes 64x64 tiles" in problems[0] and "takes 24x24" in problems[0]
    assert "image_size 24 is not a multiple of" in problems[1] and "16" in problems[1]


# ---------------------------------------------------------------------------- pair making
def test_make_pairs_rolls_out_in_one_left_padded_generate(make_next, monkeypatch) -> None:
    module = make_next()
    assert module.preprocessor.size == SIDE  # the batch is (3, 3, SIDE, SIDE)
    call = check_make_pairs(module, monkeypatch)  # clean and augmented images together
    assert call["pixel_values"].shape == (6, 3, SIDE, SIDE)  # one tile per image
    tok = module.tokenizer
    markers = [module.image_token_id(), tok.start_image_token_id, tok.end_image_token_id]
    assert sorted(call["suppress_tokens"]) == sorted(
        [*markers, tok.convert_tokens_to_ids("<video>")]
    )


# ---------------------------------------------------------------------------- CLI
def test_cli_predict_then_fit_by_class_path(tiny_internvl_dir: Path, tmp_path: Path) -> None:
    run = check_cli_predict_then_fit(
        "lightning_aug_dpo.InternVLDPOModule", tiny_internvl_dir, tmp_path, **PROJECTOR
    )
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["augmentation"] for r in rows)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.language_model\.")


def test_single_turn_sft_is_the_dpo_paths_tokens(make_next) -> None:
    module = make_next()
    question, answer = QUESTIONS[0], CHOSEN[0]
    ids, trained = module.conversation_tokens([("user", question), ("assistant", answer)])
    out = module.tokenize_pairs([question], [answer], ["No."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert ids == prompt + chosen
    assert trained == [False] * len(prompt) + [True] * len(chosen)


def test_cli_fits_the_sft_demo_config_by_class_path(
    demo_assets, tiny_internvl_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "sft_demo.yaml"),
            "--model.class_path=lightning_aug_dpo.InternVLDPOModule",
            f"--model.init_args.model_name_or_path={tiny_internvl_dir}",
            "--trainer.max_epochs=1",
            "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_samples=8",
            "--data.init_args.num_val_samples=4",
            "--data.init_args.batch_size=4",
        ]
    )
    assert isinstance(cli.model, InternVLDPOModule)
    run = Path(cli.trainer.log_dir).resolve()
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r.get("train/loss")]
    assert len(steps) == 2 and all(float(r["train/tokens"]) > 0 for r in steps)
    assert [r for r in rows if r.get("val/loss")], "validation did not run"
    merged = InternVLForConditionalGeneration.from_pretrained(run / "merged")
    assert merged.config.image_token_id == cli.model.image_token_id()


def test_hub_checkpoints_get_256_tokens_per_image() -> None:
    """The documented layout of InternVL3 -hf (InternVLConfig's defaults are its values: 448 px
    tiles of 14 px patches, pixel shuffle 0.5)."""
    from transformers import InternVLConfig

    module = InternVLDPOModule(model_name_or_path="unused")
    module.model_config = InternVLConfig()
    assert module.tile_side == 448
    assert module.num_image_tokens() == (448 // 14 // 2) ** 2 == 256
    assert module.model_config.image_seq_length == 256  # what InternVLProcessor expands to
