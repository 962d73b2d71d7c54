"""Rebuild an augmented image from its record (``PreferenceBatch.meta`` rows, pairs files)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_aug_dpo.augment.base import Augmentation
from lightning_aug_dpo.augment.diffusion import DiffusionNoise
from lightning_aug_dpo.augment.identity import Identity
from lightning_aug_dpo.augment.kornia_augment import KorniaAugmentation
from lightning_aug_dpo.augment.presets import PRESET_NAMES, Preset


def build_augmentation(record: dict[str, Any]) -> Augmentation:
    """The augmentation a record came from (preset, strength, space and normalisation)."""
    kind = record.get("preset")
    if kind == "kornia":
        if record.get("kwargs") is None:
            raise ValueError(
                f"record of {record.get('transform')} was made from a Kornia object, not a class "
                "path with kwargs; pass that augmentation: replay(record, image, augmentation=...)"
            )
        aug: Augmentation = KorniaAugmentation(record["transform"], record["kwargs"])
    elif kind == "diffusion" and "noise_step" in record:
        step = record["noise_step"]
        aug = DiffusionNoise(
            noise_step=step if isinstance(step, int) else tuple(step),
            num_steps=record.get("num_steps", 1000),
            space=record.get("space", "normalized"),
        )
    elif kind == "identity":
        aug = Identity()
    elif kind in PRESET_NAMES:
        aug = Preset(kind, record["strength"])
    else:
        raise ValueError(
            f"cannot rebuild an augmentation from record {record!r}: unknown preset {kind!r}"
        )
    if "mean" in record:
        aug.set_normalization(record["mean"], record["std"])
    return aug


def replay(
    record: dict[str, Any],
    image: torch.Tensor,
    augmentation: Augmentation | None = None,
    check_params: bool = True,
) -> torch.Tensor:
    """The augmented image of ``record``, rebuilt from the clean normalised ``image``.

    Args:
        record: an augmentation record (``meta["rows"][i]["augmentation"]`` or a pairs file's).
        image: the clean model input it was made from, ``(3, H, W)`` or ``(1, 3, H, W)``, as in
            ``PreferenceBatch.pixel_values``.
        augmentation: the augmentation object, needed only for records of Kornia objects given
            without kwargs.
        check_params: fail if the re-drawn parameters differ from the recorded ones (another
            Kornia or torch version samples differently).

    Exact on CPU; on a GPU equal to its own run's result and within float error of the CPU one.
    """
    aug = augmentation if augmentation is not None else build_augmentation(record)
    single = image.ndim == 3
    batch = image[None] if single else image
    aug = aug.to(batch.device)
    out, params = aug.augment_one(batch, int(record["seed"]))
    if check_params and "params" in record:
        redrawn = aug.record_params(params)
        if redrawn != record["params"]:
            raise ValueError(
                f"replayed parameters {redrawn} differ from the recorded {record['params']}: the "
                "record was made with other library versions or another augmentation"
            )
    return out[0] if single else out
