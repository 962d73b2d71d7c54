"""Every efficiency switch of ``AugDPOModule`` is proven equal to the plain path (fp32), and the
loss's declared inputs decide which forwards run (no reference for SimPO, the augmented image only
for mDPO-style terms)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch, random_images

from lightning_aug_dpo import (
    CombinedLoss,
    ConditionalPreferenceLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)

QUESTIONS = ["What color is the circle?", "How many shapes?", "Describe it."]
CHOSEN = ["It is red.", "There are three shapes here.", "A red circle on grey."]
REJECTED = ["Blue.", "Two.", "Nothing at all is in this picture, it is empty."]
PLAIN = {"reuse_image_features": False, "response_logits_only": False, "share_prompt": False}


def perturb(module, seed: int = 1) -> None:
    """Make the policy differ from the reference (LoRA B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=g))


def batch_for(module):
    batch = make_batch(module, QUESTIONS, CHOSEN, REJECTED)
    batch.aug_pixel_values = module.preprocess_images(random_images(3, seed=7))
    return batch


def step(module, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss values and the gradients of every trainable tensor after one backward."""
    module.zero_grad()
    loss, values = module.preference_step(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in values.items()}, grads


def assert_same(a, b, atol: float = 1e-5) -> None:
    (values_a, grads_a), (values_b, grads_b) = a, b
    for key in values_a:
        torch.testing.assert_close(values_a[key], values_b[key], atol=atol, rtol=1e-5, msg=key)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_a[key], grads_b[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.parametrize(
    "switches",
    [
        {"share_prompt": True, "reuse_image_features": False, "response_logits_only": False},
        {"reuse_image_features": True, "response_logits_only": False},
        {"reuse_image_features": False, "response_logits_only": True},
        {"reuse_image_features": True, "response_logits_only": True},
        {**PLAIN, "gradient_checkpointing": True},
        {
            "reuse_image_features": True,
            "response_logits_only": True,
            "gradient_checkpointing": True,
        },
    ],
    ids=lambda s: "+".join(k for k, v in s.items() if v) or "plain",
)
def test_switches_give_the_plain_path_values_and_gradients(make_module, switches) -> None:
    # SeVa's setting: the projector is trained (its copy differs from the reference's)
    common = {"modules_to_save": ["multi_modal_projector"]}
    plain = make_module(**common, **PLAIN)
    fast = make_module(**common, **switches)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))


def test_mdpo_term_reuses_features_and_matches_separate_forwards(make_module) -> None:
    loss = CombinedLoss([SigmoidDPOLoss(beta=0.1), ConditionalPreferenceLoss(beta=0.1)], [1, 1])
    plain = make_module(loss=loss, **PLAIN)
    fast = make_module(loss=loss)
    for module in (plain, fast):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(fast, batch_for(fast)))
    # the augmented block is the chosen answer scored on the augmented image
    batch = batch_for(fast)
    with torch.no_grad():
        together = fast.sequence_logps(batch, ("chosen", "rejected", "chosen_aug"))["chosen_aug"]
        batch.pixel_values = batch.aug_pixel_values
        alone = fast.sequence_logps(batch)["chosen"]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_images_are_encoded_once_per_step(make_module) -> None:
    def encoded_images(module) -> list[int]:
        calls: list[int] = []
        tower = module._llava(module.model).vision_tower
        tower.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
        module.preference_step(batch_for(module))
        return calls

    assert encoded_images(make_module()) == [3]  # once, for policy and reference
    assert encoded_images(make_module(**PLAIN)) == [6, 6]  # chosen + rejected, twice


def test_response_logits_only_skips_the_prompt_positions(make_module) -> None:
    def head_positions(module) -> int:
        seen: list[int] = []
        module.model.get_base_model().lm_head.register_forward_hook(
            lambda m, args, out: seen.append(out.shape[1])
        )
        with torch.no_grad():
            module.sequence_logps(batch_for(module))
        return seen[0]

    full, kept = head_positions(make_module(**PLAIN)), head_positions(make_module())
    image_tokens = make_module().num_image_tokens()
    assert kept < full - image_tokens  # neither image nor (most) prompt tokens


def test_reference_free_loss_runs_no_reference_forward(make_module) -> None:
    module = make_module(loss=SimPOLoss(beta=2.0, gamma=0.5))
    entered = []
    context = module.reference_context
    module.reference_context = lambda: entered.append(1) or context()
    loss, _ = module.preference_step(batch_for(module))
    assert not entered and torch.isfinite(loss)


def test_mdpo_needs_the_augmented_image(make_module) -> None:
    module = make_module(loss=ConditionalPreferenceLoss())
    batch = batch_for(module)
    batch.aug_pixel_values = None
    with pytest.raises(ValueError, match="augmented image"):
        module.preference_step(batch)


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["fp32", "nf4"])
def test_separate_reference_carries_the_starting_adapter(make_module, tmp_path, load_in_4bit):
    start = make_module()
    perturb(start)
    start.save_adapter(tmp_path / "sft")
    kwargs = {"init_adapter": str(tmp_path / "sft"), "load_in_4bit": load_in_4bit}
    separate = make_module(reference="separate", **kwargs)
    base = make_module(reference="base", **kwargs)
    batch = batch_for(separate)
    loss, _ = separate.preference_step(batch)
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-6)  # policy == reference at start
    assert abs(base.preference_step(batch)[0].item() - math.log(2)) > 1e-4
    trainable = [n for n, p in separate.reference_model.named_parameters() if p.requires_grad]
    assert not trainable


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["fp32", "nf4"])
def test_merged_export_reloads_in_plain_transformers(make_module, tmp_path, load_in_4bit):
    """The merged checkpoint gives the logits of the full-precision base + adapter (merging is
    exact up to fp32 rounding); with a 4-bit policy it differs from the policy only by the
    base's quantisation error."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    module = make_module(modules_to_save=["multi_modal_projector"], load_in_4bit=load_in_4bit)
    perturb(module)
    module.save_adapter(tmp_path / "adapter")
    module.export_merged(tmp_path / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert AutoProcessor.from_pretrained(tmp_path / "merged") is not None
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = LlavaForConditionalGeneration.from_pretrained(module.hparams.model_name_or_path)
    unmerged = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    batch = batch_for(module)
    ids = torch.cat([batch.prompt_input_ids, batch.chosen_input_ids], 1)
    with torch.no_grad():
        inputs = {"input_ids": ids, "pixel_values": batch.pixel_values}
        expected = unmerged(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        if not load_in_4bit:  # the policy itself, trained tensors included
            module.model.eval()
            policy = module.model(**inputs).logits
            torch.testing.assert_close(policy, expected, atol=1e-4, rtol=1e-4)


def test_dropout_disabled_and_projector_learning_rate(make_module) -> None:
    module = make_module(lora_dropout=0.1, modules_to_save=["multi_modal_projector"],
                         modules_to_save_lr=1e-3)  # fmt: skip
    dropouts = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=2e-6)
    optimizer = module.configure_optimizers()
    lora, saved = optimizer.param_groups
    assert lora["lr"] == 2e-6 and saved["lr"] == 1e-3
    names = {id(p): n for n, p in module.named_parameters()}
    assert all("lora_" in names[id(p)] for p in lora["params"])
    assert saved["params"] and all("multi_modal_projector" in names[id(p)] for p in saved["params"])
    kept = make_module(lora_dropout=0.1, disable_dropout=False)
    assert any(m.p == 0.1 for m in kept.model.modules() if isinstance(m, torch.nn.Dropout))


def test_reference_logps_from_the_rollout_equal_a_reference_forward(make_module, demo_assets):
    """With reuse, the chosen answers' reference log-probs come from the reference rollout's own
    logits (and DPO trains on the generated ids); they equal a reference forward over the same
    tokens, and the step's reference forward then covers the rejected rows only."""
    from test_datamodule import datamodule, prompt_batch

    from lightning_aug_dpo import DiffusionNoise

    module = make_module(reuse_rollout_reference_logps=True)
    dm = datamodule(demo_assets, augmentation=DiffusionNoise(noise_step=900), drop_identical=False)
    batch = dm.make_pairs(prompt_batch(4), module)
    assert batch.reference_chosen_logps is not None and len(batch) == 4
    with torch.no_grad(), module.reference_context():
        forward = module.sequence_logps(batch)["chosen"]
    torch.testing.assert_close(batch.reference_chosen_logps, forward, atol=1e-4, rtol=1e-5)

    perturb(module)
    shapes: list[tuple[int, int]] = []
    module.model.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: shapes.append(tuple(out.shape[:2]))
    )
    reused = {k: v.detach() for k, v in module.preference_step(batch)[1].items()}
    # policy: one row [prompt | chosen | rejected] per pair; reference: [prompt | rejected]
    (policy_rows, policy_positions), (reference_rows, reference_positions) = shapes
    assert policy_rows == reference_rows == 4
    longest_chosen = int(batch.chosen_attention_mask.sum(1).max())
    assert reference_positions <= policy_positions - longest_chosen + 1
    batch.reference_chosen_logps = None
    computed = {k: v.detach() for k, v in module.preference_step(batch)[1].items()}
    for key in computed:
        torch.testing.assert_close(reused[key], computed[key], atol=1e-4, rtol=1e-4, msg=key)
    # stop strings cut texts, not ids: no reuse then
    dm.sampling = type(dm.sampling)(stop_strings=["zz"])
    assert dm.make_pairs(prompt_batch(2), module).reference_chosen_logps is None


def test_bf16_base_with_a_trained_projector_runs_without_autocast(make_module) -> None:
    """The float32 trained projector copy takes the bf16 model's activations (no autocast) and
    hands bf16 back; policy and reference then differ only by the projector's precision."""
    module = make_module(torch_dtype="bfloat16", modules_to_save=["multi_modal_projector"])
    trained = module._llava(module.model).multi_modal_projector.modules_to_save["default"]
    assert next(trained.parameters()).dtype == torch.float32
    features = torch.randn(2, 3, trained.linear_1.in_features, dtype=torch.bfloat16)
    assert trained(features).dtype == torch.bfloat16
    loss, _ = module.preference_step(batch_for(module))
    assert torch.isfinite(loss) and abs(loss.item() - math.log(2)) < 0.05
    loss.backward()
    assert trained.linear_1.weight.grad is not None
    assert torch.isfinite(trained.linear_1.weight.grad).all()


def test_a_trained_vision_tower_gets_gradients_in_the_dpo_step(make_module) -> None:
    """``train_vision_tower`` (full fine-tuning of a model trained from scratch): the tower's
    output is not reused from a no-grad encode, so DPO reaches its weights."""
    module = make_module(finetune="full", train_vision_tower=True, reference="separate")
    perturb(module)
    loss, _ = module.preference_step(batch_for(module))
    loss.backward()
    tower = module._llava(module.model).vision_tower
    # (the last layer and post-norm get none: LLaVA reads the second-to-last layer)
    patch_embedding = tower.get_input_embeddings().weight
    assert patch_embedding.requires_grad and patch_embedding.grad is not None
    assert float(patch_embedding.grad.abs().sum()) > 0
