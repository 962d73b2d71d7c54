r"""Weighted sums of preference losses, e.g. DPO + mDPO's conditional term. Pure PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_aug_dpo.losses.base import PreferenceInputs, PreferenceLoss


class CombinedLoss(PreferenceLoss):
    r"""A weighted sum of preference losses, pair by pair:

    .. math::

        \ell = \sum_k w_k\,\ell_k

    so the batch loss is :math:`\sum_k w_k\,\mathrm{mean}(\ell_k)`, as TRL 1.x combines
    ``loss_type=[...]`` with ``loss_weights=[...]``. :attr:`needs` is the union of the terms'
    needs, so the training module computes every input any term reads. Rewards are reported
    by the FIRST term (put the DPO term first to log DPO's rewards).

    From LightningCLI YAML::

        loss:
          class_path: lightning_aug_dpo.losses.CombinedLoss
          init_args:
            losses:
              - class_path: lightning_aug_dpo.losses.SigmoidDPOLoss
                init_args: {beta: 0.1}
              - class_path: lightning_aug_dpo.losses.ConditionalPreferenceLoss
                init_args: {beta: 0.1}
            weights: [1.0, 1.0]

    Args:
        losses: the terms, at least one (a term may itself be a ``CombinedLoss``).
        weights: one finite weight >= 0 per term; ``None`` weighs every term 1.0.
    """

    def __init__(self, losses: list[PreferenceLoss], weights: list[float] | None = None) -> None:
        if not losses:
            raise ValueError("losses must hold at least one PreferenceLoss, got an empty list")
        for i, loss in enumerate(losses):
            if not isinstance(loss, PreferenceLoss):
                raise ValueError(
                    f"losses[{i}] must be a PreferenceLoss, got {type(loss).__name__}; in YAML "
                    "give each term a class_path such as lightning_aug_dpo.losses.SigmoidDPOLoss"
                )
        if weights is None:
            weights = [1.0] * len(losses)
        if len(weights) != len(losses):
            raise ValueError(
                f"weights must have one entry per loss: got {len(weights)} weights for "
                f"{len(losses)} losses"
            )
        for i, weight in enumerate(weights):
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(
                    f"weights[{i}] must be a finite number >= 0, got {weight}; drop the term "
                    "instead of giving it a negative weight"
                )
        # The first term's beta scales the reported rewards, as the first term reports them.
        super().__init__(losses[0].beta)
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]
        # An instance attribute: what this loss needs depends on its terms.
        self.needs = frozenset().union(*(loss.needs for loss in losses))

    @property
    def terms(self) -> list[tuple[PreferenceLoss, float]]:
        """``(loss, weight)`` pairs, in order."""
        return list(zip(self.losses, self.weights, strict=True))  # type: ignore[arg-type]

    def pair_losses(self, inputs: PreferenceInputs) -> torch.Tensor:
        # forward() has checked the union of the needs, so each term's inputs are all there.
        total = None
        for loss, weight in self.terms:
            term = weight * loss.pair_losses(inputs)
            total = term if total is None else total + term
        return total  # type: ignore[return-value]

    def rewards(self, inputs: PreferenceInputs) -> tuple[torch.Tensor, torch.Tensor]:
        first: PreferenceLoss = self.losses[0]  # type: ignore[assignment]
        return first.rewards(inputs)
