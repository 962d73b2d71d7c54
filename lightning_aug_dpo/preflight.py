"""The up-front check: every cheap-to-check value of a run, before anything is built.

``lightning-aug-dpo fit|validate|test|predict`` runs :func:`run_problems` on the parsed
configuration before it instantiates a class, so that a 7B run with a mistyped folder stops in
seconds instead of after minutes of ``from_pretrained``. It checks:

* paths: the model (a checkpoint folder with ``config.json``, or something shaped like a hub id
  ``owner/name``), ``model.init_adapter``, ``data.data_path`` / ``data.pairs_path`` and
  ``data.image_folder``;
* the data file itself (its rows parse) and a spread sample of its rows' images (they decode):
  with ``data.on_bad_image: error`` any bad one is a problem; with ``skip``, a sample whose bad
  share passes ``data.max_bad_fraction`` (a wrong ``image_folder`` makes it 100%);
* numbers in range: batch size, workers, lengths, LoRA rank / alpha / dropout, learning rate
  (the loss checks its own beta when built, and that error joins these);
* the accelerator: ``gpu`` / ``cuda`` / ``mps`` must exist on this machine.

Every problem is collected, each naming its YAML key, the value and the fix; the CLI prints them
all and exits 2 (:class:`~lightning_aug_dpo.validation.ConfigError`). Checks that need the model's
own config (LoRA targets, image size, ``max_length`` against the image tokens) run later, still
before the weights load (:func:`lightning_aug_dpo.validation.check_config`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SAMPLE_IMAGES = 16  # rows whose images are decoded up front (spread over the file)
DATA_KEYS = ("data_path", "pairs_path")


def _args(section: Any) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of a parsed ``class_path`` section (or a plain mapping)."""
    if section is None:
        return "", {}
    as_dict = dict(section.as_dict() if hasattr(section, "as_dict") else section)
    if "class_path" in as_dict:
        return as_dict["class_path"], dict(as_dict.get("init_args") or {})
    return "", as_dict


