"""Learning-rate schedules whose length is known only once the Trainer is built."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineSchedule(LambdaLR):
    """Linear warm-up from 0, then cosine decay to ``min_lr_ratio * lr`` (the SeVa/LLaVA recipe).

    Args:
        optimizer: the optimizer (given by LightningCLI; leave it out of the YAML).
        warmup_ratio: fraction of all optimizer steps spent warming up (SeVa: 0.03).
        min_lr_ratio: final learning rate as a fraction of the peak.
        total_steps: number of optimizer steps; ``None`` lets the module set it from
            ``trainer.estimated_stepping_batches`` before training starts.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if self.total_steps is None:
            return 1.0
        warmup = math.ceil(self.warmup_ratio * self.total_steps)
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule length and re-apply the factor of the current step."""
        self.total_steps = int(total_steps)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * self.factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
