"""``Identity``: the unchanged image, for controls.

With sampled rollouts (``data.sampling.do_sample``) the two answers of a pair are then two
independent samples on the same clean image, in random order: the control that tells how much
of SeVa's effect comes from the augmentation rather than from DPO on self-generated pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_aug_dpo.augment.base import Augmentation


class Identity(Augmentation):
    """Returns the image as it is (records say ``preset: identity``; replay is exact)."""

    space = "normalized"

    def config(self) -> dict[str, Any]:
        return {"preset": "identity"}

    def sample(self, shape: torch.Size, seed: int) -> None:
        return None

    def apply(self, image: torch.Tensor, params: Any) -> torch.Tensor:
        return image.clone()
