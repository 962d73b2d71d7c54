r"""Direct Preference Optimisation, sigmoid and robust forms. Pure PyTorch.

Both losses are functions of the scaled DPO logit, with sequence log-probs summed over response
tokens,

.. math::

    h = \beta\,\Delta,\qquad
    \Delta = [\log\pi(y_w|x) - \log\pi(y_l|x)] - [\log\pi_{ref}(y_w|x) - \log\pi_{ref}(y_l|x)].

When the policy equals the reference, :math:`h = 0` whatever the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_aug_dpo.losses.base import (
    PreferenceInputs,
    PreferenceLoss,
    check_label_smoothing,
    dpo_margin,
)


class SigmoidDPOLoss(PreferenceLoss):
    r"""DPO (Rafailov et al., 2023) with optional label smoothing (conservative DPO, cDPO).

    .. math::

        \ell = -(1-\varepsilon)\,\log\sigma(h) - \varepsilon\,\log\sigma(-h)

    where :math:`\varepsilon` is ``label_smoothing``. At :math:`h = 0`, :math:`\ell = \ln 2`
    exactly. With :math:`\varepsilon = 0` this is TRL's ``loss_type="sigmoid"``; the smoothed form
    is cDPO as in TRL before 1.x (TRL 1.16's ``"sigmoid"`` ignores ``label_smoothing``).

    Args:
        beta: inverse temperature of the implicit reward (SeVa uses 0.1).
        label_smoothing: probability that a preference label is flipped, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__(beta)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        h = self.beta * dpo_margin(inputs)
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)


class RobustDPOLoss(PreferenceLoss):
    r"""Robust DPO (Chowdhury et al., 2024): unbiased under labels flipped with rate
    :math:`\varepsilon`.

    .. math::

        \ell = \frac{-(1-\varepsilon)\,\log\sigma(h) + \varepsilon\,\log\sigma(-h)}
                    {1 - 2\varepsilon}

    This is TRL's ``loss_type="robust"`` (with ``label_smoothing`` = :math:`\varepsilon`). Unlike
    cDPO the flipped term enters with a PLUS sign: the estimator removes the bias of noisy labels
    in expectation, so it is not bounded below by 0 per pair. At :math:`\varepsilon = 0` it is
    sigmoid DPO; at :math:`h = 0` it is :math:`\ln 2` for every :math:`\varepsilon`.

    Args:
        beta: inverse temperature of the implicit reward.
        label_smoothing: the assumed label-flip rate :math:`\varepsilon`, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1) -> None:
        super().__init__(beta)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        h = self.beta * dpo_margin(inputs)
        eps = self.label_smoothing
        return (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
