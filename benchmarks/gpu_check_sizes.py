"""The model arithmetic of ``benchmarks/gpu_check.py``: LLaVA-1.5's trainable parameters for a
LoRA config, step FLOPs, and the memory plan of ``configs/seva_llava15_7b.yaml`` on one GPU.

One copy lives in the library, ``lightning_aug_dpo/model_sizes.py`` (``python -m
lightning_aug_dpo.recipe_cost`` plans runs with it); this file re-exports it. It is loaded from
its file rather than imported as ``lightning_aug_dpo.model_sizes``: the check runs before it
knows the project's dependencies are installed, and that file needs only the standard library,
whatever the package's ``__init__`` imports.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "lightning_aug_dpo_model_sizes"
_PATH = Path(__file__).resolve().parents[1] / "lightning_aug_dpo" / "model_sizes.py"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


_sizes = _load()
ALL_TARGETS = _sizes.ALL_TARGETS
GIB = _sizes.GIB
MIB = _sizes.MIB
PLAN_LIMIT_GIB = _sizes.PLAN_LIMIT_GIB
decoder_linear_parameters = _sizes.decoder_linear_parameters
decoder_linears = _sizes.decoder_linears
lora_parameters = _sizes.lora_parameters
memory_plan = _sizes.memory_plan
projector_parameters = _sizes.projector_parameters
step_flops = _sizes.step_flops
trainable_parameters = _sizes.trainable_parameters
vision_tower_parameters = _sizes.vision_tower_parameters

__all__ = [
    "ALL_TARGETS",
    "GIB",
    "MIB",
    "PLAN_LIMIT_GIB",
    "decoder_linear_parameters",
    "decoder_linears",
    "lora_parameters",
    "memory_plan",
    "projector_parameters",
    "step_flops",
    "trainable_parameters",
    "vision_tower_parameters",
]
