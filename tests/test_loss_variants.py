"""Values of every preference loss beyond sigmoid DPO, checked against numbers worked by hand.

The expected values are written out (or computed with ``math`` on the worked numbers), never by
re-running the loss formula in torch.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_aug_dpo.losses import (
    ChosenAnchorLoss,
    CombinedLoss,
    ConditionalPreferenceLoss,
    HingeLoss,
    IPOLoss,
    RobustDPOLoss,
    RPOLoss,
    SFTLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)


def _nls(x: float) -> float:
    """-log(sigmoid(x)) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# The batch of tests/test_losses.py, plus lengths and augmented-image scores:
#   chosen log-ratios   pi - ref = (-10 + 11, -5 + 5, -20 + 22) = (1, 0, 2)
#   rejected log-ratios pi - ref = (-12 + 11, -4 + 5, -30 + 25) = (-1, 1, -5)
#   Delta = chosen - rejected     = (2, -1, 7); with beta 0.1, h = (0.2, -0.1, 0.7)
POLICY_CHOSEN = [-10.0, -5.0, -20.0]
POLICY_REJECTED = [-12.0, -4.0, -30.0]
REFERENCE_CHOSEN = [-11.0, -5.0, -22.0]
REFERENCE_REJECTED = [-11.0, -5.0, -25.0]
H = [0.2, -0.1, 0.7]
CHOSEN_LENGTHS = [4, 2, 5]
REJECTED_LENGTHS = [2, 5, 10]
# Chosen answer on the augmented image: policy and reference.
#   aug log-ratios pi - ref = (-14 + 12, -5 + 6, -21 + 21) = (-2, 1, 0)
POLICY_CHOSEN_AUG = [-14.0, -5.0, -21.0]
REFERENCE_CHOSEN_AUG = [-12.0, -6.0, -21.0]


def _batch() -> tuple[torch.Tensor, ...]:
    return (
        _t(POLICY_CHOSEN),
        _t(POLICY_REJECTED),
        _t(REFERENCE_CHOSEN),
        _t(REFERENCE_REJECTED),
    )


def _extras() -> dict[str, torch.Tensor]:
    return {
        "chosen_lengths": torch.tensor(CHOSEN_LENGTHS),
        "rejected_lengths": torch.tensor(REJECTED_LENGTHS),
        "policy_chosen_aug_logps": _t(POLICY_CHOSEN_AUG),
        "reference_chosen_aug_logps": _t(REFERENCE_CHOSEN_AUG),
    }


def _approx(values: list[float], abs: float = 1e-6):
    return pytest.approx(values, abs=abs)


# ---------------------------------------------------------------- robust DPO


def test_robust_hand_values():
    # eps = 0.2: ((1 - 0.2) * -log s(h) - 0.2 * -log s(-h)) / (1 - 0.4)
    # ex 0: (0.8 * 0.5981389 - 0.2 * 0.7981389) / 0.6 = (0.4785111 - 0.1596278) / 0.6 = 0.5314722
    out = RobustDPOLoss(beta=0.1, label_smoothing=0.2)(*_batch())
    expected = [(0.8 * _nls(h) - 0.2 * _nls(-h)) / 0.6 for h in H]
    assert expected == _approx([0.5314722027, 0.7777299934, 0.1698527156], abs=1e-9)
    assert out.losses.tolist() == _approx(expected)
    assert out.loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    # rewards are DPO's
    assert out.chosen_rewards.tolist() == _approx([0.1, 0.0, 0.2])
    assert out.rejected_rewards.tolist() == _approx([-0.1, 0.1, -0.5])


