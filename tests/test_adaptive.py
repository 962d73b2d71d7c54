"""Adaptive augmentation strength: the controller, and the identical rate it steers on the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_aug_dpo import AdaptiveStrength, AugPairDataModule, Preset

# ---------------------------------------------------------------- the controller alone


def test_steps_up_when_answers_are_too_often_identical() -> None:
    ctl = AdaptiveStrength(low=0.2, high=0.5, step=0.05, window=10)
    assert ctl.update(0.5, prompts=8, identical=8) == 0.5  # window not full: no decision yet
    assert ctl.update(0.5, prompts=4, identical=2) == 0.55  # 10 / 12 identical > 0.5


def test_steps_down_when_too_few_are_identical_and_holds_inside_the_band() -> None:
    ctl = AdaptiveStrength(low=0.2, high=0.5, step=0.1, window=8)
    assert ctl.update(0.5, prompts=8, identical=1) == 0.4
    assert ctl.update(0.4, prompts=8, identical=3) == 0.4  # 0.375 is inside the band
    assert ctl.state_dict() == {"prompts": 0, "identical": 0}  # each decision starts a window


def test_strength_is_clamped() -> None:
    ctl = AdaptiveStrength(step=0.3, window=1, min_strength=0.1, max_strength=0.9)
    assert ctl.update(0.8, prompts=4, identical=4) == 0.9
    assert ctl.update(0.2, prompts=4, identical=0) == 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low": 0.6, "high": 0.5},
        {"step": 0.0},
        {"window": 0},
        {"min_strength": 0.8, "max_strength": 0.2},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveStrength(**kwargs)


def test_adaptive_mode_needs_an_augmentation_with_a_strength(demo_assets) -> None:
    from lightning_aug_dpo import KorniaAugmentation

    blur = KorniaAugmentation("kornia.augmentation.RandomInvert", {"p": 1.0})
    with pytest.raises(TypeError, match="has no strength"):
        _datamodule(demo_assets, blur, AdaptiveStrength())


# ---------------------------------------------------------------- on the demo


def _datamodule(demo_assets: dict[str, Path], augmentation, adaptive) -> AugPairDataModule:
    return AugPairDataModule(
        data_path=str(demo_assets["prompts"]),
        image_folder=str(demo_assets["prompts"].parent / "images"),
        num_prompts=32,
        batch_size=8,
        max_new_tokens=12,
        augmentation=augmentation,
        adaptive_strength=adaptive,
    )


def _identical_rate(dm: AugPairDataModule, module, epoch: int, adapt: bool) -> float:
    """One epoch of pair making as ``fit`` does it; the fraction of identical pairs."""
    identical = prompts = 0
    for batch in dm.train_dataloader():
        stats = dm.make_pairs(batch, module, epoch, adapt=adapt).meta["stats"]
        identical, prompts = identical + stats.identical, prompts + stats.prompts
    return identical / prompts


def _distance_to_band(rate: float, low: float = 0.2, high: float = 0.5) -> float:
    return max(low - rate, 0.0, rate - high)


@pytest.mark.parametrize(
    ("start", "direction"), [(0.9, -1), (0.02, +1)], ids=["too-strong", "too-weak"]
)
def test_adaptive_strength_moves_identical_rate_toward_the_band(
    make_module, demo_assets, start: float, direction: int
) -> None:
    """On the demo's tiny model diffusion noise at t = 900 leaves almost no identical pairs (too
    strong for it) and t = 20 leaves most identical (too weak): the controller walks both toward
    the band. Rates are measured at a fixed strength before and after, on held-out seeds."""
    module = make_module()
    dm = _datamodule(
        demo_assets, Preset("diffusion", start), AdaptiveStrength(step=0.1, window=16)
    )
    dm.setup("fit")
    before = _identical_rate(dm, module, epoch=100, adapt=False)
    for epoch in range(4):
        _identical_rate(dm, module, epoch, adapt=True)
    after = _identical_rate(dm, module, epoch=100, adapt=False)
    moved = dm.augmentation.strength - start
    assert _distance_to_band(before) > 0.1, (before, after, moved)  # it starts outside the band
    assert moved * direction > 0, (before, after, moved)
    assert _distance_to_band(after) < _distance_to_band(before) / 2, (before, after, moved)


def test_adapted_strength_survives_a_checkpoint(demo_assets) -> None:
    dm = _datamodule(demo_assets, Preset("moco", 0.5), AdaptiveStrength(window=100))
    dm.augmentation.strength = 0.35
    dm.adaptive_strength.update(0.35, prompts=10, identical=7)
    state = dm.state_dict()
    fresh = _datamodule(demo_assets, Preset("moco", 0.5), AdaptiveStrength(window=100))
    fresh.load_state_dict(state)
    assert fresh.augmentation.strength == 0.35
    assert fresh.adaptive_strength.state_dict() == {"prompts": 10, "identical": 7}
