"""Qwen2.5-VL and Qwen3-VL, each a pure ``AugDPOModule`` subclass, on its own tiny checkpoint:
the test matrix of ``test_qwen2_vl.py`` plus SFT, prefix sharing, the efficiency switches, the
config checks, offline ``predict`` and CLI ``fit`` by ``class_path``, parametrised per family
(``-k qwen2_5_vl`` / ``-k qwen3_vl`` select one).

What must hold per family: the checkpoint is real; LoRA and 4-bit touch the language model only
(the vision blocks share LoRA target names with it); our fixed-size device preprocessing +
``vision_inputs`` give the model exactly the inputs, logits and greedy answers of the family's own
processor; the DPO step is exact at step 0 and trains LoRA only; every efficiency switch and
prefix sharing give the plain path's values and gradients; rollouts, pair making, SFT and the CLI
work unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_batch, random_images
from family_matrix import (
    CHOSEN,
    CONVERSATIONS,
    MDPO,
    QUESTIONS,
    REJECTED,
    check_cli_predict_then_fit,
    check_make_pairs,
    check_rollout_reference_logps,
    check_sampled_rollouts,
    check_separate_reference,
    check_shared_prompt_equals_plain,
    check_switches,
    cli_config,
    logged_losses,
    module_builder,
    sft_train,
    to_pil,
    train_steps,
)
from test_efficiency import PLAIN, batch_for, perturb
from torch import nn
from torch.nn import functional as F
from transformers import AutoImageProcessor, AutoTokenizer

import lightning_aug_dpo as lad
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.types import SFTBatch
from lightning_aug_dpo.validation import ConfigError

MERGER = {"modules_to_save": ["merger"]}  # SeVa trains the projector: Qwen's merger
#: Prompts of different lengths, so that the rollout batch is left-padded.
PAIR_QUESTIONS = ["What color is the circle?", "Why?", "How many shapes are there?"]


@dataclass(frozen=True)
class Family:
    """What the tests need to know of one family."""

    name: str
    module: str  # class name exported by lightning_aug_dpo
    hf_model: str  # transformers model class
    hf_processor: str  # transformers processor class
    writer: Callable[..., Path]
    spec: type
    side: int  # the tiny checkpoint's image side
    factor: int  # patch_size * merge_size: image_size must be a multiple of it
    chat_prompt: str  # the chat template's prompt for [image, "Hi?"]
    vision_linears: int  # LoRA target names that also exist in the vision tower

    def module_class(self) -> type:
        return getattr(lad, self.module)

    def hf_class(self) -> type:
        import transformers

        return getattr(transformers, self.hf_model)


def _families() -> list[Family]:
    from lightning_aug_dpo.models.tiny_qwen2_5_vl import TinyQwen2_5_VLSpec, write_tiny_qwen2_5_vl
    from lightning_aug_dpo.models.tiny_qwen3_vl import TinyQwen3VLSpec, write_tiny_qwen3_vl

    qwen2_prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n<|im_start|>assistant\n"
    )
    return [
        Family(
            "qwen2_5_vl",
            "Qwen2_5_VLDPOModule",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLProcessor",
            write_tiny_qwen2_5_vl,
            TinyQwen2_5_VLSpec,
            side=56,
            factor=28,
            chat_prompt=qwen2_prompt,
            vision_linears=3,  # the SwiGLU MLP: gate_proj, up_proj, down_proj
        ),
        Family(
            "qwen3_vl",
            "Qwen3VLDPOModule",
            "Qwen3VLForConditionalGeneration",
            "Qwen3VLProcessor",
            write_tiny_qwen3_vl,
            TinyQwen3VLSpec,
            side=64,
            factor=32,
            # no default system prompt
            chat_prompt=(
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n"
                "<|im_start|>assistant\n"
            ),
            vision_linears=0,  # qkv, proj, linear_fc1, linear_fc2
        ),
    ]


FAMILIES = _families()


@pytest.fixture(scope="session", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Family, Path]:
    """The family and its tiny checkpoint, written once per session."""
    fam: Family = request.param
    return fam, fam.writer(tmp_path_factory.mktemp(f"tiny-{fam.name}"))


@pytest.fixture
def make(family):
    """Build and configure the family's module on its tiny checkpoint (float32, CPU)."""
    fam, path = family
    return module_builder(fam.module_class(), path)


