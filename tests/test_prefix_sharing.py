"""Prefix sharing (``share_prompt``): each pair's prompt computed once, in one packed row
``[prompt | chosen | rejected]``, gives the plain path's loss, log-probs and LoRA gradients.

Tolerances (float32): loss, rewards and gradients within 1e-5; summed log-probs within 1e-5
plus 1e-6 of their size (a sum of tens of float32 terms of magnitude 1-10, taken in another
order: at -175 one float32 ulp is 1.5e-5). The packing itself is checked on hand-made rows.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_efficiency import PLAIN, assert_same, batch_for, perturb, step

from lightning_aug_dpo import CombinedLoss, ConditionalPreferenceLoss, SigmoidDPOLoss
from lightning_aug_dpo.losses import pack_shared_prompt, sequence_logprobs, shared_prompt_logprobs

PAD = 0
MDPO = {"loss": CombinedLoss([SigmoidDPOLoss(beta=0.1), ConditionalPreferenceLoss()], [1, 1])}


def _rows(*rows: list[int], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        at = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, at], mask[i, at] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def packed_example():
    # row 0: prompt 5 6 7 (left-padded), chosen 8 9, rejected 10; row 1: prompt 5, chosen 11,
    # no rejected answer (an empty slot)
    prompt = _rows([5, 6, 7], [5], left=True)
    chosen, rejected = _rows([8, 9], [11]), _rows([10], [])
    return pack_shared_prompt(*prompt, [chosen, rejected], pad_id=PAD)


def test_packed_rows_layout() -> None:
    packed = packed_example()
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [5, 11, PAD, PAD, PAD, PAD]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert packed.segment.tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, -1, -1, -1, -1]]
    # the rejected answer's position is that of its plain row [5 6 7 | 10]: 3 = index 5 - 2
    assert packed.position_shift.tolist() == [[0, 0, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0]]
    # its first token is predicted by the prompt's last position (2), not by the chosen answer
    assert packed.predictor.tolist() == [[-1, -1, -1, 2, 3, 2], [-1, 0, -1, -1, -1, -1]]
    assert packed.logits_to_keep == 6  # from position 0 (row 1's prompt end) on


def test_attention_bias_keeps_answers_apart() -> None:
    bias = packed_example().attention_bias(torch.float32)
    assert bias.shape == (2, 1, 6, 6)
    seen = (bias[:, 0] == 0).int().tolist()
    assert seen[0] == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # chosen: prompt + itself
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # rejected: prompt + itself, never the chosen answer
    ]
    assert seen[1] == [  # padding sees only itself
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert bias.min() == torch.finfo(torch.float32).min


def test_shared_prompt_logprobs_by_hand() -> None:
    packed = packed_example()
    logits = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(0))
    lsm = logits.log_softmax(-1)
    logps, mean_logits = shared_prompt_logprobs(logits, packed)
    expected = [
        [lsm[0, 2, 8] + lsm[0, 3, 9], lsm[0, 2, 10]],
        [lsm[1, 0, 11], 0.0],  # the empty slot scores nothing
    ]
    torch.testing.assert_close(logps, torch.tensor(expected), rtol=0, atol=1e-6)
    means = [[(logits[0, 2].mean() + logits[0, 3].mean()) / 2, logits[0, 2].mean()]]
    means.append([logits[1, 0].mean(), 0.0])
    torch.testing.assert_close(mean_logits, torch.tensor(means), rtol=0, atol=1e-6)
    # logits of the last 4 positions are enough for row 0 only; row 1 needs position 0
    with pytest.raises(ValueError, match="logits_to_keep"):
        shared_prompt_logprobs(logits[:, 2:], packed)
    # and they equal sequence_logprobs over the plain rows when the model sees no difference:
    # a "model" whose logits at t depend on the token at t only (no context)
    table = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    packed_logps, _ = shared_prompt_logprobs(table[packed.input_ids], packed)
    plain_ids = torch.tensor([[5, 6, 7, 10]])
    plain_logps, _ = sequence_logprobs(table[plain_ids], plain_ids, torch.tensor([[0, 0, 0, 1]]))
    torch.testing.assert_close(packed_logps[0, 1], plain_logps[0], rtol=0, atol=1e-6)


def forwards_of_one_step(module, batch) -> list[torch.Tensor]:
    """The real (non-padding) tokens of every row of every forward of one step."""
    seen: list[torch.Tensor] = []
    forward = module.forward_logits
    pad = module.tokenizer.pad_token_id
    assert pad not in (module.tokenizer.eos_token_id, module.image_token_id())

    def counting(input_ids, *args, **kwargs):
        seen.append((input_ids != pad).sum(1))
        return forward(input_ids, *args, **kwargs)

    module.forward_logits = counting
    module.preference_step(batch)
    return seen


def test_policy_forward_computes_prompt_plus_both_answers(make_module) -> None:
    shared, plain = make_module(), make_module(share_prompt=False)
    batch = batch_for(shared)
    prompt = batch.prompt_attention_mask.sum(1)
    chosen, rejected = batch.chosen_attention_mask.sum(1), batch.rejected_attention_mask.sum(1)
    # policy, then reference: one row per pair holding prompt + chosen + rejected
    assert [rows.tolist() for rows in forwards_of_one_step(shared, batch)] == [
        (prompt + chosen + rejected).tolist()
    ] * 2
    assert [rows.tolist() for rows in forwards_of_one_step(plain, batch)] == [
        torch.cat([prompt + chosen, prompt + rejected]).tolist()
    ] * 2


@pytest.mark.parametrize(
    "settings",
    [{}, {"load_in_4bit": True}, {"gradient_checkpointing": True}, MDPO],
    ids=["default", "nf4", "checkpointing", "mdpo"],
)
def test_qwen2_vl_shared_prompt_equals_plain_path(make_qwen, settings) -> None:
    """M-RoPE: the packed row's 3-D positions come from the model's own ``get_rope_index``."""
    plain = make_qwen(**settings, **PLAIN)
    shared = make_qwen(**settings)
    for module in (plain, shared):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))
    with torch.no_grad():  # every block of one forward, log-probs compared by size
        blocks = ("chosen", "rejected", "chosen_aug")
        a = plain.sequence_logps(batch_for(plain), blocks)
        b = shared.sequence_logps(batch_for(shared), blocks)
    for name in blocks:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-6, msg=name)


@pytest.mark.parametrize("settings", [{"load_in_4bit": True}, MDPO], ids=["nf4", "mdpo"])
def test_llava_shared_prompt_equals_plain_path(make_module, settings) -> None:
    # the other switches are crossed with sharing in test_efficiency.py
    plain = make_module(modules_to_save=["multi_modal_projector"], **settings, **PLAIN)
    shared = make_module(modules_to_save=["multi_modal_projector"], **settings)
    for module in (plain, shared):
        perturb(module)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_separate_reference_with_shared_prompt(make_module, make_qwen, tmp_path, family) -> None:
    build = make_module if family == "llava" else make_qwen
    start = build()
    perturb(start)
    start.save_adapter(tmp_path / "sft")
    common = {"init_adapter": str(tmp_path / "sft"), "reference": "separate"}
    shared, plain = build(**common), build(**common, **PLAIN)
    loss, _ = shared.preference_step(batch_for(shared))
    assert math.isclose(loss.item(), math.log(2), abs_tol=1e-6)  # policy == reference at start
    perturb(shared, seed=2)
    perturb(plain, seed=2)
    assert_same(step(plain, batch_for(plain)), step(shared, batch_for(shared)))


def test_flash_attention_is_refused_with_a_fix(make_module) -> None:
    module = make_module()
    # as from_pretrained(attn_implementation=...) records it (no flash kernel is installed here)
    module.model.config.get_text_config()._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="share_prompt: false"):
        module.preference_step(batch_for(module))
