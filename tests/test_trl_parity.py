"""Our DPO step against TRL's real ``DPOTrainer`` on the same tiny LLaVA, LoRA weights and batch.

Skipped where TRL is absent (the ``test`` extra installs it). Both sides load the tiny checkpoint
with ``from_pretrained`` in float32 and carry the same LoRA adapter (peft, same config); LoRA B is
set non-zero first so that the policy differs from the reference (adapters disabled on both
sides) and the loss is not trivially ln 2.

The batch is made by TRL's own ``DataCollatorForVisionPreference`` from texts and PIL images:
TRL consumes its output unchanged. Ours is a :class:`PreferenceBatch` with token ids from our
own ``tokenize_pairs`` (asserted to equal TRL's, token for token) and TRL's ``pixel_values``
(the first half of its ``images * 2``): image preprocessing differs on purpose (we pad to square
on the device, the HF processor resizes and centre-crops), and is not what is compared here.

TRL is driven through ``trainer.training_step(model, inputs)`` (``DPOTrainer.compute_loss`` +
backward). Its per-pair log-probs are read from the fused-LM-head outputs of the two forwards
(policy, then reference) with a forward hook, summed as TRL sums them; its logged batch means
(``_metrics``) are compared too. Loss and rewards agree within 1e-5 in float32; log-probs within
1e-5 plus 2e-7 relative (a few float32 ulps at |logp| ~ 100); LoRA gradients too.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from lightning_aug_dpo import LlavaDPOModule
from lightning_aug_dpo.trl_compat import (
    mirror_trl_dpo_trainer,
    trl_preference_inputs,
)
from lightning_aug_dpo.types import PairStats, PreferenceBatch

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Is there a dog?"]
CHOSEN = ["The circle is red and on the left.", "Three.", "Yes, a small brown dog behind the car."]
REJECTED = ["Blue.", "There are two large shapes in the middle.", "No."]
ATOL = 1e-5
# Sequence log-probs are float32 sums of magnitude up to ~100 here, where one ulp is 7.6e-6
# (observed differences: 0 or 1 ulp). Allow ~4 ulps so a different summation order passes.
LOGP_CLOSE = {"atol": ATOL, "rtol": 2e-7}


def _pil_images(n: int) -> list:
    from PIL import Image

    gen = torch.Generator().manual_seed(3)
    sizes = [(48, 64), (64, 64), (80, 40)]
    shapes = [(*sizes[i % len(sizes)], 3) for i in range(n)]
    arrays = [torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8) for shape in shapes]
    return [Image.fromarray(a.numpy()) for a in arrays]


@pytest.fixture(scope="module")
def setup(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Our module, TRL's trainer mirroring it, TRL's collated batch and ours."""
    torch.manual_seed(0)
    module = LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), lora_r=8, lora_alpha=16)
    module.configure_model()
    gen = torch.Generator().manual_seed(1)
    for name, param in module.model.named_parameters():
        if "lora_B" in name:  # policy != reference from the start
            param.data = torch.randn(param.shape, generator=gen) * 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = mirror_trl_dpo_trainer(module, tmp_path_factory.mktemp("trl"))

    tok = module.tokenizer
    # TRL's vision collator tokenises without special tokens: the BOS our tokenizer adds and the
    # EOS our finished answers end with are part of the texts here.
    examples = [
        {
            "images": [image],
            "prompt": tok.bos_token + module.format_prompt(q),
            "chosen": module.format_response(c) + tok.eos_token,
            "rejected": module.format_response(r) + tok.eos_token,
        }
        for image, q, c, r in zip(_pil_images(3), QUESTIONS, CHOSEN, REJECTED, strict=True)
    ]
    inputs = DataCollatorForVisionPreference(processor=module.processor)(examples)
    n = len(QUESTIONS)
    batch = PreferenceBatch(
        pixel_values=inputs["pixel_values"][:n].clone(),
        meta={"stats": PairStats(prompts=n, kept=n, identical=0)},
        **module.tokenize_pairs(QUESTIONS, CHOSEN, REJECTED),
    )
    return {"module": module, "trainer": trainer, "inputs": inputs, "batch": batch}


