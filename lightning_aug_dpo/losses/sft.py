r"""Supervised (NLL) terms on the chosen answer: alone, or mixed into DPO (RPO). Pure PyTorch.

The NLL is computed from what DPO already has, the summed log-prob :math:`\log\pi(y_w|x)` and the
token count :math:`|y_w|`, so no extra forward is needed. TRL's ``"sft"`` term (and its older
``rpo_alpha``) is the token mean over the whole batch,

.. math::

    \mathrm{NLL}_{tok} = -\frac{\sum_b \log\pi(y_w^{(b)}|x^{(b)})}{\sum_b |y_w^{(b)}|},

which these sums give exactly: the batch's total NLL over its total number of tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_aug_dpo.losses.base import (
    CHOSEN_LENGTHS,
    PreferenceInputs,
    PreferenceLoss,
    check_positive,
)
from lightning_aug_dpo.losses.dpo import SigmoidDPOLoss

SFTReduction = Literal["token", "sequence"]


def chosen_nll(inputs: PreferenceInputs, reduction: SFTReduction) -> torch.Tensor:
    r"""Per-token NLL of the chosen answers on the policy, one value per pair, ``(B,)``.

    ``"token"``: TRL's batch token mean :math:`\mathrm{NLL}_{tok}`, the same value in every row
    (so the batch mean of the rows is exactly TRL's term). ``"sequence"``: each answer's own mean,
    :math:`-\log\pi(y_w|x)/|y_w|` (RPO as written by Pang et al., 2024), whose batch mean
    weighs every answer equally whatever its length.
    """
    logps = inputs.policy_chosen_logps
    lengths = inputs.get(CHOSEN_LENGTHS)
    if reduction == "sequence":
        return -logps / lengths
    if reduction == "token":
        # Raw counts here, not the clamped ones: empty answers add no tokens to the batch total.
        raw = inputs.chosen_lengths.to(logps.dtype)  # type: ignore[union-attr]
        return (-logps.sum() / raw.sum().clamp(min=1.0)).expand_as(logps)
    raise ValueError(f"reduction must be 'token' or 'sequence', got {reduction!r}")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in ("token", "sequence"):
        raise ValueError(
            f"{name} must be 'token' (TRL: mean over all chosen tokens of the batch) or "
            f"'sequence' (mean of each answer's per-token NLL), got {reduction!r}"
        )


class SFTLoss(PreferenceLoss):
    r"""Negative log-likelihood of the chosen answer, per token: :math:`\ell = \mathrm{NLL}`.

    TRL's ``loss_type="sft"``; meant as a term of a
    :class:`~lightning_aug_dpo.losses.CombinedLoss` (e.g. ``[SigmoidDPOLoss, SFTLoss]`` with
    weights ``[1.0, alpha]`` is TRL's ``loss_type=["sigmoid", "sft"]``,
    ``loss_weights=[1.0, alpha]``). It needs no reference; ``beta`` only scales the reported
    rewards.

    Args:
        beta: scale of the reported implicit rewards.
        reduction: ``"token"`` (TRL, the default) or ``"sequence"``; see :func:`chosen_nll`.
    """

    needs = frozenset({CHOSEN_LENGTHS})

    def __init__(self, beta: float = 0.1, reduction: SFTReduction = "token") -> None:
        super().__init__(beta)
        _check_reduction("reduction", reduction)
        self.reduction = reduction

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        return chosen_nll(inputs, self.reduction)


class RPOLoss(SigmoidDPOLoss):
    r"""Sigmoid DPO plus an SFT term on the chosen answer (RPO, Pang et al., 2024).

    .. math::

        \ell = \ell_{DPO}(h) + \alpha\,\mathrm{NLL}

    With the default ``sft_reduction="token"`` this is TRL's ``rpo_alpha`` (TRL < 1.0) and
    ``loss_type=["sigmoid", "sft"], loss_weights=[1.0, alpha]`` (TRL 1.x): the NLL is the token
    mean over the batch's chosen answers, on the policy. The DPO part keeps cDPO label
    smoothing; rewards are DPO's.

    Args:
        beta: inverse temperature of the implicit reward.
        alpha: weight of the NLL term, > 0 (the RPO paper and TRL's docs use 1.0).
        label_smoothing: cDPO label-flip probability, in [0, 0.5).
        sft_reduction: ``"token"`` (TRL) or ``"sequence"``; see :func:`chosen_nll`.
    """

    needs = SigmoidDPOLoss.needs | {CHOSEN_LENGTHS}

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 1.0,
        label_smoothing: float = 0.0,
        sft_reduction: SFTReduction = "token",
    ) -> None:
        super().__init__(beta, label_smoothing)
        check_positive("alpha", alpha, "it weighs the NLL term; RPO uses 1.0 (or SigmoidDPOLoss)")
        _check_reduction("sft_reduction", sft_reduction)
        self.alpha = alpha
        self.sft_reduction = sft_reduction

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        return super().pair_losses(inputs) + self.alpha * chosen_nll(inputs, self.sft_reduction)
