"""LLaVA-NeXT (LLaVA-1.6) as a pure ``AugDPOModule`` subclass, on a tiny checkpoint.

What must hold: the checkpoint is real (``from_pretrained``, ``AutoProcessor``); LoRA and 4-bit
touch the language model only; our fixed one-tile layout (device preprocessing + ``vision_inputs``)
gives the model exactly the inputs, logits and greedy answers of LLaVA-NeXT's own processor for
the same image; the DPO step is exact at step 0, trains LoRA only and gives the plain path's
values with every efficiency switch (prefix sharing, reused image features, response-only logits,
4-bit, gradient checkpointing, mDPO, a separate reference); SFT works; rollouts, pair making,
``predict`` and ``fit`` work from the CLI by ``class_path``; config checks catch wrong settings.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_batch, random_images
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
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from lightning_aug_dpo import LlavaNextDPOModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.models.tiny_llava_next import TinyLlavaNextSpec, write_tiny_llava_next

SIDE, TOKENS = 32, 36  # tiny tile side; 16 base patches + 4 rows x (4 + 1 newline)
PROJECTOR = {"modules_to_save": ["multi_modal_projector"]}  # SeVa trains the projector


@pytest.fixture(scope="module")
def tiny_llava_next_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture
def make_next(tiny_llava_next_dir: Path):
    return module_builder(LlavaNextDPOModule, tiny_llava_next_dir)


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_loads_with_the_auto_classes(tiny_llava_next_dir: Path, tmp_path) -> None:
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert type(processor.image_processor).__name__ == "LlavaNextImageProcessorPil"
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size == 512
    assert model.config.text_config.model_type == "mistral"
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "[INST] <image>\nHi? [/INST]"
    )
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    other = write_tiny_llava_next(tmp_path / "other", TinyLlavaNextSpec(seed=1))
    weights = model.state_dict()
    different = LlavaNextForConditionalGeneration.from_pretrained(other).state_dict()
    assert not torch.equal(weights["model.image_newline"], different["model.image_newline"])


def test_cli_flags_reach_config_json(tmp_path: Path) -> None:
    from lightning_aug_dpo.models.tiny_llava_next import main

    assert main([str(tmp_path / "m"), "--hidden-size", "128", "--image-size", "48"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["vision_config"]["image_size"] == 48
    assert config["image_grid_pinpoints"][0] == [48, 96]


# ---------------------------------------------------------------------------- model hooks
def test_lora_only_on_language_model_linears(make_next) -> None:
    module = make_next()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
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


def test_layout_and_token_count(make_next) -> None:
    module = make_next()
    assert module.grid_point() == (SIDE, 2 * SIDE)  # the first hub grid point, in tiles
    assert module.num_image_tokens() == TOKENS
    tiles = module.tiles(module.preprocess_images(random_images(2)))
    assert tiles.shape == (2, 3, 3, SIDE, SIDE)  # base tile + the two grid tiles
    # the grid tiles hold the image centred between black padding (normalised)
    black = tiles[0, 1, :, 0, 0]
    mean, std = (
        module.processor.image_processor.image_mean,
        module.processor.image_processor.image_std,
    )
    torch.testing.assert_close(black, -torch.tensor(mean) / torch.tensor(std))
    assert torch.equal(tiles[:, 1, :, :, SIDE // 2 :], tiles[:, 0, :, :, : SIDE // 2])
    assert torch.equal(tiles[:, 2, :, :, : SIDE // 2], tiles[:, 0, :, :, SIDE // 2 :])


def test_our_image_path_gives_the_processors_inputs_logits_and_answers(
    make_next, tiny_llava_next_dir: Path
) -> None:
    """Device preprocessing + ``vision_inputs`` == LLaVA-NeXT's own processor, same image."""
    module = make_next()
    processor = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    base = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)], images=[to_pil(image)], return_tensors="pt"
    )
    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == TOKENS
    assert torch.equal(ours["image_sizes"], enc.image_sizes)
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


def test_tokenize_pairs_follow_the_inst_prompt_with_a_space(make_next) -> None:
    module = make_next()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.bos_token_id and prompt.count(module.image_token_id()) == TOKENS
    assert chosen[-1] == tok.eos_token_id
    text = module.prompt_texts(["Q?"])[0] + " The circle is red."
    assert text.endswith("[/INST] The circle is red.")
    assert prompt + chosen[:-1] == tok(text).input_ids


# ---------------------------------------------------------------------------- DPO
def test_step_zero_loss_is_ln2_and_training_changes_only_lora(
    make_next, tiny_llava_next_dir: Path
) -> None:
    base = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir).eval()
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
    # the template's answers: " answer" + EOS, two of them trained in the second row
    trained = batch.labels[1][batch.labels[1] != IGNORE_INDEX].tolist()
    tok = module.tokenizer
    assert trained.count(tok.eos_token_id) == 2
    assert tok.decode(trained, skip_special_tokens=True) == (
        " There are three shapes. Yes, on the left."
    )


