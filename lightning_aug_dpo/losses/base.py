r"""The preference-loss interface. Pure PyTorch: nothing here imports Lightning.

A :class:`PreferenceLoss` maps per-pair SEQUENCE log-probs (sums over response tokens, TRL's
convention) to per-pair losses. Four inputs are positional, as in every DPO implementation::

    loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps)

and a loss may need more, passed by keyword. Which ones it needs is declared in :attr:`needs`, so
the training module computes only those (no reference forward for SimPO, an extra forward of the
chosen answer on the augmented image only for the mDPO term):

========================================  ======================================================
``reference_chosen_logps``                :math:`\log\pi_{ref}(y_w|x, I)`, clean image, no grad
``reference_rejected_logps``              :math:`\log\pi_{ref}(y_l|x, I)`, clean image, no grad
``chosen_lengths``                        :math:`|y_w|`, the number of response tokens summed
``rejected_lengths``                      :math:`|y_l|`
``policy_chosen_aug_logps``               :math:`\log\pi(y_w|x, I_{aug})`, with grad
``reference_chosen_aug_logps``            :math:`\log\pi_{ref}(y_w|x, I_{aug})`, no grad
========================================  ======================================================

All tensors are ``(B,)``. A loss called without an input it needs raises a ``ValueError`` that
names the input.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch
from torch import nn

REFERENCE_CHOSEN = "reference_chosen_logps"
REFERENCE_REJECTED = "reference_rejected_logps"
CHOSEN_LENGTHS = "chosen_lengths"
REJECTED_LENGTHS = "rejected_lengths"
POLICY_CHOSEN_AUG = "policy_chosen_aug_logps"
REFERENCE_CHOSEN_AUG = "reference_chosen_aug_logps"

#: Every optional input a loss may declare in :attr:`PreferenceLoss.needs`.
OPTIONAL_INPUTS: tuple[str, ...] = (
    REFERENCE_CHOSEN,
    REFERENCE_REJECTED,
    CHOSEN_LENGTHS,
    REJECTED_LENGTHS,
    POLICY_CHOSEN_AUG,
    REFERENCE_CHOSEN_AUG,
)
REFERENCE_INPUTS = frozenset({REFERENCE_CHOSEN, REFERENCE_REJECTED, REFERENCE_CHOSEN_AUG})
LENGTH_INPUTS = frozenset({CHOSEN_LENGTHS, REJECTED_LENGTHS})
AUGMENTED_INPUTS = frozenset({POLICY_CHOSEN_AUG, REFERENCE_CHOSEN_AUG})


@dataclass
class PreferenceLossOutput:
    """Per-example losses and implicit rewards; ``loss`` is their batch mean."""

    loss: torch.Tensor  # scalar
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached


@dataclass(frozen=True)
class PreferenceInputs:
    """Everything a loss may read; see the module docstring for what each field means."""

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    policy_chosen_aug_logps: torch.Tensor | None = None
    reference_chosen_aug_logps: torch.Tensor | None = None

    def get(self, name: str) -> torch.Tensor:
        """The input ``name``; lengths come back as floats of the log-probs' dtype, at least 1.

        Lengths are clamped to 1 as TRL does: an empty response has log-prob 0, so its
        length-normalised log-prob is 0 too instead of 0/0.
        """
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{name} is None but the loss needs it")
        if name in LENGTH_INPUTS:
            return value.to(self.policy_chosen_logps.dtype).clamp(min=1.0)
        return value


def check_positive(name: str, value: float, hint: str) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite number > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}; {hint}")


def check_label_smoothing(value: float) -> None:
    """Label smoothing is the probability that a label is flipped: [0, 0.5)."""
    if not 0.0 <= value < 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5), got {value}; it is the probability that a "
            "preference label is flipped (0 disables it, 0.1 is a common choice)"
        )


class PreferenceLoss(nn.Module, ABC):
    r"""Base class: maps sequence log-probs of preference pairs to per-pair losses.

    Subclasses set :attr:`needs` and implement :meth:`pair_losses`; :meth:`forward` validates the
    inputs, and reports rewards in DPO's convention
    :math:`r = \beta\,(\log\pi(y|x) - \log\pi_{ref}(y|x))` (detached) so that every loss logs
    comparable metrics. A loss without a reference model overrides :meth:`rewards`.

    Attributes:
        needs: names of the optional inputs (see :data:`OPTIONAL_INPUTS`) this loss reads.
            A class attribute for plain losses; an instance attribute where it depends on the
            configuration (:class:`~lightning_aug_dpo.losses.CombinedLoss`).

    Args:
        beta: inverse temperature of the implicit reward, > 0 (SeVa uses 0.1).
    """

    needs: frozenset[str] = frozenset({REFERENCE_CHOSEN, REFERENCE_REJECTED})

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        check_positive("beta", beta, "DPO-style losses usually take beta in [0.01, 0.5], e.g. 0.1")
        self.beta = beta

    # What the training module asks before deciding which forwards to run.
    @property
    def needs_reference(self) -> bool:
        """Whether any reference-model log-prob is read (else skip the reference forward)."""
        return bool(self.needs & REFERENCE_INPUTS)

    @property
    def needs_lengths(self) -> bool:
        return bool(self.needs & LENGTH_INPUTS)

    @property
    def needs_augmented(self) -> bool:
        """Whether the chosen answer must also be scored on the augmented image."""
        return bool(self.needs & AUGMENTED_INPUTS)

    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor | None = None,
        reference_rejected_logps: torch.Tensor | None = None,
        *,
        chosen_lengths: torch.Tensor | None = None,
        rejected_lengths: torch.Tensor | None = None,
        policy_chosen_aug_logps: torch.Tensor | None = None,
        reference_chosen_aug_logps: torch.Tensor | None = None,
    ) -> PreferenceLossOutput:
        """Per-pair losses, their mean and the rewards; every tensor is ``(B,)``."""
        inputs = PreferenceInputs(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            chosen_lengths,
            rejected_lengths,
            policy_chosen_aug_logps,
            reference_chosen_aug_logps,
        )
        self.check_inputs(inputs)
        losses = self.pair_losses(inputs)
        chosen, rejected = self.rewards(inputs)
        return PreferenceLossOutput(losses.mean(), losses, chosen, rejected)

    def check_inputs(self, inputs: PreferenceInputs) -> None:
        """Every needed input is present, and every given tensor has the batch's shape."""
        name = type(self).__name__
        for key in OPTIONAL_INPUTS:
            if key in self.needs and getattr(inputs, key) is None:
                raise ValueError(
                    f"{name} needs {key} but it was not passed; pass it as a keyword argument "
                    f"(a loss's `needs` attribute lists its inputs: {sorted(self.needs)})"
                )
        shape = inputs.policy_chosen_logps.shape
        if len(shape) != 1:
            raise ValueError(
                f"policy_chosen_logps must have shape (B,), got {tuple(shape)}; pass sequence "
                "log-probs summed over response tokens, one per pair"
            )
        for field in fields(inputs):
            value = getattr(inputs, field.name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"{field.name} has shape {tuple(value.shape)} but policy_chosen_logps has "
                    f"{tuple(shape)}; every input holds one value per pair"
                )

    @abstractmethod
    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        """Per-pair losses ``(B,)``; :meth:`forward` has checked the inputs in :attr:`needs`."""

    def rewards(self, inputs: PreferenceInputs) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Detached implicit rewards :math:`\beta(\log\pi - \log\pi_{ref})` of chosen, rejected.

        Without a reference (a reference-free loss called without one), TRL's CPO convention
        :math:`\beta\log\pi` is reported instead.
        """
        chosen, rejected = inputs.policy_chosen_logps, inputs.policy_rejected_logps
        if inputs.reference_chosen_logps is not None:
            chosen = chosen - inputs.reference_chosen_logps
        if inputs.reference_rejected_logps is not None:
            rejected = rejected - inputs.reference_rejected_logps
        return (self.beta * chosen).detach(), (self.beta * rejected).detach()


def dpo_margin(inputs: PreferenceInputs) -> torch.Tensor:
    r"""Unscaled DPO logits :math:`\Delta = (\log\pi_w - \log\pi_l) - (\log\pi^{ref}_w -
    \log\pi^{ref}_l)`, ``(B,)``; the policy margin minus the reference margin."""
    policy_margin = inputs.policy_chosen_logps - inputs.policy_rejected_logps
    reference_margin = inputs.get(REFERENCE_CHOSEN) - inputs.get(REFERENCE_REJECTED)
    return policy_margin - reference_margin
