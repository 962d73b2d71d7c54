"""Every loss can be chosen from YAML by ``class_path``, as LightningCLI does with jsonargparse."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser

import lightning_aug_dpo
from lightning_aug_dpo.losses import (
    ChosenAnchorLoss,
    CombinedLoss,
    ConditionalPreferenceLoss,
    HingeLoss,
    IPOLoss,
    PreferenceLoss,
    RobustDPOLoss,
    RPOLoss,
    SFTLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)


def _build(yaml: str) -> PreferenceLoss:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--loss", type=PreferenceLoss)
    config = parser.parse_string(yaml)
    return parser.instantiate_classes(config).loss


@pytest.mark.parametrize(
    ("init_args", "cls", "attrs"),
    [
        ("{beta: 0.2, label_smoothing: 0.1}", SigmoidDPOLoss, {"label_smoothing": 0.1}),
        ("{beta: 0.1, label_smoothing: 0.2}", RobustDPOLoss, {"label_smoothing": 0.2}),
        ("{beta: 0.5}", IPOLoss, {"beta": 0.5}),
        ("{beta: 0.3}", HingeLoss, {"beta": 0.3}),
        ("{reduction: sequence}", SFTLoss, {"reduction": "sequence"}),
        ("{alpha: 0.5, sft_reduction: token}", RPOLoss, {"alpha": 0.5}),
        ("{beta: 2.5, gamma: 1.4}", SimPOLoss, {"beta": 2.5, "gamma": 1.4}),
        ("{beta: 0.1}", ConditionalPreferenceLoss, {"beta": 0.1}),
        ("{delta: 0.5}", ChosenAnchorLoss, {"delta": 0.5}),
    ],
)
def test_each_loss_by_class_path(init_args, cls, attrs):
    for path in (f"lightning_aug_dpo.losses.{cls.__name__}", f"lightning_aug_dpo.{cls.__name__}"):
        loss = _build(f"loss:\n  class_path: {path}\n  init_args: {init_args}\n")
        assert type(loss) is cls
        for name, value in attrs.items():
            assert getattr(loss, name) == value


def test_combined_dpo_plus_mdpo_conditional_from_yaml():
    yaml = """
loss:
  class_path: lightning_aug_dpo.losses.CombinedLoss
  init_args:
    losses:
      - class_path: lightning_aug_dpo.losses.SigmoidDPOLoss
        init_args:
          beta: 0.1
      - class_path: ConditionalPreferenceLoss
        init_args:
          beta: 0.1
    weights: [1.0, 0.5]
"""
    loss = _build(yaml)
    assert isinstance(loss, CombinedLoss)
    assert [type(t) for t, _ in loss.terms] == [SigmoidDPOLoss, ConditionalPreferenceLoss]
    assert loss.weights == [1.0, 0.5]
    assert loss.needs_augmented and loss.needs_reference
    # it computes: at equality, ln 2 + 0.5 ln 2
    x, y = torch.tensor([-3.0, -7.0]), torch.tensor([-4.0, -2.0])
    out = loss(x, y, x, y, policy_chosen_aug_logps=y, reference_chosen_aug_logps=y)
    assert out.loss.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)


def test_full_mdpo_recipe_of_the_docstring_parses():
    from lightning_aug_dpo.losses import mdpo

    recipe = mdpo.__doc__.split("YAML::", 1)[1].split("\n\n")[1]
    loss = _build(recipe.replace("\n    ", "\n").strip() + "\n")
    assert [type(t) for t, _ in loss.terms] == [
        SigmoidDPOLoss,
        ConditionalPreferenceLoss,
        ChosenAnchorLoss,
    ]


def test_nested_combined_and_default_weights_from_yaml():
    yaml = """
loss:
  class_path: CombinedLoss
  init_args:
    losses:
      - class_path: CombinedLoss
        init_args:
          losses:
            - class_path: SigmoidDPOLoss
            - class_path: SFTLoss
          weights: [1.0, 0.2]
      - class_path: SimPOLoss
"""
    loss = _build(yaml)
    assert loss.weights == [1.0, 1.0]
    inner = loss.terms[0][0]
    assert isinstance(inner, CombinedLoss) and inner.weights == [1.0, 0.2]


def test_invalid_value_in_yaml_names_the_argument():
    yaml = "loss:\n  class_path: SigmoidDPOLoss\n  init_args: {beta: -1.0}\n"
    with pytest.raises(ValueError, match="beta must be"):
        _build(yaml)


def test_package_exports_every_loss():
    for cls in (RobustDPOLoss, IPOLoss, HingeLoss, SFTLoss, RPOLoss, SimPOLoss, CombinedLoss):
        assert getattr(lightning_aug_dpo, cls.__name__) is cls
    for cls in (ConditionalPreferenceLoss, ChosenAnchorLoss):
        assert getattr(lightning_aug_dpo, cls.__name__) is cls