def official_processor(fam: Family, path: Path):
    """The family's own processor. ``AutoProcessor`` needs torchvision (transformers builds a
    video processor too); without it, the same class over the checkpoint's tokenizer and image
    processor: only ``__init__``'s type checks want the video half, ``__call__`` on images does
    not touch it."""
    import transformers
    from transformers import AutoProcessor

    try:
        import torchvision  # noqa: F401
    except ImportError:
        cls = getattr(transformers, fam.hf_processor)
        processor = object.__new__(cls)
        processor.tokenizer = tok = AutoTokenizer.from_pretrained(path)
        processor.image_processor = AutoImageProcessor.from_pretrained(path)
        processor.video_processor = None
        processor.chat_template = tok.chat_template
        for kind in ("image", "video"):
            token = getattr(tok, f"{kind}_token")
            setattr(processor, f"{kind}_token", token)
            setattr(processor, f"{kind}_token_id", tok.convert_tokens_to_ids(token))
        for kind in ("vision_start", "vision_end"):  # Qwen3-VL's __init__ sets these too
            token = f"<|{kind}|>"
            setattr(processor, f"{kind}_token", token)
            setattr(processor, f"{kind}_token_id", tok.convert_tokens_to_ids(token))
        return processor
    return AutoProcessor.from_pretrained(path)


def tokens_of(module) -> int:
    return module.num_image_tokens()


