"""SeVa's default augmentation: one-shot forward diffusion noise (from VCD).

With the DDPM-style schedule of Visual Contrastive Decoding (Leng et al., 2024),

    beta_i   = sigmoid(linspace(-6, 6, T))_i * (5e-3 - 1e-5) + 1e-5,   i = 0 .. T-1, T = 1000
    abar_t   = prod_{i <= t} (1 - beta_i)
    x_t      = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,  eps ~ N(0, I)

applied in one shot to the CLIP-normalised image tensor. At t = 500: sqrt(abar) = 0.863 and the
noise scale is 0.505; at t = 800: 0.467 and 0.884. Noise is fresh per image, drawn from a
per-sample seed so that any augmented image can be rebuilt from its record.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_aug_dpo.augment.base import Augmentation, Space


def diffusion_schedule(num_steps: int = 1000) -> torch.Tensor:
    """``sqrt(abar_t)`` for t = 0 .. num_steps - 1, in float64 for an exact reference."""
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64))
    betas = betas * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0).sqrt()


class DiffusionNoise(Augmentation):
    """Forward-diffuse images to step ``noise_step`` (SeVa/VCD).

    Args:
        noise_step: diffusion step t in [0, num_steps); SeVa uses 500 or 800. A pair ``[lo, hi]``
            draws t uniformly per image (inclusive).
        num_steps: length of the schedule (VCD: 1000).
        space: ``normalized`` (SeVa: noise on the CLIP-normalised tensor) or ``pixel`` (noise on
            the [-1, 1]-scaled RGB image, as DDPM, clamped back to a valid image).

    ``strength`` is ``t / num_steps`` (t = 500 is strength 0.5, SeVa's t = 800 is 0.8); setting it
    moves ``noise_step`` (a range keeps its width).
    """

    def __init__(
        self,
        noise_step: int | tuple[int, int] = 500,
        num_steps: int = 1000,
        space: Space = "normalized",
    ) -> None:
        super().__init__()
        if space not in ("normalized", "pixel"):
            raise ValueError(f"space must be 'normalized' or 'pixel', got {space!r}")
        self.num_steps = num_steps
        self.space = space
        self.register_buffer("sqrt_abar", diffusion_schedule(num_steps), persistent=False)
        self.noise_step = noise_step

    @property
    def noise_step(self) -> int | tuple[int, int]:
        return self._noise_step

    @noise_step.setter
    def noise_step(self, value: int | tuple[int, int] | list[int]) -> None:
        steps = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
        if len(steps) != 2 or not 0 <= steps[0] <= steps[1] < self.num_steps:
            raise ValueError(
                f"noise_step must be an int or a range [lo, hi] within [0, {self.num_steps}), "
                f"got {value}"
            )
        self._noise_step = steps[0] if steps[0] == steps[1] else steps

    @property
    def step_range(self) -> tuple[int, int]:
        step = self.noise_step
        return (step, step) if isinstance(step, int) else step

    @property
    def signal_scale(self) -> float:
        return float(self.sqrt_abar[self.step_range[0]])

    @property
    def noise_scale(self) -> float:
        return (1.0 - self.signal_scale**2) ** 0.5

    @property
    def strength(self) -> float:
        lo, hi = self.step_range
        return (lo + hi) / 2 / self.num_steps

    @strength.setter
    def strength(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {value}")
        lo, hi = self.step_range
        half = (hi - lo) / 2
        centre = min(max(value * self.num_steps, half), self.num_steps - 1 - half)
        lo, hi = round(centre - half), round(centre + half)
        self.noise_step = lo if lo == hi else (lo, hi)

    def config(self) -> dict[str, Any]:
        step = self.noise_step
        return {
            "preset": "diffusion",
            "noise_step": step if isinstance(step, int) else list(step),
            "num_steps": self.num_steps,
        }

    def sample(self, shape: torch.Size, seed: int) -> dict[str, Any]:
        # Called under a seeded CPU generator (Augmentation.augment_one). A fixed step draws the
        # noise first, so a seed gives the same noise whatever the range.
        lo, hi = self.step_range
        step = lo if lo == hi else int(torch.randint(lo, hi + 1, ()))
        return {"noise_step": step, "noise": torch.randn(shape)}

    def record_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"noise_step": params["noise_step"]}  # the noise itself comes back from the seed

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        signal = float(self.sqrt_abar[params["noise_step"]])
        noise_scale = (1.0 - signal**2) ** 0.5
        noise = params["noise"].to(device=image.device, dtype=image.dtype)
        if self.space == "pixel":
            x0 = image * 2 - 1
            return ((signal * x0 + noise_scale * noise) + 1) / 2
        return signal * image + noise_scale * noise

    def extra_repr(self) -> str:
        return f"noise_step={self.noise_step}, space={self.space}"
