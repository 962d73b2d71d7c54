"""The preference-loss interface. Pure PyTorch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PreferenceLossOutput:
    """Per-example losses and implicit rewards; ``loss`` is their batch mean."""

    loss: torch.Tensor  # scalar
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached


class PreferenceLoss(nn.Module, ABC):
    """Base class: maps policy and reference sequence log-probs of a pair to a loss.

    Subclasses implement :meth:`forward`. Rewards follow DPO's convention
    ``r = beta * (log pi(y|x) - log pi_ref(y|x))`` so that every loss reports comparable metrics.
    """

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta

    def rewards(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.beta * (policy_chosen_logps - reference_chosen_logps)
        rejected = self.beta * (policy_rejected_logps - reference_rejected_logps)
        return chosen.detach(), rejected.detach()

    @abstractmethod
    def forward(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
    ) -> PreferenceLossOutput:
        """Per-pair losses (and their mean) from summed response log-probs, shape ``(B,)``."""
