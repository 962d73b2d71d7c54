"""Direct Preference Optimisation, sigmoid form (Rafailov et al., 2023). Pure PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_aug_dpo.losses.base import PreferenceLoss, PreferenceLossOutput


class SigmoidDPOLoss(PreferenceLoss):
    r"""DPO loss with optional label smoothing (conservative DPO).

    With sequence log-probs summed over response tokens,

    .. math::

        h = \beta\,[(\log\pi(y_w|x) - \log\pi(y_l|x))
                   - (\log\pi_{ref}(y_w|x) - \log\pi_{ref}(y_l|x))]

        \ell = -(1-\varepsilon)\,\log\sigma(h) - \varepsilon\,\log\sigma(-h)

    where :math:`\varepsilon` is ``label_smoothing``. When the policy equals the reference,
    :math:`h = 0` and :math:`\ell = \ln 2` exactly, whatever the data.

    Args:
        beta: inverse temperature of the implicit reward (SeVa uses 0.1).
        label_smoothing: probability that a preference label is flipped, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__(beta)
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> PreferenceLossOutput:
        policy_margin = policy_chosen_logps - policy_rejected_logps
        reference_margin = reference_chosen_logps - reference_rejected_logps
        h = self.beta * (policy_margin - reference_margin)
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
        chosen, rejected = self.rewards(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
        )
        return PreferenceLossOutput(losses.mean(), losses, chosen, rejected)
