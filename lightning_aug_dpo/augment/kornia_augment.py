"""Any Kornia augmentation as an :class:`Augmentation`: seeded parameters, then application.

Kornia already separates ``forward_parameters`` (sampling) from applying given ``params``; this
wrapper draws each image's parameters from its own seed and keeps them in the record. In YAML::

    augmentation:
      class_path: lightning_aug_dpo.KorniaAugmentation
      init_args:
        transform: kornia.augmentation.RandomGaussianBlur
        kwargs: {kernel_size: 9, sigma: [0.5, 2.0], p: 1.0}

or give the Kornia class itself as ``class_path`` (it is wrapped; records then name the class, and
:func:`replay` needs the augmentation passed in, since Kornia objects do not keep their arguments).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch
from kornia.augmentation.container.params import ParamItem
from torch import nn

from lightning_aug_dpo.augment.base import Augmentation


class KorniaTransform(Protocol):
    """Any Kornia augmentation (``kornia.augmentation.RandomGaussianBlur``, ...) by
    ``class_path``: a module whose ``forward_parameters(batch_shape)`` samples its parameters.

    The type ``AugPairDataModule.augmentation`` accepts a Kornia class by: typed as
    ``torch.nn.Module`` its help listed every ``torch.nn`` class (890 lines), typed as Kornia's
    base class still ~60. A protocol is matched by what a class can do, not by its bases, so the
    parser accepts every Kornia augmentation (and ``AugmentationSequential``) and lists none.
    ``forward_parameters`` (sampling apart from applying) is what this wrapper relies on for
    seeded, replayable records.
    """

    # positional-only and ``Any``: the parser compares a class's signature with the protocol's,
    # and Kornia's names and annotations differ across classes and versions
    def forward_parameters(self, batch_shape: Any, /) -> Any:
        """The augmentation's parameters for a batch of ``batch_shape``."""


def import_object(path: str) -> Any:
    """``"package.module.Name"`` -> the object; a clear error names what failed."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import {path!r} ({err}); give a full dotted path such as "
            "'kornia.augmentation.RandomGaussianBlur'"
        ) from err


def params_to(params: Any, device: torch.device) -> Any:
    """Move a Kornia parameter tree (dicts, lists, ``ParamItem``) to ``device``."""
    if isinstance(params, torch.Tensor):
        return params.to(device)
    if isinstance(params, dict):
        return {k: params_to(v, device) for k, v in params.items()}
    if isinstance(params, ParamItem):
        return ParamItem(params.name, params_to(params.data, device))
    if isinstance(params, list):
        return [params_to(v, device) for v in params]
    return params


def qualified_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class KorniaAugmentation(Augmentation):
    """Wrap a Kornia augmentation (or an ``AugmentationSequential``) working on [0, 1] RGB.

    Args:
        transform: dotted path of a Kornia augmentation class, or an instance.
        kwargs: constructor arguments when ``transform`` is a path (part of the record).
    """

    space = "pixel"

    def __init__(self, transform: str | nn.Module, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(transform, str):
            self.transform_path: str = transform
            self.kwargs: dict[str, Any] | None = dict(kwargs or {})
            cls = import_object(transform)
            try:
                transform = cls(**self.kwargs)
            except TypeError as err:
                raise ValueError(f"bad kwargs for {self.transform_path}: {err}") from err
        else:
            if kwargs:
                raise ValueError("kwargs only apply when transform is given as a class path")
            self.transform_path = qualified_name(transform)
            self.kwargs = None
        if not isinstance(transform, nn.Module):
            raise ValueError(f"{self.transform_path} is not a torch module")
        self.transform = transform

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"preset": "kornia", "transform": self.transform_path}
        if self.kwargs is not None:
            out["kwargs"] = self.kwargs
        else:
            out["repr"] = repr(self.transform)
        return out

    def sample(self, shape: torch.Size, seed: int) -> Any:
        sample = getattr(self.transform, "forward_parameters", None)
        return sample(torch.Size((1, *shape))) if sample is not None else None

    def apply(self, image: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:  # a module without a parameter API: runs under the seeded generator
            return self.transform(image)
        # Parameters are sampled on the CPU (for replay anywhere); apply them on the image's device.
        return self.transform(image, params=params_to(params, image.device))
