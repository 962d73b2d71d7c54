"""Preference losses and log-prob maths. Nothing here imports Lightning."""

from lightning_aug_dpo.losses.base import PreferenceLoss, PreferenceLossOutput
from lightning_aug_dpo.losses.dpo import SigmoidDPOLoss
from lightning_aug_dpo.losses.logprobs import concat_prompt_response, sequence_logprobs

__all__ = [
    "PreferenceLoss",
    "PreferenceLossOutput",
    "SigmoidDPOLoss",
    "concat_prompt_response",
    "sequence_logprobs",
]
