"""The DPO module on the tiny LLaVA: exact step 0, LoRA-only updates, exact reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_batch
from peft import PeftModel
from transformers import LlavaForConditionalGeneration

from lightning_aug_dpo.losses import concat_prompt_response, sequence_logprobs

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Is there a square?"]
CHOSEN = ["The circle is red.", "There are three shapes.", "Yes, on the left."]
REJECTED = ["The circle is blue.", "There are two shapes.", "No."]


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


def test_step_zero_loss_is_exactly_ln2(make_module) -> None:
    module = make_module()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    loss, values = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(values["rewards/chosen"], torch.zeros(3))
    assert torch.equal(values["rewards/accuracies"], torch.zeros(3))  # strict: 0 > 0 is false


def test_lora_only_in_language_model(make_module) -> None:
    module = make_module()
    lora = [n for n, _ in module.model.named_modules() if n.endswith("lora_A")]
    assert lora, "no LoRA module was attached"
    assert not [n for n in lora if "vision_tower" in n or "multi_modal_projector" in n]
    assert all(".language_model." in n for n in lora)
    # 2 layers x 7 projections (q, k, v, o, gate, up, down)
    assert len(lora) == 2 * 7
    assert not [n for n, _ in module.model.named_modules() if "lm_head" in n and "lora" in n]


def test_only_lora_changes_and_reward_accuracy_rises(make_module) -> None:
    module = make_module()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _, values0 = module.preference_step(batch)
    losses = train_steps(module, batch, steps=5)
    _, values1 = module.preference_step(batch)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "training changed nothing"
    assert all("lora_" in k for k in changed), [k for k in changed if "lora_" not in k]
    assert values0["rewards/accuracies"].mean() == 0.0
    assert values1["rewards/accuracies"].mean() == 1.0
    assert losses[-1] < math.log(2)


def base_logps(model, module, batch) -> torch.Tensor:
    """Log-probs of chosen responses from an untouched model, computed outside the module."""
    ids, mask, loss_mask = concat_prompt_response(
        batch.prompt_input_ids,
        batch.prompt_attention_mask,
        batch.chosen_input_ids,
        batch.chosen_attention_mask,
        module.tokenizer.pad_token_id,
    )
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values).logits
    return sequence_logprobs(logits, ids, loss_mask)[0]


def test_reference_logps_equal_untouched_base_bit_for_bit(make_module, tiny_llava_dir) -> None:
    # one row per answer, as computed below (prefix sharing's equality: test_prefix_sharing.py)
    module = make_module(share_prompt=False)
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    train_steps(module, batch, steps=3)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    with torch.no_grad():
        expected = base_logps(base, module, batch)
        module.model.eval()
        with module.reference_context():
            reference = module.sequence_logps(batch)["chosen"]
        policy = module.sequence_logps(batch)["chosen"]
    assert torch.equal(reference, expected)
    assert not torch.equal(policy, expected)  # the adapter did learn something


def test_saved_adapter_loads_with_plain_peft(make_module, tiny_llava_dir, tmp_path) -> None:
    module = make_module()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    train_steps(module, batch, steps=3)
    module.save_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    module.model.eval()
    ids, mask, _ = concat_prompt_response(
        batch.prompt_input_ids,
        batch.prompt_attention_mask,
        batch.chosen_input_ids,
        batch.chosen_attention_mask,
        module.tokenizer.pad_token_id,
    )
    with torch.no_grad():
        trained = module.model(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values)
        reloaded = loaded(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values)
        untouched = base_logps(
            LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), module, batch
        )
    torch.testing.assert_close(reloaded.logits, trained.logits, rtol=0, atol=1e-6)
    assert not torch.allclose(base_logps(loaded, module, batch), untouched)


def test_configure_model_is_idempotent(make_module) -> None:
    module = make_module()
    model = module.model
    module.configure_model()
    assert module.model is model


def test_generation_never_emits_the_image_token(make_module) -> None:
    module = make_module()
    pixels = module.preprocess_images([torch.full((3, 50, 70), 128, dtype=torch.uint8)] * 2)
    enc = module.tokenizer(
        module.prompt_texts(QUESTIONS[:2]), return_tensors="pt", padding=True, padding_side="left"
    )
    image_id = module.image_token_id()
    kwargs = module.generation_kwargs(max_new_tokens=24)
    assert kwargs["suppress_tokens"] == [image_id] and kwargs["do_sample"] is False
    with torch.no_grad():
        out = module.model.generate(**enc, pixel_values=pixels, **kwargs)
    assert not (out[:, enc.input_ids.shape[1] :] == image_id).any()
    # greedy: the same call gives the same answers, and the text API agrees with the ids
    texts = module.generate(pixels, QUESTIONS[:2], max_new_tokens=24, use_reference=True)
    assert texts == module.generate(pixels, QUESTIONS[:2], max_new_tokens=24, use_reference=True)
    decoded = module.tokenizer.batch_decode(
        out[:, enc.input_ids.shape[1] :], skip_special_tokens=True
    )
    assert texts == [t.strip() for t in decoded]


def test_tokenize_pairs_layout(make_module) -> None:
    module = make_module(max_length=40)
    tok = module.tokenizer
    out = module.tokenize_pairs(["Q?"], ["yes"], ["a much longer answer " * 10])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    assert prompt[0] == tok.bos_token_id
    assert prompt.count(module.image_token_id()) == 16
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    assert chosen == [*tok(" yes", add_special_tokens=False).input_ids, tok.eos_token_id]
    rejected_len = int(out["rejected_attention_mask"][0].sum())
    assert len(prompt) + rejected_len == 40  # truncated to max_length


def test_checkpoint_keeps_only_trainable_tensors(make_module) -> None:
    module = make_module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = list(checkpoint["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    assert len(keys) == sum(p.requires_grad for p in module.parameters())


def test_modules_to_save_trains_projector_but_reference_stays_base(make_module) -> None:
    module = make_module(modules_to_save=["multi_modal_projector"])
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    loss, _ = module.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in n for n in trainable)
    with torch.no_grad(), module.reference_context():
        ref0 = module.sequence_logps(batch)["chosen"]
    train_steps(module, batch, steps=2)
    with torch.no_grad(), module.reference_context():
        ref1 = module.sequence_logps(batch)["chosen"]
    assert torch.equal(ref0, ref1)


def test_qlora_4bit_base_on_cpu(make_module) -> None:
    import bitsandbytes as bnb

    module = make_module(load_in_4bit=True)
    quantized = [n for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7
    assert all(".language_model." in n for n in quantized)
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    losses = train_steps(module, batch, steps=3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert losses[-1] < losses[0]


def test_missing_checkpoint_fails_clearly(tmp_path: Path) -> None:
    from lightning_aug_dpo import LlavaDPOModule

    module = LlavaDPOModule(model_name_or_path=str(tmp_path / "nope"))
    with pytest.raises(OSError, match="nope"):
        module.configure_model()


def test_init_adapter_restores_the_trained_policy(make_module, tmp_path) -> None:
    module = make_module()
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    train_steps(module, batch, steps=3)
    module.save_adapter(tmp_path / "adapter")
    restored = make_module(init_adapter=str(tmp_path / "adapter"))
    module.model.eval()
    restored.model.eval()
    with torch.no_grad():
        expected = module.sequence_logps(batch)["chosen"]
        got = restored.sequence_logps(batch)["chosen"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert any(p.requires_grad for p in restored.parameters())  # trainable: a run can go on


def test_trainable_tensors_are_float32_on_a_bf16_base(make_module) -> None:
    module = make_module(torch_dtype="bfloat16", modules_to_save=["multi_modal_projector"])
    trainable = {n: p.dtype for n, p in module.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}
    frozen = {p.dtype for p in module.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


def test_unfinished_answers_get_no_eos_and_tokens_match_joint_tokenisation(make_module) -> None:
    module = make_module()
    tok = module.tokenizer
    out = module.tokenize_pairs(
        ["Q?", "Q?"],
        ["red circle", "red circle"],
        ["blue", "blue"],
        chosen_finished=[True, False],
        rejected_finished=[False, True],
    )
    chosen = [
        ids[m.bool()].tolist()
        for ids, m in zip(out["chosen_input_ids"], out["chosen_attention_mask"], strict=True)
    ]
    assert chosen[0] == [*chosen[1], tok.eos_token_id]
    prompt = out["prompt_input_ids"][1][out["prompt_attention_mask"][1].bool()].tolist()
    joint = tok(module.prompt_texts(["Q?"])[0] + " red circle").input_ids
    assert prompt + chosen[1] == joint


def test_sentencepiece_style_tokenizer_scores_generation_boundaries(make_module) -> None:
    """With a Metaspace (SentencePiece-like) tokenizer too, prompt + response tokens are exactly
    the tokens of the joint text, i.e. the word boundaries the model saw while generating."""
    module = make_module()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        show_progress=False,
    )
    sp.train_from_iterator(
        ["USER: what color is the circle? ASSISTANT: the circle is red"] * 8, trainer=trainer
    )
    module.processor.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=sp,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tok = module.tokenizer
    out = module.tokenize_pairs(["what color is the circle?"], ["the circle is red"], ["red"])
    prompt = out["prompt_input_ids"][0][out["prompt_attention_mask"][0].bool()].tolist()
    chosen = out["chosen_input_ids"][0][out["chosen_attention_mask"][0].bool()].tolist()
    joint = tok(module.prompt_texts(["what color is the circle?"])[0] + " the circle is red")
    assert prompt + chosen[:-1] == joint.input_ids
    assert chosen[-1] == tok.eos_token_id


def test_resuming_with_other_lora_settings_fails_clearly(make_module) -> None:
    saved = make_module(lora_r=8)
    checkpoint = {"state_dict": saved.state_dict()}
    saved.on_save_checkpoint(checkpoint)
    other = make_module(lora_r=8, modules_to_save=["multi_modal_projector"])
    with pytest.raises(ValueError, match=r"lacks \d+ trainable tensors"):
        other.on_load_checkpoint(checkpoint)
    saved.on_load_checkpoint(checkpoint)  # the same settings load
