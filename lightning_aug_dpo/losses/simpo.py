r"""SimPO: reference-free, length-normalised preference optimisation. Pure PyTorch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_aug_dpo.losses.base import (
    CHOSEN_LENGTHS,
    REJECTED_LENGTHS,
    PreferenceInputs,
    PreferenceLoss,
)


class SimPOLoss(PreferenceLoss):
    r"""Simple Preference Optimisation (Meng et al., 2024); no reference model.

    The implicit reward is the policy's AVERAGE per-token log-prob, and a target margin
    :math:`\gamma` separates chosen from rejected:

    .. math::

        \ell = -\log\sigma\Bigl(\frac{\beta}{|y_w|}\log\pi(y_w|x)
                               - \frac{\beta}{|y_l|}\log\pi(y_l|x) - \gamma\Bigr)

    This equals TRL's ``CPOTrainer`` with ``loss_type="simpo"`` (``simpo_gamma`` = :math:`\gamma`,
    no label smoothing, ``cpo_alpha=0``). Rewards are reported as TRL's CPO/SimPO trainer does,
    :math:`\beta\log\pi(y|x)/|y|`, so the reward margin is the loss's argument plus
    :math:`\gamma`. Lengths are clamped to at least 1. The training module can skip the
    reference forward: :attr:`needs_reference` is False.

    Args:
        beta: reward scale, > 0; the paper uses 2.0 to 2.5 (much larger than DPO's).
        gamma: target reward margin, >= 0; the paper's Llama-3 settings use
            :math:`\gamma/\beta = 0.5`, i.e. 1.0 with ``beta=2.0``.
    """

    needs = frozenset({CHOSEN_LENGTHS, REJECTED_LENGTHS})

    def __init__(self, beta: float = 2.0, gamma: float = 1.0) -> None:
        super().__init__(beta)
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(
                f"gamma must be a finite number >= 0, got {gamma}; it is SimPO's target reward "
                "margin (the paper uses gamma = 0.5 * beta, e.g. 1.0 with beta = 2.0)"
            )
        self.gamma = gamma

    def rewards(self, inputs: PreferenceInputs) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.beta * inputs.policy_chosen_logps / inputs.get(CHOSEN_LENGTHS)
        rejected = self.beta * inputs.policy_rejected_logps / inputs.get(REJECTED_LENGTHS)
        return chosen.detach(), rejected.detach()

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        chosen = inputs.policy_chosen_logps / inputs.get(CHOSEN_LENGTHS)
        rejected = inputs.policy_rejected_logps / inputs.get(REJECTED_LENGTHS)
        return -F.logsigmoid(self.beta * (chosen - rejected) - self.gamma)