def _number(problems: list[str], key: str, value: Any, low: float, fix: str, **kw: Any) -> None:
    """``value`` must be a number >= ``low`` (> ``low`` with ``strict=True``, < ``high``)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return  # absent (a default applies) or a type the parser already checked
    strict, high = kw.get("strict", False), kw.get("high")
    bad = value <= low if strict else value < low
    if bad or (high is not None and value >= high):
        problems.append(f"{key}={value!r} is out of range. Fix: {fix}")


def model_path_problem(key: str, value: Any) -> str | None:
    """A model location must be a checkpoint folder (``config.json``) or shaped like a hub id."""
    if not value:
        return f"{key} is not set. Fix: a checkpoint folder or a hub id (owner/name)"
    path = Path(str(value)).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return (
            f"{key}={value!r} is a folder without config.json, not a model checkpoint. Fix: "
            "point it at the folder that holds config.json and the weights"
        )
    if path.exists():
        return f"{key}={value!r} is a file, not a model folder. Fix: give its folder"
    looks_local = str(value).startswith(("/", ".", "~")) or str(value).count("/") != 1
    if looks_local or not HUB_ID.fullmatch(str(value)):
        return (
            f"{key}={value!r}: no such folder, and not a hub id (owner/name). Fix: the path of "
            "a checkpoint folder (with config.json), or a hub id such as llava-hf/llava-1.5-7b-hf"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(str(value), "config.json"), str):
            return (
                f"{key}={value!r}: no such folder, and HF_HUB_OFFLINE is set but this hub id "
                "is not in the local cache. Fix: download it first (hf download "
                f"{value}), or give the path of a checkpoint folder"
            )
    return None


def model_problems(args: Mapping[str, Any]) -> list[str]:
    """Problems of ``model.init_args`` (an ``AugDPOModule``'s arguments)."""
    problems = []
    if "model_name_or_path" in args:
        problem = model_path_problem("model.model_name_or_path", args["model_name_or_path"])
        problems += [problem] if problem else []
    adapter = args.get("init_adapter")
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        problems.append(
            f"model.init_adapter={adapter!r} holds no adapter_config.json. Fix: the folder of "
            "a PEFT adapter (a run's adapter/ or checkpoints/*-adapter/), or null"
        )
    _number(problems, "model.lora_r", args.get("lora_r"), 1, "an integer >= 1 (SeVa: 1024)")
    _number(problems, "model.lora_alpha", args.get("lora_alpha"), 0, "> 0 (SeVa: 2048)",
            strict=True)  # fmt: skip
    _number(problems, "model.lora_dropout", args.get("lora_dropout"), 0, "0 <= p < 1 (SeVa: 0)",
            high=1)  # fmt: skip
    _number(problems, "model.max_length", args.get("max_length"), 1, ">= 1 (SeVa: 2048)")
    _number(problems, "model.modules_to_save_lr", args.get("modules_to_save_lr"), 0,
            "a learning rate > 0, or null for the optimizer's", strict=True)  # fmt: skip
    _, optimizer = _args(args.get("optimizer"))
    _number(problems, "model.optimizer.init_args.lr", optimizer.get("lr"), 0,
            "a learning rate >= 0 (SeVa: 2e-6 for r=1024)")  # fmt: skip
    return problems  # the loss checks its own beta when it is built (same message, same run)


def data_problems(args: Mapping[str, Any], conversations: bool = False) -> list[str]:
    """Problems of ``data.init_args``: paths, the rows, a sample of images, numbers.
    ``conversations``: the file is read as SFT conversations (``SFTDataModule``)."""
    problems: list[str] = []
    _number(problems, "data.batch_size", args.get("batch_size"), 1, "an integer >= 1")
    _number(problems, "data.num_workers", args.get("num_workers"), 0, "0 (main process) or more")
    _number(problems, "data.max_new_tokens", args.get("max_new_tokens"), 1, ">= 1 (SeVa: 512)")
    _number(problems, "data.num_prompts", args.get("num_prompts"), 1, ">= 1, or null for all")
    _number(problems, "data.num_samples", args.get("num_samples"), 1, ">= 1, or null for all")
    _number(problems, "data.max_bad_fraction", args.get("max_bad_fraction"), 0,
            "a fraction in [0, 1] (0.1: stop when more than 1 image in 10 is bad)",
            high=1.000001)  # fmt: skip
    folder = args.get("image_folder")
    if folder is not None and not Path(folder).expanduser().is_dir():
        problems.append(
            f"data.image_folder={folder!r}: no such folder. Fix: the folder the data file's "
            "image paths are relative to (for LLaVA-665k: the folder holding coco/, gqa/, ...)"
        )
        folder = None
    key = next((k for k in DATA_KEYS if args.get(k)), None)
    if key is None:
        return problems
    path = Path(args[key]).expanduser()
    if not path.is_file():
        fix = "a pairs file (JSONL)" if key == "pairs_path" else "a prompt file (.json, .jsonl)"
        problems.append(f"data.{key}={args[key]!r}: no such file. Fix: the path of {fix}")
        return problems
    on_bad = args.get("on_bad_image", "error")
    try:
        rows = _read_rows(key, path, on_bad, conversations)
    except (OSError, ValueError) as err:  # the loaders' messages name the file, row and fix
        problems.append(f"data.{key}: {err}")
        return problems
    if not rows:
        problems.append(f"data.{key}={args[key]!r} holds no usable row. Fix: check the file")
    elif folder is not None:
        problems += image_sample_problems(rows, Path(folder), args)
    return problems


def _read_rows(key: str, path: Path, on_bad: str, conversations: bool) -> Sequence[Any]:
    """The file's rows through the loader the DataModule uses (the same errors)."""
    if key == "pairs_path":
        from lightning_aug_dpo.data.pairs import load_pairs

        return load_pairs(path, on_bad_row=on_bad).pairs
    if conversations:
        from lightning_aug_dpo.data.sft import load_conversations

        return load_conversations(path, on_bad_row=on_bad).conversations
    from lightning_aug_dpo.data.prompts import load_prompts

    return load_prompts(path, on_bad_row=on_bad).prompts


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def image_sample_problems(rows: Sequence[Any], folder: Path, args: Mapping[str, Any]) -> list[str]:
    """Decode the images of :data:`SAMPLE_IMAGES` rows spread over the file."""
    from lightning_aug_dpo.data.images import DEFAULT_MAX_PIXELS, BadImageError, load_image
    from lightning_aug_dpo.data.prompts import escapes_folder

    max_pixels = args.get("max_image_pixels", DEFAULT_MAX_PIXELS)
    sample = [rows[i] for i in spread(len(rows), SAMPLE_IMAGES)]
    bad: list[tuple[str, str]] = []
    for row in sample:
        if escapes_folder(row.image) and not args.get("allow_outside_paths"):
            continue  # refused per row by the DataModule (data.allow_outside_paths)
        try:
            load_image(folder / row.image, max_pixels)
        except BadImageError as err:
            bad.append((err.path, err.reason))
    if not bad:
        return []
    reasons = Counter(reason.split(" (")[0] for _, reason in bad)
    counted = ", ".join(f"{reason}: {n} of {len(sample)}" for reason, n in reasons.most_common())
    listed = "; ".join(f"{path} ({reason})" for path, reason in bad)  # <= SAMPLE_IMAGES
    where = f"data.image_folder={str(folder)!r}"
    if args.get("on_bad_image", "error") == "error":
        return [
            f"{where}: sampled images of the data file are unusable ({counted}): {listed}. "
            "Fix: point data.image_folder at the folder the rows' paths are relative to, or "
            "set data.on_bad_image: skip to train without the bad ones"
        ]
    limit = args.get("max_bad_fraction", 0.1)
    if limit is not None and len(bad) / len(sample) > limit:
        return [
            f"{where}: {counted} sampled images are unusable, over data.max_bad_fraction="
            f"{limit} ({listed}). Fix: point data.image_folder at the folder the rows' paths "
            "are relative to (or raise data.max_bad_fraction)"
        ]
    return []


def trainer_problems(args: Mapping[str, Any]) -> list[str]:
    """The accelerator must exist on this machine."""
    import torch

    accelerator = str(args.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [
            f"trainer.accelerator={accelerator!r}, but this machine has no CUDA device "
            "(torch.cuda.is_available() is False). Fix: --trainer.accelerator cpu (or auto), "
            "or install a CUDA build of torch on a machine with an NVIDIA GPU"
        ]
    mps = getattr(torch.backends, "mps", None)
    if accelerator == "mps" and not (mps is not None and mps.is_available()):
        return ["trainer.accelerator='mps' needs Apple silicon. Fix: --trainer.accelerator cpu"]
    return []


def run_problems(config: Mapping[str, Any]) -> list[str]:
    """Every problem of one subcommand's parsed config (``model``, ``data``, ``trainer``)."""
    _, model = _args(config.get("model"))
    data_class, data = _args(config.get("data"))
    _, trainer = _args(config.get("trainer"))
    sft = _is_sft(data_class)
    return model_problems(model) + data_problems(data, sft) + trainer_problems(trainer)


def _is_sft(class_path: str) -> bool:
    """Whether ``class_path`` names an ``SFTDataModule`` (or a subclass of it)."""
    import importlib

    from lightning_aug_dpo.data.sft import SFTDataModule

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False  # the parser has resolved it already; an odd path is not ours to judge
    return isinstance(cls, type) and issubclass(cls, SFTDataModule)
