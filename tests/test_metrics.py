"""PreferenceMetrics in a single process: step values, weighted aggregates, run-long counts."""

from __future__ import annotations

import pytest
import torch

from lightning_aug_dpo.losses import PreferenceLossOutput
from lightning_aug_dpo.metrics import (
    PAIR_KEYS,
    PREFERENCE_KEYS,
    PreferenceMetrics,
    preference_values,
)
from lightning_aug_dpo.types import PairStats


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_update_returns_batch_means():
    metrics = PreferenceMetrics()
    step = metrics.update({"loss": _t([1.0, 2.0, 3.0]), "rewards/chosen": _t([0.5, -0.5, 1.5])})
    assert set(step) == {"loss", "rewards/chosen"}
    assert step["loss"].item() == pytest.approx(2.0)
    assert step["rewards/chosen"].item() == pytest.approx(0.5)


def test_compute_weights_by_element_count():
    metrics = PreferenceMetrics()
    metrics.update({"loss": _t([1.0, 2.0, 3.0]), "rewards/accuracies": _t([1.0, 0.0, 0.0])})
    step = metrics.update({"loss": _t([5.0]), "rewards/accuracies": _t([1.0])})
    assert step["loss"].item() == pytest.approx(5.0)  # this step only
    result = metrics.compute()
    # (1 + 2 + 3 + 5) / 4 = 2.75, not the mean of step means (2 + 5) / 2 = 3.5
    assert result["loss"] == pytest.approx(2.75)
    assert result["rewards/accuracies"] == pytest.approx(0.5)
    assert isinstance(result["loss"], float)
    # keys never updated are absent; pair counts are always present
    assert "rewards/margins" not in result
    assert {f"pairs/{k}" for k in PAIR_KEYS} <= set(result)
    assert all(result[f"pairs/{k}"] == 0.0 for k in PAIR_KEYS)


def test_update_counts_step_values_and_run_totals():
    metrics = PreferenceMetrics()
    step = metrics.update_counts(PairStats(prompts=8, kept=6, identical=2))
    assert set(step) == {"pairs/kept", "pairs/identical_rate"}
    assert step["pairs/kept"].item() == 6
    assert step["pairs/identical_rate"].item() == pytest.approx(0.25)
    step = metrics.update_counts(PairStats(prompts=4, kept=4, identical=0))
    assert step["pairs/kept"].item() == 4
    assert step["pairs/identical_rate"].item() == 0.0
    result = metrics.compute()
    assert result["pairs/prompts"] == 12.0
    assert result["pairs/kept"] == 10.0
    assert result["pairs/identical"] == 2.0


def test_update_counts_empty_batch_rate_is_zero():
    step = PreferenceMetrics().update_counts(PairStats(prompts=0, kept=0, identical=0))
    assert step["pairs/identical_rate"].item() == 0.0
    assert step["pairs/kept"].item() == 0.0


def test_reset_means_keeps_counts():
    metrics = PreferenceMetrics()
    metrics.update({"loss": _t([1.0, 3.0])})
    metrics.update_counts(PairStats(prompts=5, kept=3, identical=2))
    metrics.reset_means()
    result = metrics.compute()
    assert not set(PREFERENCE_KEYS) & set(result)
    assert result["pairs/prompts"] == 5.0
    assert result["pairs/kept"] == 3.0
    assert result["pairs/identical"] == 2.0
    metrics.update({"loss": _t([10.0])})
    metrics.update_counts(PairStats(prompts=1, kept=1, identical=0))
    result = metrics.compute()
    assert result["loss"] == pytest.approx(10.0)  # the earlier values are gone
    assert result["pairs/prompts"] == 6.0 and result["pairs/kept"] == 4.0


def test_preference_values_and_strict_accuracy():
    out = PreferenceLossOutput(
        loss=_t([0.5, 0.7, 0.9]).mean(),
        losses=_t([0.5, 0.7, 0.9]),
        chosen_rewards=_t([0.2, 0.1, -0.3]),
        rejected_rewards=_t([0.1, 0.1, 0.0]),
    )
    values = preference_values(
        out,
        policy_chosen_logps=_t([-10.0, -11.0, -12.0]),
        policy_rejected_logps=_t([-20.0, -21.0, -22.0]),
        chosen_mean_logits=_t([1.0, 2.0, 3.0]),
        rejected_mean_logits=_t([4.0, 5.0, 6.0]),
        chosen_lengths=torch.tensor([3, 4, 5]),
        rejected_lengths=torch.tensor([6, 7, 8]),
    )
    assert set(values) == set(PREFERENCE_KEYS)
    # equal rewards (example 1) do not count as correct
    assert values["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]
    assert values["rewards/margins"].tolist() == pytest.approx([0.1, 0.0, -0.3], abs=1e-7)
    assert values["lengths/chosen"].dtype == torch.float32
    step = PreferenceMetrics().update(values)
    assert step["rewards/accuracies"].item() == pytest.approx(1 / 3)
    assert step["lengths/rejected"].item() == pytest.approx(7.0)
    assert step["logps/chosen"].item() == pytest.approx(-11.0)
    assert step["logits/rejected"].item() == pytest.approx(5.0)


def test_update_counts_rollout_rates():
    stats = PairStats(
        prompts=2,
        kept=3,
        identical=1,
        candidates=4,
        chosen_tokens=20,
        rejected_tokens=12,
        finished=6,
        rollout_seconds=0.5,
    )
    step = PreferenceMetrics().update_counts(stats)
    assert step["pairs/identical_rate"].item() == pytest.approx(1 / 4)
    assert step["rollout/eos_rate"].item() == pytest.approx(6 / 8)
    assert step["rollout/chosen_tokens"].item() == pytest.approx(5.0)
    assert step["rollout/rejected_tokens"].item() == pytest.approx(3.0)
    assert step["rollout/tokens_per_s"].item() == pytest.approx(64.0)
    # offline pairs (no rollout time) log no rollout values
    assert "rollout/eos_rate" not in PreferenceMetrics().update_counts(PairStats(2, 2, 0))