def test_full_finetune_trains_lm_projector_and_newline_and_exports(make_next, tmp_path) -> None:
    trained = ["model.image_newline", ".language_model.", "multi_modal_projector"]
    again = check_full_finetune_export(
        make_next, LlavaNextForConditionalGeneration, tmp_path, trained, "vision_tower", again={}
    )
    # processor saved too: a DPO base at ln 2
    loss, _ = again.preference_step(make_batch(again, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ---------------------------------------------------------------------------- config checks
@pytest.fixture
def no_llava_next_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    no_weights(monkeypatch, LlavaNextDPOModule)


@pytest.mark.usefixtures("no_llava_next_weights")
def test_config_checks_catch_wrong_settings(tiny_llava_next_dir: Path, tmp_path: Path) -> None:
    # "fc1" exists only in CLIP, which LoRA must not adapt; max_length below the image tokens
    problems = config_problems(
        LlavaNextDPOModule, tiny_llava_next_dir, lora_target_modules=["fc1"], max_length=30
    )
    assert problems[0].startswith("model.lora_target_modules: ['fc1'] match no module")
    assert problems[1].startswith("model.max_length=30 cannot hold one image")
    assert f"{TOKENS} of them image tokens" in problems[1]
    # a processor making other sizes than CLIP takes; pinpoints that need resampling
    model_dir = tmp_path / "model"
    write_tiny_llava_next(model_dir)
    processor_file = model_dir / "processor_config.json"
    processor = json.loads(processor_file.read_text())
    processor["image_processor"]["crop_size"] = {"height": 64, "width": 64}
    processor_file.write_text(json.dumps(processor))
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["image_grid_pinpoints"] = [[64, 64]]
    config_file.write_text(json.dumps(config))
    problems = config_problems(LlavaNextDPOModule, model_dir)
    assert len(problems) == 2
    assert "makes 64x64 inputs" in problems[0] and "takes 32x32" in problems[0]
    assert "give a 32x32 image the grid 64x64" in problems[1] and "[32, 64]" in problems[1]


# ---------------------------------------------------------------------------- pair making
def test_make_pairs_rolls_out_in_one_left_padded_generate(make_next, monkeypatch) -> None:
    module = make_next()
    assert module.preprocessor.size == SIDE  # the batch is (3, 3, SIDE, SIDE)
    call = check_make_pairs(module, monkeypatch)  # clean and augmented images together
    assert call["pixel_values"].shape == (6, 3, 3, SIDE, SIDE)
    assert call["image_sizes"].tolist() == [[SIDE, SIDE]] * 6
    assert call["suppress_tokens"] == [module.image_token_id()]


# ---------------------------------------------------------------------------- CLI
def test_cli_predict_then_fit_by_class_path(tiny_llava_next_dir: Path, tmp_path: Path) -> None:
    run = check_cli_predict_then_fit(
        "lightning_aug_dpo.LlavaNextDPOModule", tiny_llava_next_dir, tmp_path, **PROJECTOR
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
    demo_assets, tiny_llava_next_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "sft_demo.yaml"),
            "--model.class_path=lightning_aug_dpo.LlavaNextDPOModule",
            f"--model.init_args.model_name_or_path={tiny_llava_next_dir}",
            "--trainer.max_epochs=1",
            "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_samples=8",
            "--data.init_args.num_val_samples=4",
            "--data.init_args.batch_size=4",
        ]
    )
    assert isinstance(cli.model, LlavaNextDPOModule)
    run = Path(cli.trainer.log_dir).resolve()
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r.get("train/loss")]
    assert len(steps) == 2 and all(float(r["train/tokens"]) > 0 for r in steps)
    assert [r for r in rows if r.get("val/loss")], "validation did not run"
    merged = LlavaNextForConditionalGeneration.from_pretrained(run / "merged")
    assert merged.config.image_token_id == cli.model.image_token_id()


def test_hub_checkpoints_get_576_plus_600_tokens() -> None:
    """The documented layout of llava-v1.6 (LlavaNextConfig's defaults are its values: CLIP
    ViT-L/14 at 336 px, the hub's pinpoints), against the processor's own token formula."""
    from transformers import LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    module = LlavaNextDPOModule(model_name_or_path="unused")
    module.model_config = LlavaNextConfig()
    assert module.grid_point() == (336, 672)
    assert module.num_image_tokens() == 576 + 24 * (24 + 1) == 1176
    processor = object.__new__(LlavaNextProcessor)  # only its token-count formula is used
    processor.image_processor = LlavaNextImageProcessorPil()
    processor.patch_size, processor.num_additional_image_tokens = 14, 1
    assert processor._get_number_of_features(336, 336, 336, 336) - 1 == 1176  # CLS dropped
