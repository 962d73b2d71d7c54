"""Checks that refuse a bad configuration before any weights load, and bad sequences before
they are trained on.

``check_config`` runs first in :meth:`AugDPOModule.configure_model`, after the processor and the
model's ``config.json`` are read (seconds) and before ``from_pretrained`` loads the weights
(minutes for a 7B model, and GPU memory): every problem it finds is reported at once, each
naming the key to change and how. ``sequence_problems`` runs on every tokenised batch of
pairs (the DataModule refuses, counts and logs the rows it flags, or stops the run).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.errors import UserInputError

log = logging.getLogger(__name__)

# Reasons a pair is refused after tokenisation (``train/pairs/dropped/<reason>``).
PROMPT_TOO_LONG = "prompt_exceeds_max_length"
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"


class ConfigError(UserInputError):
    """One or more configuration problems, each naming its key and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{len(problems)} configuration {noun} (no model was loaded):\n{listed}")


def check_config(module: Any, config: Any) -> None:
    """Raise :class:`ConfigError` listing every problem of ``module``'s settings.

    ``config`` is the checkpoint's ``PretrainedConfig``; ``module.processor`` is loaded. The
    model itself is only built on the ``meta`` device (module names, no memory, no weights).
    """
    problems: list[str] = []
    if not module.hparams.init_adapter:  # an adapter brings its own targets
        try:
            skeleton = module.empty_model(config)
        except ValueError as err:  # a family loading another class should override empty_model
            log.warning(
                "model.lora_target_modules and model.modules_to_save are checked when the "
                "weights load, not before: %s has no meta-device skeleton (%s)",
                type(module).__name__,
                str(err).splitlines()[0],
            )
        else:
            problems += lora_target_problems(module, skeleton)
    image_problems = module.image_size_problems(config)
    problems += image_problems
    if not image_problems:  # the image token count is only known for a valid image size
        problems += max_length_problems(module)
    if problems:
        raise ConfigError(problems)


def linear_layout(model: nn.Module) -> str:
    """The model's Linear layers, grouped: ``model.language_model.layers.*.{k_proj, q_proj}``."""
    groups: dict[str, set[str]] = defaultdict(set)
    for name, sub in model.named_modules():
        if isinstance(sub, nn.Linear):
            parts = name.split(".")
            # Collapse the repeated blocks: everything from the first layer index on.
            cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
            prefix = ".".join(parts[:cut]) + (".*" if cut < len(parts) - 1 else "")
            groups[prefix].add(parts[-1])
    return "; ".join(
        f"{prefix}.{{{', '.join(sorted(leaves))}}}" if prefix else ", ".join(sorted(leaves))
        for prefix, leaves in sorted(groups.items())
    )


def lora_target_problems(module: Any, model: nn.Module) -> list[str]:
    """Names of ``lora_target_modules`` and ``modules_to_save`` that match no module.

    A target is checked through the family's :meth:`lora_target_regex` (scoped to the language
    model for LLaVA and Qwen2-VL): a name that exists only in the vision tower is a miss too.
    """
    paths = [name for name, _ in model.named_modules()]
    regex = re.compile(module.lora_target_regex())
    adapted = [p for p in paths if regex.fullmatch(p)]
    missing = [
        name
        for name in module.lora_target_modules
        if not any(p == name or p.endswith(f".{name}") for p in adapted)
    ]
    problems = []
    if missing:
        problems.append(
            f"model.lora_target_modules: {missing} match no module that LoRA may adapt "
            f"(pattern {regex.pattern!r}). Linear layers of this model: {linear_layout(model)}. "
            "Fix: list leaf names of the language model's Linear layers, e.g. "
            "[q_proj, k_proj, v_proj, o_proj]"
        )
    unsaved = [
        name
        for name in module.hparams.modules_to_save or []
        if not any(p.endswith(name) for p in paths)  # PEFT's own match: a suffix
    ]
    if unsaved:
        top = sorted({p.split(".")[1] for p in paths if p.startswith("model.") and "." in p})
        problems.append(
            f"model.modules_to_save: {unsaved} match no module of this model. Fix: name a "
            f"submodule by its last path components, e.g. one of {top} (SeVa trains the "
            "projector: multi_modal_projector)"
        )
    return problems


def max_length_problems(module: Any) -> list[str]:
    """``max_length`` must hold a prompt with its image tokens and at least one answer token;
    anything shorter would cut image tokens out of every sequence."""
    tok = module.tokenizer
    prompt = module.expand_image_tokens(module.format_prompt(""))
    length = len(tok(prompt).input_ids)
    image = module.num_image_tokens()
    max_length = module.hparams.max_length
    if max_length >= length + 1:
        return []
    images = f", {image} of them image tokens" if image else ""
    return [
        f"model.max_length={max_length} cannot hold one image: a prompt with an empty question "
        f"is already {length} tokens{images}, so every sequence would lose image tokens. Fix: "
        f"set model.max_length to at least {length + 1} plus your longest question and answer "
        "(SeVa: 2048)"
    ]


def sequence_problems(
    module: Any, tokens: dict[str, torch.Tensor], image_shape: tuple[int, int]
) -> list[str | None]:
    """Per pair, why it must not be trained on, or ``None``.

    - ``prompt_exceeds_max_length``: the prompt (image tokens included) leaves no room for an
      answer in ``max_length``; cutting it would cut the question or the image tokens.
    - ``image_token_mismatch``: the chosen or rejected sequence holds another number of image
      tokens than the vision tower yields features for an image of ``image_shape`` (e.g. a
      question or an answer whose text contains the image placeholder).
    """
    image_id = module.image_token_id()
    expected = module.num_image_features(image_shape)
    too_long = tokens["prompt_attention_mask"].sum(-1) + 1 > module.hparams.max_length
    mismatch = torch.zeros_like(too_long)
    if image_id is not None and expected is not None:

        def image_tokens(name: str) -> torch.Tensor:  # per row, padding excluded
            ids, mask = tokens[f"{name}_input_ids"], tokens[f"{name}_attention_mask"]
            return ((ids == image_id) & (mask > 0)).sum(-1)

        in_prompt = image_tokens("prompt")
        for name in ("chosen", "rejected"):
            mismatch |= in_prompt + image_tokens(name) != expected
    return [
        PROMPT_TOO_LONG if long else IMAGE_TOKEN_MISMATCH if bad else None
        for long, bad in zip(too_long.tolist(), mismatch.tolist(), strict=True)
    ]