def test_robust_without_smoothing_is_sigmoid_dpo():
    out = RobustDPOLoss(beta=0.1, label_smoothing=0.0)(*_batch())
    assert out.losses.tolist() == _approx([0.5981388694, 0.7443966601, 0.4031860489])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_robust_is_log2_when_policy_equals_reference(eps):
    # (-(1-e) log 1/2 + e log 1/2) / (1 - 2e) = ln 2 * (1 - 2e) / (1 - 2e)
    chosen, rejected = _t(POLICY_CHOSEN), _t(POLICY_REJECTED)
    out = RobustDPOLoss(beta=0.1, label_smoothing=eps)(chosen, rejected, chosen, rejected)
    # float32: dividing by 1 - 2e = 0.2 magnifies the rounding of ln 2 five times
    assert out.losses.tolist() == _approx([math.log(2)] * 3, abs=1e-6)


# ---------------------------------------------------------------- IPO


def test_ipo_hand_values():
    # per-token log-ratios: chosen (1/4, 0/2, 2/5) = (0.25, 0, 0.4)
    #                       rejected (-1/2, 1/5, -5/10) = (-0.5, 0.2, -0.5)
    # normalised margin = (0.75, -0.2, 0.9); beta 0.1 -> target 1 / 0.2 = 5
    # losses = (0.75 - 5)^2, (-0.2 - 5)^2, (0.9 - 5)^2 = 18.0625, 27.04, 16.81
    out = IPOLoss(beta=0.1)(*_batch(), **_extras())
    assert out.losses.tolist() == _approx([18.0625, 27.04, 16.81], abs=1e-4)
    assert out.loss.item() == pytest.approx((18.0625 + 27.04 + 16.81) / 3, abs=1e-4)
    # beta 0.5 -> target 1: (-0.25)^2, (-1.2)^2, (-0.1)^2
    out = IPOLoss(beta=0.5)(*_batch(), **_extras())
    assert out.losses.tolist() == _approx([0.0625, 1.44, 0.01])
    # rewards are DPO's, on SUMMED log-probs (as TRL reports them)
    assert out.chosen_rewards.tolist() == _approx([0.5, 0.0, 1.0])
    assert out.rejected_rewards.tolist() == _approx([-0.5, 0.5, -2.5])


def test_ipo_gradient_hand_values():
    # d/d(pi_w) (m - 1/(2b))^2 = 2 (m - 1/(2b)) / |y_w|; beta 0.5, mean over 3:
    # chosen: 2 * (-0.25, -1.2, -0.1) / (4, 2, 5) / 3; rejected: the negative, over (2, 5, 10)
    policy_chosen = _t(POLICY_CHOSEN).requires_grad_()
    policy_rejected = _t(POLICY_REJECTED).requires_grad_()
    out = IPOLoss(beta=0.5)(policy_chosen, policy_rejected, *_batch()[2:], **_extras())
    out.loss.backward()
    assert policy_chosen.grad.tolist() == _approx([-0.5 / 12, -2.4 / 6, -0.2 / 15])
    assert policy_rejected.grad.tolist() == _approx([0.5 / 6, 2.4 / 15, 0.2 / 30])


def test_ipo_zero_length_counts_as_one():
    # An empty response has log-prob 0 and log-ratio 0; its length is clamped to 1 (TRL).
    zeros = torch.zeros(1)
    out = IPOLoss(beta=0.5)(
        _t([-3.0]),
        zeros,
        _t([-4.0]),
        zeros,
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([0]),
    )
    # margin = (-3 + 4) / 2 - 0 / 1 = 0.5; (0.5 - 1)^2 = 0.25
    assert out.losses.tolist() == _approx([0.25])


# ---------------------------------------------------------------- hinge


def test_hinge_hand_values():
    # beta 0.1: relu(1 - h) = (0.8, 1.1, 0.3)
    out = HingeLoss(beta=0.1)(*_batch())
    assert out.losses.tolist() == _approx([0.8, 1.1, 0.3])
    # beta 0.5: beta * Delta = (1.0, -0.5, 3.5) -> relu(0, 1.5, -2.5) = (0, 1.5, 0)
    out = HingeLoss(beta=0.5)(*_batch())
    assert out.losses.tolist() == _approx([0.0, 1.5, 0.0])
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6)


