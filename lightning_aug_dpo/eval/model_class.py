"""Which ``AugDPOModule`` subclass answers with a checkpoint: the one for its ``model_type``.

The evaluation jobs take a checkpoint of any shipped family. :data:`MODEL_CLASSES` maps the
``model_type`` of the checkpoint's ``config.json`` to the family's module class, by class path:
the class is imported only when a model is loaded, so ``eval`` stays free of Lightning. A user's
own subclass (or a ``model_type`` not listed here) is named by its class path instead
(``--model-class my_pkg.MyDPOModule``), and its ``__init__`` arguments that a training config
sets under ``model.init_args`` are given as ``--model-arg KEY=VALUE``.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from lightning_aug_dpo.errors import UserInputError

#: ``config.json`` ``model_type`` -> class path of the family's module.
MODEL_CLASSES: dict[str, str] = {
    "llava": "lightning_aug_dpo.models.llava.LlavaDPOModule",
    "llava_next": "lightning_aug_dpo.models.llava_next.LlavaNextDPOModule",
    "qwen2_vl": "lightning_aug_dpo.models.qwen2_vl.Qwen2VLDPOModule",
    "qwen2_5_vl": "lightning_aug_dpo.models.qwen2_5_vl.Qwen2_5_VLDPOModule",
    "qwen3_vl": "lightning_aug_dpo.models.qwen3_vl.Qwen3VLDPOModule",
    "gemma3": "lightning_aug_dpo.models.gemma3.Gemma3DPOModule",
    "internvl": "lightning_aug_dpo.models.internvl.InternVLDPOModule",
    "smolvlm": "lightning_aug_dpo.models.smolvlm.SmolVLMDPOModule",
    "idefics3": "lightning_aug_dpo.models.smolvlm.SmolVLMDPOModule",  # same modules, older name
}

#: Module arguments the jobs set from their own options (``--model-arg`` may not set them).
JOB_ARGS: dict[str, str] = {
    "model_name_or_path": "--model",
    "init_adapter": "--adapter",
    "torch_dtype": "--dtype",
    "trust_remote_code": "--trust-remote-code",
}

CLASS_FIX = "give --model-class my_pkg.MyDPOModule (an AugDPOModule subclass for this checkpoint)"


class ModelClassError(UserInputError):
    """The module class of a checkpoint cannot be found, imported or built as asked."""


def read_model_type(model: str) -> tuple[str, str]:
    """``(model_type, where)`` of ``model``'s ``config.json``: a local checkpoint folder, or a
    hub id (read through the Hugging Face cache, or downloaded when online)."""
    path = Path(model)
    if path.exists():
        where = str(path / "config.json") if path.is_dir() else str(path)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelClassError(
                f"{where}: not found; --model must be a checkpoint folder with config.json (as "
                "save_pretrained writes it, e.g. a run's merged/ export) or a hub id"
            )
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelClassError(
                f"{where}: cannot read it as JSON ({err}); restore the checkpoint's config.json"
            ) from err
    else:
        from transformers import PretrainedConfig

        where = f"config.json of hub id {model}"
        try:
            config, _ = PretrainedConfig.get_config_dict(model)
        except (OSError, ValueError) as err:
            raise ModelClassError(
                f"--model {model}: neither a local folder nor a hub id whose config.json can be "
                f"read ({err}); give a checkpoint folder, or download the model first "
                "(huggingface-cli download REPO --local-dir DIR) and give DIR"
            ) from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise ModelClassError(
            f"{where}: has no model_type, so the module class cannot be chosen; {CLASS_FIX}"
        )
    return model_type, where


def class_path_for(model: str) -> str:
    """The class path of the module for ``model``'s ``model_type`` (see :data:`MODEL_CLASSES`)."""
    model_type, where = read_model_type(model)
    if model_type not in MODEL_CLASSES:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise ModelClassError(
            f"{where}: model_type {model_type!r} has no module class in lightning_aug_dpo "
            f"(known model types: {known}); for another family, {CLASS_FIX}"
        )
    return MODEL_CLASSES[model_type]


def import_module_class(class_path: str, option: str = "--model-class") -> type:
    """The ``AugDPOModule`` subclass ``class_path`` names (``package.module.ClassName``)."""
    from lightning_aug_dpo.module import AugDPOModule

    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name:
        raise ModelClassError(
            f"{option} {class_path}: not a class path; write the module and the class, "
            "e.g. my_pkg.models.MyDPOModule"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelClassError(
            f"{option} {class_path}: cannot import {module_name} ({err}); install the package "
            "that defines it or add its folder to PYTHONPATH"
        ) from err
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelClassError(
            f"{option} {class_path}: {module_name} has no {name}; check the spelling of the class"
        )
    if not (isinstance(cls, type) and issubclass(cls, AugDPOModule)):
        raise ModelClassError(
            f"{option} {class_path}: not a subclass of lightning_aug_dpo.AugDPOModule; the jobs "
            "load, preprocess and generate through its hooks, so name such a subclass"
        )
    return cls


def module_class(model: str, class_path: str | None = None) -> type:
    """``class_path`` imported when given (a user's subclass), else the class of ``model``'s
    ``model_type``."""
    if class_path:
        return import_module_class(class_path)
    return import_module_class(class_path_for(model), option=f"model class of {model}")


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Named ``__init__`` arguments of ``cls`` and of the classes its ``**kwargs`` pass on to
    (up to ``AugDPOModule``), by name."""
    from lightning_aug_dpo.module import AugDPOModule

    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, AugDPOModule):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                params.setdefault(name, param)
        if klass is AugDPOModule:
            break
    return params


def parse_model_args(pairs: list[str] | None, cls: type) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` options as keyword arguments of ``cls``: each VALUE is read as
    JSON (``512``, ``false``, ``null``, ``["q_proj"]``), else kept as a string."""
    known = init_parameters(cls)
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelClassError(
                f"--model-arg {pair!r}: write KEY=VALUE, e.g. --model-arg image_size=512"
            )
        if key in JOB_ARGS:
            raise ModelClassError(f"--model-arg {key}: set it with {JOB_ARGS[key]} instead")
        if key not in known:
            names = ", ".join(sorted(set(known) - set(JOB_ARGS)))
            raise ModelClassError(
                f"--model-arg {key}: {cls.__name__} takes no argument {key!r}; its arguments: "
                f"{names}"
            )
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out
