"""Values of the DPO loss and of the log-prob helpers, checked against hand or naive maths."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_aug_dpo.losses import (
    PreferenceLossOutput,
    SigmoidDPOLoss,
    concat_prompt_response,
    sequence_logprobs,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# A 3-example batch, beta = 0.1:
#   ex 0: policy (-10, -12), reference (-11, -11): h = 0.1 * ((-10 + 12) - (-11 + 11)) = 0.2
#   ex 1: policy ( -5,  -4), reference ( -5,  -5): h = 0.1 * ((-5 + 4) - 0)          = -0.1
#   ex 2: policy (-20, -30), reference (-22, -25): h = 0.1 * ((-20 + 30) - (-22 + 25)) = 0.7
POLICY_CHOSEN = [-10.0, -5.0, -20.0]
POLICY_REJECTED = [-12.0, -4.0, -30.0]
REFERENCE_CHOSEN = [-11.0, -5.0, -22.0]
REFERENCE_REJECTED = [-11.0, -5.0, -25.0]
H = [0.2, -0.1, 0.7]


def _batch() -> tuple[torch.Tensor, ...]:
    return (
        _t(POLICY_CHOSEN),
        _t(POLICY_REJECTED),
        _t(REFERENCE_CHOSEN),
        _t(REFERENCE_REJECTED),
    )


# ---------------------------------------------------------------- SigmoidDPOLoss


def test_dpo_hand_values():
    out = SigmoidDPOLoss(beta=0.1)(*_batch())
    assert isinstance(out, PreferenceLossOutput)
    expected = [-math.log(_sigmoid(h)) for h in H]
    # -log(sigmoid(0.2)) = log(1 + e^-0.2) = 0.598139..., etc.
    assert expected[0] == pytest.approx(0.5981388693, abs=1e-9)
    assert expected[1] == pytest.approx(0.7443966600, abs=1e-9)
    assert expected[2] == pytest.approx(0.4031860489, abs=1e-9)
    assert out.losses.shape == (3,)
    for got, want in zip(out.losses.tolist(), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert out.loss.ndim == 0
    assert out.loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)


def test_dpo_rewards_hand_values():
    out = SigmoidDPOLoss(beta=0.1)(*_batch())
    # chosen: 0.1 * (policy_chosen - reference_chosen) = 0.1 * (1, 0, 2)
    # rejected: 0.1 * (policy_rejected - reference_rejected) = 0.1 * (-1, 1, -5)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0, 0.2], abs=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1, -0.5], abs=1e-6)
    # margin of the rewards is h itself
    margins = (out.chosen_rewards - out.rejected_rewards).tolist()
    assert margins == pytest.approx(H, abs=1e-6)


def test_dpo_beta_scales_h():
    out = SigmoidDPOLoss(beta=0.5)(*_batch())
    expected = [-math.log(_sigmoid(5 * h)) for h in H]  # h was computed with beta 0.1
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_dpo_is_log2_when_policy_equals_reference(beta, label_smoothing):
    gen = torch.Generator().manual_seed(0)
    chosen = -torch.rand(16, generator=gen) * 500
    rejected = -torch.rand(16, generator=gen) * 500
    loss = SigmoidDPOLoss(beta=beta, label_smoothing=label_smoothing)
    out = loss(chosen, rejected, chosen.clone(), rejected.clone())
    assert torch.all((out.losses - math.log(2)).abs() <= 1e-7)
    assert abs(out.loss.item() - math.log(2)) <= 1e-7
    assert torch.all(out.chosen_rewards == 0)
    assert torch.all(out.rejected_rewards == 0)


def test_dpo_label_smoothing_hand_values():
    eps = 0.2
    out = SigmoidDPOLoss(beta=0.1, label_smoothing=eps)(*_batch())
    expected = [-(1 - eps) * math.log(_sigmoid(h)) - eps * math.log(_sigmoid(-h)) for h in H]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    # label smoothing does not change the rewards
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0, 0.2], abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_dpo_invalid_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        SigmoidDPOLoss(beta=beta)


@pytest.mark.parametrize("label_smoothing", [-0.01, 0.5, 0.7])
def test_dpo_invalid_label_smoothing(label_smoothing):
    with pytest.raises(ValueError, match="label_smoothing"):
        SigmoidDPOLoss(beta=0.1, label_smoothing=label_smoothing)


def test_dpo_gradients_flow_through_policy_only():
    beta = 0.1
    policy_chosen = _t(POLICY_CHOSEN).requires_grad_()
    policy_rejected = _t(POLICY_REJECTED).requires_grad_()
    reference_chosen, reference_rejected = _t(REFERENCE_CHOSEN), _t(REFERENCE_REJECTED)
    out = SigmoidDPOLoss(beta=beta)(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    assert out.loss.requires_grad
    assert not out.chosen_rewards.requires_grad and out.chosen_rewards.grad_fn is None
    assert not out.rejected_rewards.requires_grad and out.rejected_rewards.grad_fn is None
    out.loss.backward()
    # d/dh -log(sigmoid(h)) = -sigmoid(-h); dh/d(chosen) = beta, dh/d(rejected) = -beta; mean /3
    grad_chosen = [-beta * _sigmoid(-h) / 3 for h in H]
    assert policy_chosen.grad.tolist() == pytest.approx(grad_chosen, abs=1e-7)
    assert policy_rejected.grad.tolist() == pytest.approx([-g for g in grad_chosen], abs=1e-7)
    assert reference_chosen.grad is None and reference_rejected.grad is None


# ---------------------------------------------------------------- sequence_logprobs


def _naive_logprobs(logits, input_ids, loss_mask):
    batch, length, _ = logits.shape
    logps, means = [], []
    for b in range(batch):
        total, logit_sum, count = 0.0, 0.0, 0
        for t in range(1, length):
            if loss_mask[b, t]:
                row = logits[b, t - 1].double()
                total += torch.log_softmax(row, dim=-1)[input_ids[b, t]].item()
                logit_sum += row.mean().item()
                count += 1
        logps.append(total)
        means.append(logit_sum / max(count, 1))
    return logps, means


def _random_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 6, 11, generator=gen) * 3
    input_ids = torch.randint(0, 11, (2, 6), generator=gen)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    return logits, input_ids, loss_mask


def test_sequence_logprobs_matches_naive_loop():
    logits, input_ids, loss_mask = _random_case()
    logp, mean_logit = sequence_logprobs(logits, input_ids, loss_mask)
    want_logp, want_mean = _naive_logprobs(logits, input_ids, loss_mask)
    assert logp.shape == (2,) and mean_logit.shape == (2,)
    assert logp.dtype == torch.float32 and mean_logit.dtype == torch.float32
    assert logp.tolist() == pytest.approx(want_logp, abs=1e-5)
    assert mean_logit.tolist() == pytest.approx(want_mean, abs=1e-5)
    assert torch.all(logp < 0)


def test_sequence_logprobs_ignores_position_zero_and_masked_out_tokens():
    logits, input_ids, loss_mask = _random_case(1)
    logp, mean_logit = sequence_logprobs(logits, input_ids, loss_mask)
    # token 0 is never predicted: a mask bit there changes nothing
    with_first = loss_mask.clone()
    with_first[:, 0] = 1
    logp2, mean2 = sequence_logprobs(logits, input_ids, with_first)
    torch.testing.assert_close(logp2, logp)
    torch.testing.assert_close(mean2, mean_logit)
    # changing a masked-out target token changes nothing
    other_ids = input_ids.clone()
    other_ids[0, 5] = (other_ids[0, 5] + 1) % 11
    logp3, _ = sequence_logprobs(logits, other_ids, loss_mask)
    torch.testing.assert_close(logp3, logp)


def test_sequence_logprobs_empty_response_is_zero():
    logits, input_ids, _ = _random_case(2)
    mask = torch.zeros(2, 6, dtype=torch.long)
    logp, mean_logit = sequence_logprobs(logits, input_ids, mask)
    assert logp.tolist() == [0.0, 0.0]
    assert mean_logit.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 2e-2), (torch.bfloat16, 1.5e-1)])
def test_sequence_logprobs_low_precision_is_float32(dtype, atol):
    logits, input_ids, loss_mask = _random_case(3)
    low = logits.to(dtype)
    logp, mean_logit = sequence_logprobs(low, input_ids, loss_mask)
    assert logp.dtype == torch.float32 and mean_logit.dtype == torch.float32
    # computed in float32 from the rounded logits ...
    want_logp, want_mean = _naive_logprobs(low.float(), input_ids, loss_mask)
    assert logp.tolist() == pytest.approx(want_logp, abs=1e-5)
    assert mean_logit.tolist() == pytest.approx(want_mean, abs=1e-5)
    # ... and so close to the full float32 result (only input rounding differs)
    ref_logp, ref_mean = sequence_logprobs(logits, input_ids, loss_mask)
    torch.testing.assert_close(logp, ref_logp, atol=atol, rtol=0)
    torch.testing.assert_close(mean_logit, ref_mean, atol=atol, rtol=0)


# ---------------------------------------------------------------- concat_prompt_response

PAD = 99


def _responses():
    # row 0: [7, 8, 2]; row 1: [3, 2]  (right-padded with a junk value, not PAD)
    ids = torch.tensor([[7, 8, 2], [3, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return ids, mask


def test_concat_hand_example():
    # row 0: prompt [5, 6]; row 1: prompt [9]; right-padded prompts
    prompt_ids = torch.tensor([[5, 6], [9, 0]])
    prompt_mask = torch.tensor([[1, 1], [1, 0]])
    input_ids, attention_mask, loss_mask = concat_prompt_response(
        prompt_ids, prompt_mask, *_responses(), pad_id=PAD
    )
    assert input_ids.tolist() == [[5, 6, 7, 8, 2], [9, 3, 2, PAD, PAD]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]


def test_concat_left_and_right_padded_prompts_agree():
    right = (torch.tensor([[5, 6], [9, 0]]), torch.tensor([[1, 1], [1, 0]]))
    left = (torch.tensor([[5, 6], [0, 9]]), torch.tensor([[1, 1], [0, 1]]))
    # responses left-padded too: the result must not depend on padding side anywhere
    left_responses = (torch.tensor([[7, 8, 2], [0, 3, 2]]), torch.tensor([[1, 1, 1], [0, 1, 1]]))
    out_right = concat_prompt_response(*right, *_responses(), pad_id=PAD)
    out_left = concat_prompt_response(*left, *_responses(), pad_id=PAD)
    out_both_left = concat_prompt_response(*left, *left_responses, pad_id=PAD)
    for a, b, c in zip(out_right, out_left, out_both_left, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_concat_responses_of_different_lengths_are_right_padded():
    prompt_ids = torch.tensor([[1, 2, 3]] * 3)
    prompt_mask = torch.ones(3, 3, dtype=torch.long)
    response_ids = torch.tensor([[4, 0, 0, 0], [4, 5, 6, 7], [4, 5, 0, 0]])
    response_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    input_ids, attention_mask, loss_mask = concat_prompt_response(
        prompt_ids, prompt_mask, response_ids, response_mask, pad_id=PAD
    )
    assert input_ids.shape == (3, 7)
    assert input_ids.tolist() == [
        [1, 2, 3, 4, PAD, PAD, PAD],
        [1, 2, 3, 4, 5, 6, 7],
        [1, 2, 3, 4, 5, PAD, PAD],
    ]
    assert attention_mask.sum(-1).tolist() == [4, 7, 5]
    assert loss_mask.tolist() == [
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 0, 0],
    ]


def test_concat_then_logprobs_sums_response_tokens():
    # end to end: the sequence log-prob is the sum over the response tokens only
    prompt_ids = torch.tensor([[5, 6], [0, 9]])
    prompt_mask = torch.tensor([[1, 1], [0, 1]])
    input_ids, _, loss_mask = concat_prompt_response(
        prompt_ids, prompt_mask, *_responses(), pad_id=10
    )
    logits = torch.randn(2, input_ids.shape[1], 11, generator=torch.Generator().manual_seed(4))
    logp, _ = sequence_logprobs(logits, input_ids, loss_mask)
    lsm = torch.log_softmax(logits.double(), dim=-1)
    # row 0: tokens 7, 8, 2 at positions 2, 3, 4; row 1: tokens 3, 2 at positions 1, 2
    want0 = lsm[0, 1, 7] + lsm[0, 2, 8] + lsm[0, 3, 2]
    want1 = lsm[1, 0, 3] + lsm[1, 1, 2]
    assert logp.tolist() == pytest.approx([want0.item(), want1.item()], abs=1e-5)
