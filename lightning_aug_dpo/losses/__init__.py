"""Preference losses and log-prob maths. Nothing here imports Lightning.

Every loss is a :class:`PreferenceLoss` (an ``nn.Module`` with plain typed ``__init__`` args, so
LightningCLI builds it from a ``class_path``); its ``needs`` lists the optional inputs it reads.

=============================  ====================================  ==========================
class                          loss                                  TRL equivalent
=============================  ====================================  ==========================
:class:`SigmoidDPOLoss`        DPO, cDPO label smoothing             ``loss_type="sigmoid"``
:class:`RobustDPOLoss`         robust DPO (Chowdhury et al.)         ``"robust"``
:class:`IPOLoss`               IPO, length-normalised                ``"ipo"``
:class:`HingeLoss`             SLiC hinge                            ``"hinge"``
:class:`SFTLoss`               NLL of the chosen answer              ``"sft"``
:class:`RPOLoss`               DPO + alpha * NLL                     ``rpo_alpha`` / sigmoid+sft
:class:`SimPOLoss`             SimPO, no reference                   ``CPOTrainer`` ``"simpo"``
:class:`ConditionalPreferenceLoss`  mDPO image-conditional term      (none)
:class:`ChosenAnchorLoss`      mDPO anchor                           (none)
:class:`CombinedLoss`          weighted sum of the above             ``loss_weights``
=============================  ====================================  ==========================
"""

from lightning_aug_dpo.losses.base import (
    OPTIONAL_INPUTS,
    PreferenceInputs,
    PreferenceLoss,
    PreferenceLossOutput,
)
from lightning_aug_dpo.losses.combined import CombinedLoss
from lightning_aug_dpo.losses.dpo import RobustDPOLoss, SigmoidDPOLoss
from lightning_aug_dpo.losses.logprobs import (
    concat_prompt_response,
    response_logits_to_keep,
    sequence_logprobs,
)
from lightning_aug_dpo.losses.margin import HingeLoss, IPOLoss
from lightning_aug_dpo.losses.mdpo import ChosenAnchorLoss, ConditionalPreferenceLoss
from lightning_aug_dpo.losses.sft import RPOLoss, SFTLoss
from lightning_aug_dpo.losses.shared_prompt import (
    PackedRows,
    pack_shared_prompt,
    shared_prompt_logprobs,
)
from lightning_aug_dpo.losses.simpo import SimPOLoss
from lightning_aug_dpo.losses.token_nll import IGNORE_INDEX, token_nll

__all__ = [
    "IGNORE_INDEX",
    "OPTIONAL_INPUTS",
    "ChosenAnchorLoss",
    "CombinedLoss",
    "ConditionalPreferenceLoss",
    "HingeLoss",
    "IPOLoss",
    "PackedRows",
    "PreferenceInputs",
    "PreferenceLoss",
    "PreferenceLossOutput",
    "RPOLoss",
    "RobustDPOLoss",
    "SFTLoss",
    "SigmoidDPOLoss",
    "SimPOLoss",
    "concat_prompt_response",
    "pack_shared_prompt",
    "response_logits_to_keep",
    "sequence_logprobs",
    "shared_prompt_logprobs",
    "token_nll",
]