def test_hinge_satisfied_pairs_have_no_gradient():
    policy_chosen = _t(POLICY_CHOSEN).requires_grad_()
    out = HingeLoss(beta=0.5)(policy_chosen, *_batch()[1:])
    out.loss.backward()
    # only ex 1 is inside the margin: d/d(pi_w) (1 - beta Delta) / 3 = -0.5 / 3
    assert policy_chosen.grad.tolist() == _approx([0.0, -0.5 / 3, 0.0])


def test_hinge_is_one_when_policy_equals_reference():
    chosen, rejected = _t(POLICY_CHOSEN), _t(POLICY_REJECTED)
    assert HingeLoss(beta=0.1)(chosen, rejected, chosen, rejected).losses.tolist() == [1.0] * 3


# ---------------------------------------------------------------- SFT and RPO


def test_sft_token_mean_is_trl_batch_mean():
    # TRL: mean NLL over ALL chosen tokens of the batch = (10 + 5 + 20) / (4 + 2 + 5) = 35 / 11
    out = SFTLoss()(*_batch(), chosen_lengths=torch.tensor(CHOSEN_LENGTHS))
    assert out.losses.tolist() == _approx([35 / 11] * 3)
    assert out.loss.item() == pytest.approx(35 / 11, abs=1e-6)


def test_sft_sequence_mean():
    # per answer: 10/4, 5/2, 20/5 = 2.5, 2.5, 4.0; mean 3.0
    out = SFTLoss(reduction="sequence")(*_batch(), chosen_lengths=torch.tensor(CHOSEN_LENGTHS))
    assert out.losses.tolist() == _approx([2.5, 2.5, 4.0])
    assert out.loss.item() == pytest.approx(3.0, abs=1e-6)


def test_sft_empty_answer_adds_no_tokens():
    # rows (-6 over 3 tokens), (0 over 0 tokens): token mean 6 / 3 = 2, not 6 / 4
    out = SFTLoss()(_t([-6.0, 0.0]), _t([-1.0, -1.0]), chosen_lengths=torch.tensor([3, 0]))
    assert out.loss.item() == pytest.approx(2.0, abs=1e-6)


def test_sft_needs_no_reference_and_reports_cpo_rewards():
    loss = SFTLoss(beta=0.1)
    assert not loss.needs_reference
    out = loss(_t(POLICY_CHOSEN), _t(POLICY_REJECTED), chosen_lengths=torch.tensor(CHOSEN_LENGTHS))
    assert out.chosen_rewards.tolist() == _approx([-1.0, -0.5, -2.0])
    assert out.rejected_rewards.tolist() == _approx([-1.2, -0.4, -3.0])


def test_rpo_is_dpo_plus_alpha_nll():
    out = RPOLoss(beta=0.1, alpha=1.0)(*_batch(), chosen_lengths=torch.tensor(CHOSEN_LENGTHS))
    dpo = [0.5981388694, 0.7443966601, 0.4031860489]
    assert out.losses.tolist() == _approx([d + 35 / 11 for d in dpo])
    out = RPOLoss(beta=0.1, alpha=0.5, sft_reduction="sequence")(
        *_batch(), chosen_lengths=torch.tensor(CHOSEN_LENGTHS)
    )
    assert out.losses.tolist() == _approx([dpo[0] + 1.25, dpo[1] + 1.25, dpo[2] + 2.0])
    # rewards are DPO's
    assert out.chosen_rewards.tolist() == _approx([0.1, 0.0, 0.2])


def test_rpo_gradient_hand_values():
    # d/d(pi_w[i]) of mean_i(dpo_i) + alpha * (-sum pi_w / 11) = -beta s(-h_i) / 3 - alpha / 11
    policy_chosen = _t(POLICY_CHOSEN).requires_grad_()
    out = RPOLoss(beta=0.1, alpha=2.0)(
        policy_chosen, *_batch()[1:], chosen_lengths=torch.tensor(CHOSEN_LENGTHS)
    )
    out.loss.backward()
    sigmoid_minus_h = [1 / (1 + math.exp(h)) for h in H]
    assert policy_chosen.grad.tolist() == _approx([-0.1 * s / 3 - 2 / 11 for s in sigmoid_minus_h])


