"""The PreferenceLoss contract: declared needs, input checks, argument validation, purity."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import lightning_aug_dpo.losses as losses_pkg
from lightning_aug_dpo.losses import (
    OPTIONAL_INPUTS,
    ChosenAnchorLoss,
    CombinedLoss,
    ConditionalPreferenceLoss,
    HingeLoss,
    IPOLoss,
    PreferenceLoss,
    PreferenceLossOutput,
    RobustDPOLoss,
    RPOLoss,
    SFTLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)

REF = {"reference_chosen_logps", "reference_rejected_logps"}
LENGTHS = {"chosen_lengths", "rejected_lengths"}
AUG = {"policy_chosen_aug_logps", "reference_chosen_aug_logps"}

# (factory, needs, needs_reference, needs_lengths, needs_augmented)
CASES = [
    (SigmoidDPOLoss, REF, True, False, False),
    (RobustDPOLoss, REF, True, False, False),
    (IPOLoss, REF | LENGTHS, True, True, False),
    (HingeLoss, REF, True, False, False),
    (SFTLoss, {"chosen_lengths"}, False, True, False),
    (RPOLoss, REF | {"chosen_lengths"}, True, True, False),
    (SimPOLoss, LENGTHS, False, True, False),
    (ConditionalPreferenceLoss, REF | AUG, True, False, True),
    (ChosenAnchorLoss, REF, True, False, False),
]


def _inputs(batch: int = 3, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], dict]:
    gen = torch.Generator().manual_seed(seed)

    def logps() -> torch.Tensor:
        return -torch.rand(batch, generator=gen) * 50

    positional = (logps(), logps(), logps(), logps())
    keywords = {
        "chosen_lengths": torch.randint(1, 30, (batch,), generator=gen),
        "rejected_lengths": torch.randint(1, 30, (batch,), generator=gen),
        "policy_chosen_aug_logps": logps(),
        "reference_chosen_aug_logps": logps(),
    }
    return positional, keywords


@pytest.mark.parametrize(("factory", "needs", "ref", "lengths", "aug"), CASES)
def test_declared_needs(factory, needs, ref, lengths, aug):
    loss = factory()
    assert loss.needs == frozenset(needs)
    assert loss.needs <= set(OPTIONAL_INPUTS)
    assert (loss.needs_reference, loss.needs_lengths, loss.needs_augmented) == (ref, lengths, aug)


@pytest.mark.parametrize(("factory", "needs", "ref", "lengths", "aug"), CASES)
def test_runs_on_exactly_its_needs(factory, needs, ref, lengths, aug):
    positional, keywords = _inputs()
    args = list(positional[:2])
    args += [positional[2] if "reference_chosen_logps" in needs else None]
    args += [positional[3] if "reference_rejected_logps" in needs else None]
    out = factory()(*args, **{k: v for k, v in keywords.items() if k in needs})
    assert isinstance(out, PreferenceLossOutput)
    assert out.losses.shape == (3,) and out.loss.ndim == 0
    assert torch.isfinite(out.losses).all()
    assert out.chosen_rewards.shape == out.rejected_rewards.shape == (3,)


@pytest.mark.parametrize(("factory", "needs", "ref", "lengths", "aug"), CASES)
def test_missing_input_is_named(factory, needs, ref, lengths, aug):
    positional, keywords = _inputs()
    for missing in sorted(needs):
        args = list(positional)
        kwargs = dict(keywords)
        if missing == "reference_chosen_logps":
            args[2] = None
        elif missing == "reference_rejected_logps":
            args[3] = None
        else:
            del kwargs[missing]
        with pytest.raises(ValueError, match=missing):
            factory()(*args, **kwargs)


def test_four_positional_arguments_still_work():
    positional, _ = _inputs()
    out = SigmoidDPOLoss(beta=0.1)(*positional)
    by_keyword = SigmoidDPOLoss(beta=0.1)(
        policy_chosen_logps=positional[0],
        policy_rejected_logps=positional[1],
        reference_chosen_logps=positional[2],
        reference_rejected_logps=positional[3],
    )
    assert torch.equal(out.losses, by_keyword.losses)


def test_extras_are_keyword_only():
    positional, keywords = _inputs()
    with pytest.raises(TypeError):
        IPOLoss()(*positional, keywords["chosen_lengths"], keywords["rejected_lengths"])


def test_combined_needs_are_the_union():
    loss = CombinedLoss([SimPOLoss(), ConditionalPreferenceLoss()], [1.0, 1.0])
    assert loss.needs == frozenset(LENGTHS | REF | AUG)
    assert loss.needs_reference and loss.needs_lengths and loss.needs_augmented
    # the class attribute is untouched by an instance's union
    assert PreferenceLoss.needs == frozenset(REF)
    positional, keywords = _inputs()
    del keywords["policy_chosen_aug_logps"]
    with pytest.raises(ValueError, match="policy_chosen_aug_logps"):
        loss(*positional, **keywords)


def test_shape_mismatch_is_named():
    positional, keywords = _inputs()
    keywords["chosen_lengths"] = torch.ones(4)
    with pytest.raises(ValueError, match="chosen_lengths"):
        IPOLoss()(*positional, **keywords)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        SigmoidDPOLoss()(*(p.unsqueeze(0) for p in positional))


ALL = [SigmoidDPOLoss, RobustDPOLoss, IPOLoss, HingeLoss, SFTLoss, RPOLoss, SimPOLoss]
ALL += [ConditionalPreferenceLoss, ChosenAnchorLoss]


@pytest.mark.parametrize("factory", ALL)
@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf])
def test_invalid_beta_is_named(factory, beta):
    with pytest.raises(ValueError, match="beta must be"):
        factory(beta=beta)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: RobustDPOLoss(label_smoothing=0.5), "label_smoothing"),
        (lambda: RPOLoss(label_smoothing=-0.1), "label_smoothing"),
        (lambda: RPOLoss(alpha=0.0), "alpha"),
        (lambda: RPOLoss(sft_reduction="mean"), "sft_reduction"),
        (lambda: SFTLoss(reduction="sum"), "^reduction must"),
        (lambda: SimPOLoss(gamma=-1.0), "gamma"),
        (lambda: SimPOLoss(gamma=math.nan), "gamma"),
        (lambda: ChosenAnchorLoss(delta=math.inf), "delta"),
        (lambda: CombinedLoss([]), "losses"),
        (lambda: CombinedLoss([SigmoidDPOLoss()], [1.0, 1.0]), "weights"),
        (lambda: CombinedLoss([SigmoidDPOLoss()], [-1.0]), r"weights\[0\]"),
        (lambda: CombinedLoss([SigmoidDPOLoss(), "dpo"]), r"losses\[1\]"),
    ],
)
def test_invalid_arguments_are_named(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize("factory", ALL)
def test_rewards_are_detached_and_reference_gets_no_gradient(factory):
    positional, keywords = _inputs()
    policy = [t.clone().requires_grad_() for t in positional[:2]]
    keywords["policy_chosen_aug_logps"].requires_grad_()
    out = factory()(*policy, *positional[2:], **keywords)
    out.loss.backward()
    assert out.chosen_rewards.grad_fn is None and out.rejected_rewards.grad_fn is None
    assert policy[0].grad is not None
    assert positional[2].grad is None and positional[3].grad is None


def test_losses_package_never_imports_lightning():
    folder = Path(losses_pkg.__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"lightning", "pytorch_lightning", "torchmetrics"}, path
                assert not name.startswith("lightning_aug_dpo.") or name.startswith(
                    "lightning_aug_dpo.losses"
                ), (path, name)
