"""WarmupCosineSchedule: learning rates at given steps, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_aug_dpo.schedules import WarmupCosineSchedule


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(schedule: WarmupCosineSchedule, steps: int) -> list[float]:
    """Learning rate in use at steps 0 .. steps (inclusive)."""
    optimizer = schedule.optimizer
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_warmup_then_cosine_hand_values():
    schedule = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.1, total_steps=100)
    lrs = _lrs(schedule, 120)
    # warm-up: ceil(0.1 * 100) = 10 steps, linear from 0
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.5, abs=1e-12)
    assert lrs[10] == pytest.approx(1.0, abs=1e-12)
    # cosine over the remaining 90 steps
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)), abs=1e-12)
    assert lrs[55] == pytest.approx(0.5, abs=1e-12)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    # past the end it stays at the floor
    assert lrs[120] == pytest.approx(0.0, abs=1e-12)
    for step in range(1, 11):
        assert lrs[step] == pytest.approx(step / 10, abs=1e-12)
    for step in range(10, 101):
        want = 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert lrs[step] == pytest.approx(want, abs=1e-12)
    assert schedule.get_last_lr() == [lrs[-1]]


def test_peak_lr_scales():
    schedule = WarmupCosineSchedule(_optimizer(2e-6), warmup_ratio=0.1, total_steps=100)
    lrs = _lrs(schedule, 55)
    assert lrs[5] == pytest.approx(1e-6, rel=1e-12)
    assert lrs[10] == pytest.approx(2e-6, rel=1e-12)
    assert lrs[55] == pytest.approx(1e-6, rel=1e-12)


def test_min_lr_ratio_floor():
    schedule = WarmupCosineSchedule(
        _optimizer(1.0), warmup_ratio=0.1, min_lr_ratio=0.1, total_steps=100
    )
    lrs = _lrs(schedule, 150)
    assert lrs[0] == 0.0  # warm-up still starts from 0
    assert lrs[10] == pytest.approx(1.0, abs=1e-12)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-12)
    assert lrs[100] == pytest.approx(0.1, abs=1e-12)
    assert lrs[150] == pytest.approx(0.1, abs=1e-12)
    assert min(lrs[10:]) == pytest.approx(0.1, abs=1e-12)


def test_no_warmup_starts_at_peak():
    schedule = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.0, total_steps=10)
    lrs = _lrs(schedule, 10)
    assert lrs[0] == 1.0
    assert lrs[5] == pytest.approx(0.5, abs=1e-12)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_set_total_steps_after_construction():
    schedule = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.1, total_steps=None)
    # length unknown: constant factor 1
    assert schedule.optimizer.param_groups[0]["lr"] == 1.0
    schedule.set_total_steps(100)
    assert schedule.total_steps == 100
    assert schedule.optimizer.param_groups[0]["lr"] == 0.0
    assert schedule.get_last_lr() == [0.0]
    lrs = _lrs(schedule, 55)
    assert lrs[5] == pytest.approx(0.5, abs=1e-12)
    assert lrs[10] == pytest.approx(1.0, abs=1e-12)
    assert lrs[55] == pytest.approx(0.5, abs=1e-12)


def test_set_total_steps_mid_run_reapplies_current_step():
    schedule = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.1, total_steps=None)
    assert _lrs(schedule, 3) == [1.0, 1.0, 1.0, 1.0]
    schedule.set_total_steps(100)
    assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(0.3, abs=1e-12)
    assert schedule.get_last_lr() == pytest.approx([0.3], abs=1e-12)


def test_state_dict_round_trip():
    schedule = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.1, total_steps=100)
    _lrs(schedule, 20)
    state = schedule.state_dict()
    restored = WarmupCosineSchedule(_optimizer(1.0), warmup_ratio=0.1, total_steps=100)
    restored.load_state_dict(state)
    assert restored.last_epoch == 20
    assert _lrs(restored, 35)[-1] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("warmup_ratio", [-0.1, 1.0, 1.5])
def test_invalid_warmup_ratio(warmup_ratio):
    with pytest.raises(ValueError, match="warmup_ratio"):
        WarmupCosineSchedule(_optimizer(), warmup_ratio=warmup_ratio, total_steps=100)
