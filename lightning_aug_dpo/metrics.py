"""TRL-named preference metrics, accumulated with torchmetrics so values agree across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from lightning_aug_dpo.losses import PreferenceLossOutput
from lightning_aug_dpo.types import PairStats

# Logged names under the stage prefix (``train/``, ``val/``), as TRL's DPOTrainer names them.
PREFERENCE_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "lengths/chosen",
    "lengths/rejected",
)
# Run totals of the pair-making statistics (``PairStats`` fields), summed over ranks.
PAIR_KEYS = (
    "prompts",
    "candidates",
    "kept",
    "identical",
    "chosen_tokens",
    "rejected_tokens",
    "finished",
    "rollout_seconds",
)


def _slot(key: str) -> str:
    # Module names may not contain "." and read badly with "/"; the public name is the key.
    return key.replace("/", "__")


def preference_values(
    out: PreferenceLossOutput,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_mean_logits: torch.Tensor,
    rejected_mean_logits: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-example values for every key of :data:`PREFERENCE_KEYS` (accuracy is strict: >)."""
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "logps/chosen": policy_chosen_logps.detach(),
        "logps/rejected": policy_rejected_logps.detach(),
        "logits/chosen": chosen_mean_logits.detach(),
        "logits/rejected": rejected_mean_logits.detach(),
        "lengths/chosen": chosen_lengths.float(),
        "lengths/rejected": rejected_lengths.float(),
    }


class PreferenceMetrics(nn.Module):
    """Means of the preference statistics and sums of the pair counts for one stage.

    ``update`` returns the values of this step, already reduced over all ranks
    (``dist_sync_on_step``), and accumulates them; ``compute`` gives the synced aggregate since
    the last ``reset``. Pair counts are never reset by Lightning, so they total the whole run.
    """

    def __init__(self, sync_on_step: bool = True) -> None:
        super().__init__()
        self.means = nn.ModuleDict(
            {_slot(k): MeanMetric(dist_sync_on_step=sync_on_step) for k in PREFERENCE_KEYS}
        )
        self.counts = nn.ModuleDict(
            {_slot(k): SumMetric(dist_sync_on_step=sync_on_step) for k in PAIR_KEYS}
        )

    def update(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.means[_slot(k)](v) for k, v in values.items()}

    def update_counts(self, stats: PairStats) -> dict[str, torch.Tensor]:
        """Add one batch's pair statistics; returns the step's values over all ranks.

        ``pairs/kept`` and ``pairs/identical_rate`` (identical answers per candidate pair);
        when the batch was rolled out, ``rollout/eos_rate`` (answers that ended by EOS or a
        stop string), ``rollout/chosen_tokens`` and ``rollout/rejected_tokens`` (mean answer
        lengths) and ``rollout/tokens_per_s`` (all ranks' tokens over the ranks' mean
        ``generate`` time: the job's throughput).
        """
        device = next(iter(self.counts.values())).device
        step = {
            k: self.counts[_slot(k)](torch.tensor(float(getattr(stats, k)), device=device))
            for k in PAIR_KEYS
        }
        candidates = step["candidates"].clamp(min=1)
        out = {"pairs/kept": step["kept"], "pairs/identical_rate": step["identical"] / candidates}
        if step["rollout_seconds"] > 0:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            tokens = step["chosen_tokens"] + step["rejected_tokens"]
            out["rollout/eos_rate"] = step["finished"] / (2 * candidates)
            out["rollout/chosen_tokens"] = step["chosen_tokens"] / candidates
            out["rollout/rejected_tokens"] = step["rejected_tokens"] / candidates
            out["rollout/tokens_per_s"] = tokens * world / step["rollout_seconds"]
        return out

    def compute(self) -> dict[str, float]:
        """Aggregates since the last reset (means) and over the run (counts)."""
        result = {}
        for key in PREFERENCE_KEYS:
            metric = self.means[_slot(key)]
            if metric.update_count:
                result[key] = float(metric.compute())
        for key in PAIR_KEYS:
            metric = self.counts[_slot(key)]
            result[f"pairs/{key}"] = float(metric.compute()) if metric.update_count else 0.0
        return result

    def reset_means(self) -> None:
        for metric in self.means.values():
            metric.reset()
