"""Adaptive strength: keep the identical-answer rate inside a target band.

Too weak an augmentation leaves the two answers identical (no signal; the pair is dropped), too
strong a one makes easy negatives. ``AdaptiveStrength`` watches the identical rate of the pairs
made, over windows of at least ``window`` prompts, and steps the augmentation's ``strength`` up
when the rate is above the band and down when it is below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AdaptiveStrength:
    """Controller for ``Augmentation.strength``.

    Args:
        low: lower edge of the target identical-pair rate.
        high: upper edge of the target identical-pair rate.
        step: strength change per decision.
        window: prompts counted (over all ranks) before each decision.
        min_strength: the strength never goes below this.
        max_strength: the strength never goes above this.
    """

    low: float = 0.2
    high: float = 0.5
    step: float = 0.05
    window: int = 32
    min_strength: float = 0.0
    max_strength: float = 1.0
    _prompts: int = field(default=0, init=False, repr=False)
    _identical: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if not 0.0 <= self.min_strength <= self.max_strength <= 1.0:
            raise ValueError(
                "need 0 <= min_strength <= max_strength <= 1, got "
                f"{self.min_strength}, {self.max_strength}"
            )
        if self.step <= 0 or self.window < 1:
            raise ValueError(f"step must be > 0 and window >= 1, got {self.step}, {self.window}")

    def update(self, strength: float, prompts: int, identical: int) -> float:
        """Count one step's pairs; returns the strength to use next."""
        self._prompts += prompts
        self._identical += identical
        if self._prompts < self.window:
            return strength
        rate = self._identical / self._prompts
        self._prompts = self._identical = 0
        if rate > self.high:
            strength += self.step
        elif rate < self.low:
            strength -= self.step
        return round(min(max(strength, self.min_strength), self.max_strength), 6)

    def state_dict(self) -> dict[str, int]:
        return {"prompts": self._prompts, "identical": self._identical}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._prompts, self._identical = int(state["prompts"]), int(state["identical"])