def test_our_batch_maps_to_trls_collated_batch_token_for_token(setup: dict) -> None:
    module, inputs, batch = setup["module"], setup["inputs"], setup["batch"]
    mapped = trl_preference_inputs(batch, module.tokenizer.pad_token_id)
    assert mapped.keys() == {"input_ids", "attention_mask", "completion_mask", "pixel_values"}
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(mapped[key], inputs[key]), key
    assert torch.equal(mapped["pixel_values"], inputs["pixel_values"])
    # Responses of very different lengths: padding is exercised on both halves.
    lengths = inputs["completion_mask"].sum(1).tolist()
    assert min(lengths) <= 4 and max(lengths) >= 12


def _trl_step(trainer, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """TRL's loss, its per-row policy and reference log-probs, and its logged means."""
    outputs = []
    hook = trainer.model.register_forward_hook(lambda m, a, out: outputs.append(out.log_probs))
    trainer._metrics["train"].clear()
    trainer.model.zero_grad(set_to_none=True)  # training_step accumulates, as Trainer's loop does
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = trainer.training_step(trainer.model, dict(inputs))
    finally:
        hook.remove()
    assert len(outputs) == 2, "expected a policy and a reference forward"
    seq_len = inputs["completion_mask"].shape[1] - 1
    policy, reference = (out[:, -seq_len:].sum(1).detach() for out in outputs)  # as TRL sums
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, policy, reference, metrics


def test_loss_rewards_and_logps_match_trl_dpo_trainer(setup: dict) -> None:
    module, trainer, batch = setup["module"], setup["trainer"], setup["batch"]
    n = len(batch)
    trl_loss, trl_policy, trl_reference, trl_metrics = _trl_step(trainer, setup["inputs"])
    module.model.zero_grad(set_to_none=True)
    loss, values = module.preference_step(batch)
    loss.backward()
    with torch.no_grad(), module.reference_context():
        reference = module.sequence_logps(batch)

    assert abs(loss.item() - math.log(2)) > 1e-3, "policy == reference: the check would be trivial"
    close = dict(atol=ATOL, rtol=0)
    torch.testing.assert_close(loss.detach(), trl_loss, **close)
    torch.testing.assert_close(values["logps/chosen"], trl_policy[:n], **LOGP_CLOSE)
    torch.testing.assert_close(values["logps/rejected"], trl_policy[n:], **LOGP_CLOSE)
    torch.testing.assert_close(reference["chosen"], trl_reference[:n], **LOGP_CLOSE)
    torch.testing.assert_close(reference["rejected"], trl_reference[n:], **LOGP_CLOSE)
    beta = trainer.beta
    trl_rewards = beta * (trl_policy - trl_reference)
    torch.testing.assert_close(values["rewards/chosen"], trl_rewards[:n], **close)
    torch.testing.assert_close(values["rewards/rejected"], trl_rewards[n:], **close)
    # TRL's logged batch means, the numbers a TRL user sees.
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert values[key].mean().item() == pytest.approx(trl_metrics[key], abs=ATOL), key
    for key in ("logps/chosen", "logps/rejected"):  # float32 means of values ~ -50: a few ulps
        assert values[key].mean().item() == pytest.approx(trl_metrics[key], rel=1e-6), key
    assert values["rewards/accuracies"].mean().item() == trl_metrics["rewards/accuracies"]

    # The gradients of the trainable tensors agree as well: the same update would follow.
    ours = {k: p.grad for k, p in module.model.named_parameters() if p.requires_grad}
    theirs = {k: p.grad for k, p in trainer.model.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys() and len(ours) > 0
    scale = max(g.abs().max().item() for g in ours.values())
    assert scale > 0
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], atol=1e-5 * scale, rtol=1e-4, msg=name)