# ---------------------------------------------------------------- SimPO


def test_simpo_hand_values():
    # average log-probs: chosen (-10/4, -5/2, -20/5) = (-2.5, -2.5, -4)
    #                    rejected (-12/2, -4/5, -30/10) = (-6, -0.8, -3)
    # beta 2, gamma 1: 2 * (3.5, -1.7, -1) - 1 = (6, -4.4, -3)
    out = SimPOLoss(beta=2.0, gamma=1.0)(_t(POLICY_CHOSEN), _t(POLICY_REJECTED), **_extras())
    expected = [_nls(6.0), _nls(-4.4), _nls(-3.0)]
    assert expected == _approx([0.0024756851, 4.4122025846, 3.0485873516], abs=1e-9)
    assert out.losses.tolist() == _approx(expected)
    # rewards: beta * average log-prob (TRL's CPO/SimPO convention)
    assert out.chosen_rewards.tolist() == _approx([-5.0, -5.0, -8.0])
    assert out.rejected_rewards.tolist() == _approx([-12.0, -1.6, -6.0])


def test_simpo_ignores_a_reference_if_given():
    with_ref = SimPOLoss()(*_batch(), **_extras())
    without = SimPOLoss()(_t(POLICY_CHOSEN), _t(POLICY_REJECTED), **_extras())
    assert torch.equal(with_ref.losses, without.losses)
    assert torch.equal(with_ref.chosen_rewards, without.chosen_rewards)


def test_simpo_gradient_hand_values():
    # d/d(pi_w) -log s(z) = -s(-z) * beta / |y_w|, z = (6, -4.4, -3); mean over 3
    policy_chosen = _t(POLICY_CHOSEN).requires_grad_()
    out = SimPOLoss(beta=2.0, gamma=1.0)(policy_chosen, _t(POLICY_REJECTED), **_extras())
    out.loss.backward()
    want = [-2.0 / 4 / 3 / (1 + math.exp(6)), -2.0 / 2 / 3 / (1 + math.exp(-4.4))]
    want.append(-2.0 / 5 / 3 / (1 + math.exp(-3)))
    assert policy_chosen.grad.tolist() == _approx(want)


# ---------------------------------------------------------------- mDPO terms


def test_conditional_hand_values():
    # clean log-ratio (1, 0, 2) minus aug log-ratio (-2, 1, 0) = (3, -1, 2); beta 0.1
    out = ConditionalPreferenceLoss(beta=0.1)(*_batch(), **_extras())
    expected = [_nls(0.3), _nls(-0.1), _nls(0.2)]
    assert expected == _approx([0.5543552445, 0.7443966601, 0.5981388694], abs=1e-9)
    assert out.losses.tolist() == _approx(expected)
    # rewards: DPO's, of the chosen and rejected ANSWERS on the clean image
    assert out.chosen_rewards.tolist() == _approx([0.1, 0.0, 0.2])
    assert out.rejected_rewards.tolist() == _approx([-0.1, 0.1, -0.5])


def test_conditional_gradient_pushes_augmented_score_down():
    # d/d(pi_w_aug) -log s(h) = -s(-h) * (-beta) = beta s(-h) > 0; mean over 3
    aug = _t(POLICY_CHOSEN_AUG).requires_grad_()
    extras = {**_extras(), "policy_chosen_aug_logps": aug}
    ConditionalPreferenceLoss(beta=0.1)(*_batch(), **extras).loss.backward()
    want = [0.1 / (1 + math.exp(h)) / 3 for h in (0.3, -0.1, 0.2)]
    assert aug.grad.tolist() == _approx(want)


