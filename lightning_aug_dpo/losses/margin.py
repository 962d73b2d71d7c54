r"""Margin losses on the DPO logit: IPO (squared) and SLiC-style hinge. Pure PyTorch.

Notation as in :mod:`lightning_aug_dpo.losses.dpo`: :math:`\Delta` is the policy margin minus
the reference margin of summed sequence log-probs, and :math:`|y|` a response's token count.
"""

from __future__ import annotations

import torch

from lightning_aug_dpo.losses.base import (
    CHOSEN_LENGTHS,
    REFERENCE_CHOSEN,
    REFERENCE_REJECTED,
    REJECTED_LENGTHS,
    PreferenceInputs,
    PreferenceLoss,
    dpo_margin,
)


class IPOLoss(PreferenceLoss):
    r"""Identity Preference Optimisation (Azar et al., 2024), exactly TRL's ``loss_type="ipo"``.

    IPO regresses the log-ratio margin onto :math:`1/(2\beta)` (Eq. 17 of the paper, where
    :math:`\beta` is the regulariser :math:`\tau`). As in TRL (checked against TRL 1.16), each
    response's log-ratio is first divided by its token count, so that the target does not
    depend on answer length (TRL notes that the IPO authors confirm this is what the paper's
    results used):

    .. math::

        \bar\Delta = \frac{\log\pi(y_w|x) - \log\pi_{ref}(y_w|x)}{|y_w|}
                   - \frac{\log\pi(y_l|x) - \log\pi_{ref}(y_l|x)}{|y_l|},
        \qquad
        \ell = \Bigl(\bar\Delta - \frac{1}{2\beta}\Bigr)^2 .

    Lengths are clamped to at least 1. Note that :math:`\beta` here sets the TARGET margin,
    :math:`1/(2\beta)` nats per token (beta 0.1 -> 5, beta 0.5 -> 1), rather than a temperature.
    Rewards are reported in DPO's convention (summed, not normalised), as TRL does.

    Args:
        beta: IPO's regulariser :math:`\tau`, > 0.
    """

    needs = frozenset({REFERENCE_CHOSEN, REFERENCE_REJECTED, CHOSEN_LENGTHS, REJECTED_LENGTHS})

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        chosen = inputs.policy_chosen_logps - inputs.get(REFERENCE_CHOSEN)
        rejected = inputs.policy_rejected_logps - inputs.get(REFERENCE_REJECTED)
        margin = chosen / inputs.get(CHOSEN_LENGTHS) - rejected / inputs.get(REJECTED_LENGTHS)
        return (margin - 1 / (2 * self.beta)) ** 2


class HingeLoss(PreferenceLoss):
    r"""Hinge loss on the DPO logit (SLiC-HF, Zhao et al., 2023), TRL's ``loss_type="hinge"``.

    .. math::

        \ell = \max(0,\; 1 - \beta\,\Delta)

    with :math:`\Delta` on summed log-probs, the reference margin included (TRL's form; SLiC's
    calibration loss with margin :math:`1/\beta`). Pairs whose scaled margin already exceeds 1
    contribute neither loss nor gradient. At :math:`\Delta = 0` the loss is 1.

    Args:
        beta: inverse of the required margin, > 0.
    """

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        return torch.relu(1 - self.beta * dpo_margin(inputs))
