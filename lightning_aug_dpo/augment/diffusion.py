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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def diffusion_schedule(num_steps: int = 1000) -> torch.Tensor:
    """``sqrt(abar_t)`` for t = 0 .. num_steps - 1, in float64 for an exact reference."""
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64))
    betas = betas * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0).sqrt()


class DiffusionNoise(nn.Module):
    """Forward-diffuse normalised ``(B, 3, H, W)`` images to step ``noise_step``.

    Args:
        noise_step: diffusion step t in [0, num_steps); SeVa uses 500 or 800.
        num_steps: length of the schedule (VCD: 1000).
    """

    name = "diffusion"

    def __init__(self, noise_step: int = 500, num_steps: int = 1000) -> None:
        super().__init__()
        if not 0 <= noise_step < num_steps:
            raise ValueError(f"noise_step must be in [0, {num_steps}), got {noise_step}")
        self.noise_step = noise_step
        self.num_steps = num_steps
        sqrt_abar = float(diffusion_schedule(num_steps)[noise_step])
        self.signal_scale = sqrt_abar
        self.noise_scale = (1.0 - sqrt_abar**2) ** 0.5

    def sample_noise(self, like: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Draw one standard-normal tensor per image from its own seed (replayable).

        Drawn by a CPU generator whatever the images' device: CUDA generators give other streams
        for the same seed, and a record must rebuild the same noise anywhere.
        """
        if len(seeds) != like.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {like.shape[0]} images")
        noise = [
            torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(int(seed)))
            for seed in seeds
        ]
        return torch.stack(noise).to(device=like.device, dtype=like.dtype)

    def apply(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.signal_scale * images + self.noise_scale * noise

    def forward(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return self.apply(images, self.sample_noise(images, seeds))

    def record(self, seed: int) -> dict[str, Any]:
        """What is needed to rebuild one augmented image: written to pair metadata."""
        return {"name": self.name, "noise_step": self.noise_step, "seed": int(seed)}

    def extra_repr(self) -> str:
        signal, noise = self.signal_scale, self.noise_scale
        return f"noise_step={self.noise_step}, signal={signal:.3f}, noise={noise:.3f}"
