"""The contract every augmentation follows: sample parameters from a seed, then apply them.

An :class:`Augmentation` turns the CLEAN normalised model input ``(B, 3, H, W)`` into SeVa's
rejected image. Each sample gets its own integer seed; parameters are drawn from that seed alone
(on a CPU generator, whatever the device) and then applied, so that

* the same seed gives the same augmentation across runs, batch sizes, ranks and devices, and
* every augmented image carries a JSON *record* (preset, strength, parameters, seed) from which
  :func:`~lightning_aug_dpo.augment.replay` rebuilds it.

Augmentations work in one of two spaces: ``"normalized"`` (the model input itself, as SeVa's
diffusion noise) or ``"pixel"`` (RGB in [0, 1], as the torchvision transforms SeVa applied to the
PIL image). Pixel-space augmentations un-normalise with the model's mean/std, augment, clamp to
[0, 1] and normalise again; mean and std are part of their record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

Space = Literal["pixel", "normalized"]

# CLIP's statistics (LLaVA-1.5's vision tower); the DataModule installs the model's own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU default generator seeded by ``seed``, restoring it afterwards.

    Only the CPU generator is touched (CUDA streams differ per seed and per device); libraries
    that sample on the default generator (Kornia, ``torch.rand``) become reproducible inside.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def to_jsonable(value: Any) -> Any:
    """Tensors, Kornia ``ParamItem`` trees and numbers -> plain JSON values."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "name") and hasattr(value, "data"):  # kornia ParamItem (a NamedTuple)
        return {"name": value.name, "data": to_jsonable(value.data)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return repr(value)


class Augmentation(nn.Module, ABC):
    """Base class: ``forward(images, seeds) -> (augmented, records)``.

    Subclasses implement :meth:`sample` (seed -> parameters), :meth:`apply` (one image and its
    parameters -> augmented image, in :attr:`space`) and :meth:`config` (the JSON that rebuilds
    the augmentation with :func:`~lightning_aug_dpo.augment.build_augmentation`). Subclasses whose
    corruption has a magnitude also implement the :attr:`strength` property, in [0, 1].

    Images are augmented one at a time: that is what makes an image's result independent of the
    batch it came in (batched kernels may pick other algorithms for other batch sizes).
    """

    space: Space = "pixel"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ what subclasses define
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON that rebuilds this augmentation (``build_augmentation``); the seed is added."""

    @abstractmethod
    def sample(self, shape: torch.Size, seed: int) -> Any:
        """Parameters for one image of ``shape`` (C, H, W), drawn from ``seed`` only."""

    @abstractmethod
    def apply(self, image: torch.Tensor, params: Any) -> torch.Tensor:
        """Augment one ``(1, C, H, W)`` image, in :attr:`space`, with sampled ``params``."""

    def record_params(self, params: Any) -> Any:
        """The JSON form of ``params`` written to records (drop what the seed rebuilds)."""
        return to_jsonable(params)

    @property
    def strength(self) -> float:
        raise TypeError(
            f"{type(self).__name__} has no strength; use a named preset "
            "(lightning_aug_dpo.augment.Preset) for strength control and the adaptive mode"
        )

    @strength.setter
    def strength(self, value: float) -> None:
        self.strength  # noqa: B018 - raises the TypeError above

    # ------------------------------------------------------------------ shared machinery
    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Install the model's normalisation (pixel-space augmentations undo and redo it)."""
        device = self.mean.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(device).clone().view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(device).clone().view(1, 3, 1, 1)

    def full_config(self) -> dict[str, Any]:
        """:meth:`config` plus the space and, for pixel space, the normalisation used."""
        out = {**self.config(), "space": self.space}
        if self.space == "pixel":
            out["mean"] = [float(m) for m in self.mean.flatten()]
            out["std"] = [float(s) for s in self.std.flatten()]
        return out

    def _into_space(self, images: torch.Tensor) -> torch.Tensor:
        if self.space == "normalized":
            return images
        mean, std = self.mean.to(images), self.std.to(images)
        return (images * std + mean).clamp(0.0, 1.0)

    def _out_of_space(self, images: torch.Tensor) -> torch.Tensor:
        if self.space == "normalized":
            return images
        mean, std = self.mean.to(images), self.std.to(images)
        return (images.clamp(0.0, 1.0) - mean) / std

    def augment_one(self, image: torch.Tensor, seed: int) -> tuple[torch.Tensor, Any]:
        """One normalised ``(1, C, H, W)`` image -> (augmented normalised image, raw params)."""
        with seeded(seed):
            params = self.sample(image.shape[1:], seed)
            # float32 whatever the model dtype: Kornia kernels and the records are float32
            out = self.apply(self._into_space(image.float()), params)
        return self._out_of_space(out).to(image.dtype), params

    def forward(
        self, images: torch.Tensor, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Augment normalised ``(B, 3, H, W)`` images, one seed each; returns one record each."""
        if images.ndim != 4 or len(seeds) != images.shape[0]:
            raise ValueError(
                f"expected (B, C, H, W) images and B seeds, got {tuple(images.shape)} and "
                f"{len(seeds)} seeds"
            )
        config = self.full_config()
        outs, records = [], []
        for i, seed in enumerate(seeds):
            out, params = self.augment_one(images[i : i + 1], int(seed))
            outs.append(out)
            records.append({**config, "seed": int(seed), "params": self.record_params(params)})
        if not outs:
            return images.clone(), []
        return torch.cat(outs), records