def test_conditional_is_log2_when_policy_equals_reference():
    chosen, rejected, aug = _t(POLICY_CHOSEN), _t(POLICY_REJECTED), _t(POLICY_CHOSEN_AUG)
    out = ConditionalPreferenceLoss()(
        chosen,
        rejected,
        chosen,
        rejected,
        policy_chosen_aug_logps=aug,
        reference_chosen_aug_logps=aug.clone(),
    )
    assert out.losses.tolist() == _approx([math.log(2)] * 3, abs=1e-7)


def test_anchor_hand_values():
    # beta * chosen log-ratio = (0.1, 0, 0.2)
    out = ChosenAnchorLoss(beta=0.1)(*_batch())
    assert out.losses.tolist() == _approx([0.6443966601, math.log(2), 0.5981388694])
    # delta 1 at equality: -log s(-1) = log(1 + e)
    chosen, rejected = _t(POLICY_CHOSEN), _t(POLICY_REJECTED)
    out = ChosenAnchorLoss(beta=0.1, delta=1.0)(chosen, rejected, chosen, rejected)
    assert out.losses.tolist() == _approx([math.log(1 + math.e)] * 3)


# ---------------------------------------------------------------- CombinedLoss


def test_combined_dpo_plus_conditional():
    loss = CombinedLoss([SigmoidDPOLoss(beta=0.1), ConditionalPreferenceLoss(beta=0.1)], [1.0, 0.5])
    out = loss(*_batch(), **_extras())
    dpo = [0.5981388694, 0.7443966601, 0.4031860489]
    cond = [0.5543552445, 0.7443966601, 0.5981388694]
    expected = [d + 0.5 * c for d, c in zip(dpo, cond, strict=True)]
    assert out.losses.tolist() == _approx(expected)
    assert out.loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert out.chosen_rewards.tolist() == _approx([0.1, 0.0, 0.2])


def test_combined_full_mdpo_and_rewards_from_first_term():
    terms = [SigmoidDPOLoss(), ConditionalPreferenceLoss(), ChosenAnchorLoss()]
    out = CombinedLoss(terms)(*_batch(), **_extras())
    # dpo + conditional + anchor, beta 0.1, weights default to 1
    expected = [
        0.5981388694 + 0.5543552445 + 0.6443966601,
        0.7443966601 + 0.7443966601 + math.log(2),
        0.4031860489 + 0.5981388694 + 0.5981388694,
    ]
    assert out.losses.tolist() == _approx(expected)
    # a reference-free first term reports its own rewards
    simpo_first = CombinedLoss([SimPOLoss(beta=2.0), SigmoidDPOLoss()], [1.0, 1.0])
    out = simpo_first(*_batch(), **_extras())
    assert out.chosen_rewards.tolist() == _approx([-5.0, -5.0, -8.0])
    assert simpo_first.beta == 2.0


def test_combined_nested_and_zero_weight():
    inner = CombinedLoss([SigmoidDPOLoss(), HingeLoss()], [1.0, 2.0])
    outer = CombinedLoss([inner, IPOLoss(beta=0.5)], [1.0, 0.0])
    out = outer(*_batch(), **_extras())
    dpo = [0.5981388694, 0.7443966601, 0.4031860489]
    assert out.losses.tolist() == _approx([dpo[0] + 1.6, dpo[1] + 2.2, dpo[2] + 0.6])
    # a zero-weight term still declares its needs (its inputs are still computed)
    assert outer.needs_lengths


def test_combined_is_a_sum_of_log2_at_step_zero():
    chosen, rejected, aug = _t(POLICY_CHOSEN), _t(POLICY_REJECTED), _t(POLICY_CHOSEN_AUG)
    loss = CombinedLoss([SigmoidDPOLoss(), ConditionalPreferenceLoss()], [1.0, 1.0])
    out = loss(
        chosen,
        rejected,
        chosen,
        rejected,
        policy_chosen_aug_logps=aug,
        reference_chosen_aug_logps=aug,
    )
    assert out.loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)