# ---------------------------------------------------------------------------- the checkpoint
def test_checkpoint_round_trips_through_from_pretrained(family, tmp_path) -> None:
    fam, path = family
    model = fam.hf_class().from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.bos_token is None
    assert len(tok) == model.config.text_config.vocab_size == 512
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert image_processor.size["longest_edge"] == image_processor.size["shortest_edge"]
    assert image_processor.size["longest_edge"] == fam.side**2
    text = "What color is the circle? It is red, and 3 squares."
    assert tok.decode(tok(text).input_ids) == text
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == fam.chat_prompt
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):  # bitsandbytes CPU
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer
    # deterministic per seed; a rewrite gives the same weights and tokenizer
    again = fam.writer(tmp_path / "again")
    other = fam.writer(tmp_path / "other", fam.spec(seed=1))
    load = fam.hf_class().from_pretrained
    weights, same, different = (load(p).state_dict() for p in (path, again, other))
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)
    assert (again / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()


def test_auto_processor_loads_the_checkpoint(family) -> None:
    pytest.importorskip("torchvision", reason="transformers' Qwen processors need torchvision")
    from transformers import AutoProcessor

    fam, path = family
    assert type(AutoProcessor.from_pretrained(path)).__name__ == fam.hf_processor


def test_qwen3_vl_chat_template_is_the_hubs_byte_for_byte() -> None:
    """``Qwen/Qwen3-VL-8B-Instruct``'s template: 5,292 bytes, this SHA-256."""
    import hashlib

    from lightning_aug_dpo.models.tiny_qwen3_vl import CHAT_TEMPLATE

    data = CHAT_TEMPLATE.encode()
    assert len(data) == 5292
    digest = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    assert hashlib.sha256(data).hexdigest() == digest


def test_tiny_writer_cli_flags_reach_config_json(family, tmp_path) -> None:
    import importlib
    from dataclasses import asdict

    fam, _ = family
    writer = importlib.import_module(fam.writer.__module__)
    out = tmp_path / "cli"
    assert writer.main([str(out), "--hidden-size", "128", "--vision-depth", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["vision_config"]["depth"] == 1
    spec = json.loads(next(out.glob("tiny_*_spec.json")).read_text())
    assert spec == asdict(fam.spec(hidden_size=128, vision_depth=1))


# ---------------------------------------------------------------------------- model hooks
def test_lora_only_on_language_model_linears(make, family) -> None:
    fam, _ = family
    module = make()
    names = [n for n, _ in module.model.named_modules()]
    # the vision tower has Linear layers with LoRA target names: scoping must keep them out
    leaves = {n.rsplit(".", 1)[-1] for n in names if ".visual.blocks.0." in n}
    assert len(leaves & set(module.lora_target_modules)) == fam.vision_linears
    lora = [n for n in names if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in lora)
    assert not [n for n in names if "lora" in n and "visual" in n]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)


def test_qlora_quantises_the_language_model_only(make) -> None:
    import bitsandbytes as bnb

    module = make(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7 and all(".language_model." in n for n in quantized)
    visual = [m for n, m in module.model.named_modules() if ".visual." in n]
    assert visual and not [m for m in visual if isinstance(m, bnb.nn.Linear4bit)]
    losses = train_steps(module, make_batch(module, QUESTIONS, CHOSEN, REJECTED), steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


def test_image_size_sets_the_token_count(make, family) -> None:
    fam, _ = family
    assert tokens_of(make()) == (fam.side // fam.factor) ** 2
    assert tokens_of(make(image_size=3 * fam.factor)) == 9


def test_config_checks_catch_every_wrong_setting_before_the_weights(family) -> None:
    """A LoRA target that exists only in the vision tower, a ``modules_to_save`` that matches
    nothing, an image size off the patch grid: all refused at once, before any weights load;
    then a ``max_length`` that cannot hold the image tokens."""
    fam, path = family

    def configure(**kwargs) -> str:
        module = fam.module_class()(model_name_or_path=str(path), **kwargs)
        module.load_model = lambda: pytest.fail("weights loaded before the checks")
        with pytest.raises(ConfigError) as info:
            module.configure_model()
        return str(info.value)

    message = configure(
        lora_target_modules=["qkv"],  # the vision attention's fused projection
        modules_to_save=["multi_modal_projector"],  # LLaVA's name; Qwen calls it merger
        image_size=fam.factor + 2,
    )
    assert "3 configuration problems" in message
    assert "model.lora_target_modules: ['qkv'] match no module that LoRA may adapt" in message
    assert "model.modules_to_save: ['multi_modal_projector'] match no module" in message
    assert f"model.image_size must be a positive multiple of {fam.factor}" in message
    # 4 image tokens + the template's text do not fit in 8 tokens
    message = configure(max_length=8)
    assert "model.max_length=8 cannot hold one image" in message
    assert f"{(fam.side // fam.factor) ** 2} of them image tokens" in message


def test_our_image_path_gives_the_processors_inputs_logits_and_answers(make, family) -> None:
    """Device preprocessing + ``vision_inputs`` == the family's own processor, same image."""
    fam, path = family
    module = make()
    processor = official_processor(fam, path)
    base = fam.hf_class().from_pretrained(path).eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, fam.side, fam.side), generator=g, dtype=torch.uint8)
    question = QUESTIONS[0]
    enc = processor(
        text=[module.format_prompt(question)], images=[to_pil(image)], return_tensors="pt"
    )

    pixels = module.preprocess_images([image])
    ids = module.tokenizer(module.prompt_texts([question]), return_tensors="pt")
    ours = module.vision_inputs(pixels, ids.input_ids)
    assert torch.equal(ids.input_ids, enc.input_ids)
    assert int((ids.input_ids == module.image_token_id()).sum()) == tokens_of(module) == 4
    assert set(ours) <= set(enc)  # nothing the processor does not give
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


def test_resizing_stays_within_one_grey_level_of_the_processor(make, family) -> None:
    """A larger square image: PIL's bicubic in the processor, torch's antialiased one here."""
    fam, path = family
    module = make()
    processor = official_processor(fam, path).image_processor
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 2 * fam.side, 2 * fam.side), generator=g, dtype=torch.uint8)
    expected = processor(images=[to_pil(image)], return_tensors="pt")
    ours = module.vision_inputs(module.preprocess_images([image]), torch.zeros(1, 1).long())
    assert torch.equal(ours["image_grid_thw"], expected.image_grid_thw)
    grey_level = 1.01 / 255 / min(processor.image_std)
    torch.testing.assert_close(ours["pixel_values"], expected.pixel_values, rtol=0, atol=grey_level)


def test_tokenize_pairs_uses_chatml_answers(make) -> None:
    module = make()
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["The circle is red."], ["Blue."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS
    assert prompt.count(module.image_token_id()) == 4
    assert chosen[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # no space before the answer: the tokens are those of the ChatML text
    text = module.prompt_texts(["Q?"])[0] + "The circle is red."
    assert prompt + chosen[:-1] == tok(text).input_ids


# ---------------------------------------------------------------------------- DPO
def test_step_zero_loss_is_exactly_ln2(make) -> None:
    module = make()
    loss, values = module.preference_step(make_batch(module, QUESTIONS, CHOSEN, REJECTED))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(values["rewards/chosen"], torch.zeros(3))
    assert torch.equal(values["rewards/margins"], torch.zeros(3))


def test_training_changes_only_lora_and_reference_stays_the_base(make, family) -> None:
    fam, path = family
    module = make()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = train_steps(module, batch, steps=5)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed), changed
    assert losses[-1] < math.log(2)
    _, values = module.preference_step(batch)
    assert values["rewards/accuracies"].mean() == 1.0
    # the reference (adapters off) is the untouched checkpoint, bit for bit
    base = fam.hf_class().from_pretrained(path).eval()
    module.model.eval()
    with torch.no_grad():
        with module.reference_context():
            reference = module.sequence_logps(batch)
        module.model = base  # the same computation on the plain base model
        expected = module.sequence_logps(batch)
    assert torch.equal(reference["chosen"], expected["chosen"])
    assert torch.equal(reference["rejected"], expected["rejected"])


ONLY = {name: {**PLAIN, name: True} for name in PLAIN}  # one switch on, the others off


@pytest.mark.parametrize(
    "settings",
    [
        ONLY["share_prompt"],
        ONLY["response_logits_only"],
        ONLY["reuse_image_features"],
        {},  # the defaults: every switch on
        {"gradient_checkpointing": True},
        {"load_in_4bit": True},
        MDPO,
    ],
    ids=[
        "share_prompt",
        "response_logits_only",
        "reuse_image_features",
        "defaults",
        "checkpointing",
        "nf4",
        "mdpo",
    ],
)
def test_efficiency_switches_give_the_plain_path(make, settings) -> None:
    """Prefix sharing's packed row (M-RoPE positions from the model's ``get_rope_index``),
    response-only logits and the vision blocks run once (the mergers per forward) equal one row
    per answer with every logit and its own vision forward: values and gradients. SeVa's
    setting: the merger is trained, so the policy's copy differs from the reference's."""
    if set(settings) <= set(PLAIN):  # switches only (the defaults: none given)
        check_switches(make, settings, **MERGER)
    else:  # a setting on both sides; every block's log-probs compared too
        check_shared_prompt_equals_plain(make, settings, **MERGER)


def test_the_vision_blocks_run_once_per_step(make) -> None:
    """With ``reuse_image_features`` one vision-tower pass per step (clean + augmented images
    for mDPO), shared by policy and reference; without, one per forward."""

    def tower_passes(module) -> list[int]:
        calls: list[int] = []
        visual = module.visual_of(module.model)
        visual.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True
        )
        module.preference_step(batch_for(module))
        return calls

    assert tower_passes(make()) == [3]  # once, for policy and reference
    assert tower_passes(make(**MDPO)) == [6]  # clean and augmented images together
    assert tower_passes(make(**PLAIN)) == [6, 6]  # chosen + rejected rows, twice
    # a trained vision tower (full fine-tuning) is not frozen: each forward encodes its images
    trained = make(finetune="full", train_vision_tower=True, reference="separate")
    assert tower_passes(trained) == [3]  # the policy's; the separate reference has its own
    reference_tower = trained.visual_of(trained.reference_model)
    calls = []
    reference_tower.register_forward_pre_hook(lambda m, args: calls.append(1))
    trained.preference_step(batch_for(trained))
    assert calls == [1]


def test_separate_reference_with_shared_prompt(make, tmp_path) -> None:
    check_separate_reference(make, tmp_path)


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["fp32", "nf4"])
def test_merger_trained_with_lora_exports_adapter_and_merged_model(
    make, family, tmp_path, load_in_4bit
) -> None:
    """SeVa's setting (the projector trained in full: Qwen's ``merger``): exact ln 2 at step 0,
    and the adapter and the merged export both give the full-precision base + adapter."""
    from peft import PeftModel

    fam, path = family
    module = make(modules_to_save=["merger"], load_in_4bit=load_in_4bit)
    saved = [n for n, p in module.named_parameters() if p.requires_grad and "lora_" not in n]
    assert saved and all(".visual.merger.modules_to_save." in n for n in saved)
    batch = batch_for(module)
    assert math.isclose(module.preference_step(batch)[0].item(), math.log(2), abs_tol=1e-7)
    perturb(module)
    module.save_adapter(tmp_path / "adapter")
    module.export_merged(tmp_path / "merged")
    merged = fam.hf_class().from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    unmerged = PeftModel.from_pretrained(fam.hf_class().from_pretrained(path), tmp_path / "adapter")
    ids = torch.cat([batch.prompt_input_ids, batch.chosen_input_ids], 1)
    inputs = {"input_ids": ids, **module.vision_inputs(batch.pixel_values, ids)}
    with torch.no_grad():
        expected = unmerged.eval()(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        base = fam.hf_class().from_pretrained(path).eval()(**inputs).logits
    assert (base - expected).abs().max() > 1e-3  # the adapter and the merger did change it


# ---------------------------------------------------------------------------- pair making
def test_make_pairs_rolls_out_in_one_left_padded_generate(make, family, monkeypatch) -> None:
    fam, _ = family
    module = make()
    assert module.preprocessor.size == fam.side  # the batch is (3, 3, side, side)
    call = check_make_pairs(module, monkeypatch, PAIR_QUESTIONS)
    patch = fam.factor // 2
    assert call["pixel_values"].shape == (6 * 16, 3 * 2 * patch * patch)
    assert call["image_grid_thw"].tolist() == [[1, 4, 4]] * 6
    assert call["mm_token_type_ids"].sum(-1).tolist() == [4] * 6
    config = module.model.config
    markers = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    assert sorted(call["suppress_tokens"]) == sorted(getattr(config, m) for m in markers)


def test_reference_logps_from_the_rollout_equal_a_reference_forward(make) -> None:
    """``reuse_rollout_reference_logps``: the logits of ``generate`` (KV cache, M-RoPE deltas)
    score the chosen answers as a reference forward over the same tokens does."""
    module = make(reuse_rollout_reference_logps=True)
    check_rollout_reference_logps(module, PAIR_QUESTIONS, rollout_model="reference")


def test_sampled_rollouts_give_num_samples_answers_per_image(make) -> None:
    check_sampled_rollouts(make())


# ---------------------------------------------------------------------------- SFT
def sft_batch(module) -> SFTBatch:
    tokens, status = module.tokenize_conversations(CONVERSATIONS)
    assert all(s is None for s in status)
    pixels = module.preprocess_images(random_images(len(CONVERSATIONS)))
    return SFTBatch(pixel_values=pixels, **tokens)


def logits_of(model, batch: SFTBatch, module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **module.vision_inputs(batch.pixel_values, batch.input_ids),
        ).logits


def test_sft_single_turn_is_the_dpo_paths_tokens(make) -> None:
    module = make()
    question, answer = CONVERSATIONS[0][0][1], CONVERSATIONS[0][1][1]
    ids, trained = module.conversation_tokens(CONVERSATIONS[0])
    out = module.tokenize_pairs([question], [answer], ["No."])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert ids == prompt + chosen and chosen[-1] == module.tokenizer.eos_token_id
    assert trained == [False] * len(prompt) + [True] * len(chosen)


def test_sft_multi_turn_mask_covers_answers_and_end_tokens_only(make) -> None:
    """From the family's own chat template (Qwen3-VL's has no system turn): each answer and
    its ``<|im_end|>`` are trained, the image, user turns and role headers never."""
    module = make()
    tok = module.tokenizer
    tokens, status = module.tokenize_conversations([CONVERSATIONS[1]])
    assert status == [None]
    ids, labels = tokens["input_ids"][0], tokens["labels"][0]
    trained = labels != IGNORE_INDEX
    assert torch.equal(labels[trained], ids[trained])
    answers = [a for _, a in CONVERSATIONS[1][1::2]]
    assert tok.decode(ids[trained]) == f"{answers[0]}<|im_end|>{answers[1]}<|im_end|>"
    image = ids == module.image_token_id()
    assert int(image.sum()) == tokens_of(module) and not trained[image].any()
    untrained = tok.decode(ids[~trained])
    assert untrained.count("<|im_start|>assistant\n") == 2
    assert all(question in untrained for _, question in CONVERSATIONS[1][::2])
    # the template's text, image placeholder expanded, up to the last answer's <|im_end|>
    rendered = module.processor.apply_chat_template(module.chat_messages(CONVERSATIONS[1]))
    image_pad = "<|image_pad|>"
    expected = rendered.replace(image_pad, image_pad * tokens_of(module)).removesuffix("\n")
    assert tok.decode(ids) == expected


@pytest.mark.parametrize("response_logits_only", [True, False])
def test_sft_loss_is_the_token_mean_nll_of_the_answers(make, response_logits_only) -> None:
    module = make(response_logits_only=response_logits_only)
    batch = sft_batch(module)
    im_end = module.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (batch.labels == im_end).sum() == 3  # each answer ends with its turn's <|im_end|>
    loss, count = module.sft_step(batch)
    logits = logits_of(module.model, batch, module)
    targets = batch.labels[:, 1:]
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
    )
    assert int(count) == int((targets != IGNORE_INDEX).sum()) > 0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_lora_sft_trains_only_lora(make) -> None:
    module = make()
    batch = sft_batch(module)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = sft_train(module, batch, steps=4)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("lora_" in k for k in changed), changed
    assert losses[-1] < losses[0]


