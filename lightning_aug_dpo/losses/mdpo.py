r"""mDPO's extra terms (Wang et al., 2024, "mDPO: Conditional Preference Optimization for
Multimodal Large Language Models"). Pure PyTorch.

Plain DPO on (clean answer, augmented answer) pairs can be satisfied from the text alone. mDPO
adds a preference over IMAGES for a fixed answer: the chosen answer should become more likely on
the clean image :math:`I` than on the corrupted one :math:`I_{aug}` (here SeVa's augmented image),
plus an anchor that keeps the chosen reward from falling. The full mDPO objective is

.. math::

    \ell_{mDPO} = \ell_{DPO} + \ell_{cond} + \ell_{anchor}

with one :math:`\beta`; in LightningCLI YAML::

    loss:
      class_path: lightning_aug_dpo.losses.CombinedLoss
      init_args:
        losses:
          - {class_path: lightning_aug_dpo.losses.SigmoidDPOLoss, init_args: {beta: 0.1}}
          - {class_path: lightning_aug_dpo.losses.ConditionalPreferenceLoss, init_args: {beta: 0.1}}
          - {class_path: lightning_aug_dpo.losses.ChosenAnchorLoss, init_args: {beta: 0.1}}
        weights: [1.0, 1.0, 1.0]

All log-probs are sums over the chosen answer's tokens; :math:`\log\pi(y_w|x, I)` is the usual
``policy_chosen_logps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_aug_dpo.losses.base import (
    POLICY_CHOSEN_AUG,
    REFERENCE_CHOSEN,
    REFERENCE_CHOSEN_AUG,
    REFERENCE_REJECTED,
    PreferenceInputs,
    PreferenceLoss,
)


class ConditionalPreferenceLoss(PreferenceLoss):
    r"""mDPO's image-conditional preference: the chosen answer, clean image versus augmented.

    .. math::

        h_{cond} = \beta\,\bigl[(\log\pi(y_w|x, I) - \log\pi_{ref}(y_w|x, I))
                              - (\log\pi(y_w|x, I_{aug}) - \log\pi_{ref}(y_w|x, I_{aug}))\bigr]

        \ell = -\log\sigma(h_{cond})

    This is DPO with the image, not the answer, as the thing preferred; it is ``ln 2`` when the
    policy equals the reference. It needs the chosen answer scored on the augmented image by the
    policy (``policy_chosen_aug_logps``, with grad) and by the reference
    (``reference_chosen_aug_logps``). Rewards are DPO's, of the chosen and rejected ANSWERS on the
    clean image, so that metrics stay comparable across losses (hence it also lists
    ``reference_rejected_logps``).

    Args:
        beta: inverse temperature, > 0 (mDPO uses the DPO term's beta, 0.1).
    """

    needs = frozenset(
        {REFERENCE_CHOSEN, REFERENCE_REJECTED, POLICY_CHOSEN_AUG, REFERENCE_CHOSEN_AUG}
    )

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        clean = inputs.policy_chosen_logps - inputs.get(REFERENCE_CHOSEN)
        augmented = inputs.get(POLICY_CHOSEN_AUG) - inputs.get(REFERENCE_CHOSEN_AUG)
        return -F.logsigmoid(self.beta * (clean - augmented))


class ChosenAnchorLoss(PreferenceLoss):
    r"""mDPO's anchored preference: the chosen answer's implicit reward should exceed
    :math:`\delta`.

    .. math::

        \ell = -\log\sigma\bigl(\beta\,(\log\pi(y_w|x, I) - \log\pi_{ref}(y_w|x, I)) - \delta\bigr)

    DPO only constrains the reward MARGIN, so both rewards may fall together (the chosen answer
    becoming less likely); the anchor pushes the chosen reward up. mDPO uses
    :math:`\delta = 0`. It is ``softplus(delta)`` (``ln 2`` at :math:`\delta = 0`) when the
    policy equals the reference.

    Args:
        beta: inverse temperature, > 0.
        delta: the anchor, a finite number (mDPO: 0).
    """

    needs = frozenset({REFERENCE_CHOSEN, REFERENCE_REJECTED})

    def __init__(self, beta: float = 0.1, delta: float = 0.0) -> None:
        super().__init__(beta)
        if not math.isfinite(delta):
            raise ValueError(f"delta must be a finite number, got {delta}; mDPO uses 0.0")
        self.delta = delta

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        reward = self.beta * (inputs.policy_chosen_logps - inputs.get(REFERENCE_CHOSEN))
        return -F.logsigmoid(reward - self.delta)