def test_full_finetune_trains_lm_and_projector_and_exports_a_plain_model(
    make, family, tmp_path
) -> None:
    fam, _ = family
    module = make(finetune="full")
    assert not module.has_adapter
    batch = sft_batch(module)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    sft_train(module, batch, steps=3)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".language_model." in k for k in changed)
    for prefix in module.full_finetune_modules():  # Qwen3-VL: the DeepStack mergers too
        assert any(k.startswith(prefix + ".") for k in changed), prefix
    assert any("visual.merger" in k for k in changed) and any(
        k.startswith("lm_head") for k in changed
    )
    projectors = [p.split(".", 2)[-1] for p in module.full_finetune_modules() if "visual" in p]
    frozen_tower = [k for k in before if "visual." in k and not any(p in k for p in projectors)]
    assert frozen_tower and not changed & set(frozen_tower)
    # the export is a plain transformers folder with the processor: the trained model's logits
    module.export_merged(tmp_path / "merged")
    reloaded = fam.hf_class().from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        logits_of(reloaded, batch, module),
        logits_of(module.model, batch, module),
        rtol=0,
        atol=1e-5,
    )
    again = make(tmp_path / "merged", finetune="full")
    assert again.tokenizer.chat_template == module.tokenizer.chat_template


# ---------------------------------------------------------------------------- CLI
def test_cli_fit_by_class_path(family, tmp_path: Path) -> None:
    fam, path = family
    class_path = f"lightning_aug_dpo.{fam.module}"
    config = cli_config(class_path, path, tmp_path, image_size=fam.side)
    cli = cli_main(["fit", "--config", str(config)])
    assert type(cli.model) is fam.module_class() and cli.model.hparams.image_size == fam.side
    run = Path(cli.trainer.log_dir)
    losses = logged_losses(run)
    assert len(losses) == 2  # 4 prompts / batch 2
    assert math.isclose(losses[0], math.log(2), abs_tol=1e-6)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"].startswith(r"model\.language_model\.")


def test_offline_predict_writes_pairs_that_fit_trains_on(family, tmp_path: Path) -> None:
    fam, path = family
    class_path = f"lightning_aug_dpo.{fam.module}"
    check_cli_predict_then_fit(class_path, path, tmp_path, image_size=fam.side)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["chosen"] and r["augmentation"] for r in rows)


def test_demo_config_takes_the_family_by_class_path(family) -> None:
    """The README's command: ``configs/demo.yaml`` with ``--model.class_path`` swapped."""
    fam, path = family
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cli = cli_main(
        [
            "--config",
            str(demo),
            f"--model.class_path=lightning_aug_dpo.{fam.module}",
            f"--model.init_args.model_name_or_path={path}",
            "--model.init_args.modules_to_save=[merger]",
        ],
        run=False,
    )
    assert type(cli.model) is fam.module_class()
    assert cli.model.hparams.modules_to_save == ["merger"] and cli.model.hparams.max_length == 512
