"""What a LightningCLI YAML recipe says about a run's size, read without building anything.

:func:`read_recipe` turns ``configs/seva_llava15_7b.yaml`` (or any ``fit`` config of this project)
into a :class:`Recipe`: prompts per epoch, epochs, batch, accumulation, devices, rollout length,
LoRA settings, optimizer state and checkpoint callbacks; :func:`model_config_for` finds the
model's sizes. ``lightning_aug_dpo.recipe_cost`` does the arithmetic. Unset values take the
defaults of ``AugPairDataModule``, ``AugDPOModule`` and Lightning's ``Trainer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_aug_dpo.model_sizes import PUBLISHED_CONFIGS, complete_config

SEVA_PROMPTS = 16_000  # SeVa's recipe: 8,000 OCR-VQA + 8,000 TextCaps prompts
# Optimizer states per trainable parameter, fp32 each (a missing name counts as AdamW's two).
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "SGD": 1}


@dataclass(frozen=True)
class CheckpointPlan:
    """One checkpoint callback: when it saves and what it keeps (Lightning's own rules: steps
    win over epochs; neither set means every epoch; ``save_top_k`` without a monitor keeps the
    newest ``k``, -1 keeps all)."""

    every_n_train_steps: int = 0
    every_n_epochs: int = 1
    save_top_k: int = 1
    save_last: bool = False
    adapter: bool = False  # AdapterCheckpoint writes a PEFT adapter beside each .ckpt


@dataclass(frozen=True)
class Recipe:
    """The size-relevant values of a ``fit`` config."""

    source: str
    model_name_or_path: str
    model_args: dict[str, Any]
    prompts: int
    prompts_from: str
    epochs: int | None  # None: trainer.max_steps ends the run
    batch_size: int
    accumulate: int = 1
    devices: int = 1
    max_steps: int = -1
    max_new_tokens: int = 64
    num_samples: int = 1
    rollouts: bool = True
    rollout_model: str = "reference"
    optimizer: str = "AdamW"
    optimizer_states: int = 2
    checkpoints: tuple[CheckpointPlan, ...] = field(default_factory=tuple)
    export_merged: bool = False


def _init_args(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    return dict(node.get("init_args") or {}) if "class_path" in node else dict(node)


def _devices(source: str, value: Any) -> int:
    if value in (None, "auto", 1, "1"):
        return 1  # "auto" on one GPU; plan several with --devices N
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int | str) and str(value).isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(
        f"{source}: trainer.devices is {value!r}; set a number of GPUs (or pass --devices N)"
    )


def _count_rows(path: Path) -> int:
    """Prompt rows in a ``{image, text}`` JSONL file (non-empty lines) or a LLaVA JSON list
    (rows with an image)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    rows = json.loads(path.read_text(encoding="utf-8"))
    return sum(1 for row in rows if isinstance(row, dict) and "image" in row)


def _prompts(source: str, data: dict[str, Any], override: int | None) -> tuple[int, str]:
    """Training prompts (or pairs) per epoch and where that number came from."""
    repeat = int(data.get("pairs_repeat") or 1) if data.get("pairs_path") else 1
    held_out = int(data.get("num_val_prompts") or 0)
    if override is not None:
        return override, "--num-prompts"
    if data.get("num_prompts"):
        return int(data["num_prompts"]) * repeat, "data.num_prompts"
    path = Path(data.get("pairs_path") or data.get("data_path") or "")
    if path.is_file():
        rows = _count_rows(path)
        return (rows - held_out) * repeat, f"{path}: {rows:,} rows"
    if data.get("pairs_path"):
        raise ValueError(
            f"{source}: data.pairs_path {path} not found; pass --num-prompts N (its pairs)"
        )
    return SEVA_PROMPTS - held_out, f"SeVa's {SEVA_PROMPTS:,}; {path} not found"


def _checkpoints(trainer: dict[str, Any]) -> tuple[CheckpointPlan, ...]:
    plans = []
    for callback in trainer.get("callbacks") or []:
        name = str(callback.get("class_path", "")) if isinstance(callback, dict) else ""
        if not name.endswith("Checkpoint"):
            continue
        args = _init_args(callback)
        steps = int(args.get("every_n_train_steps") or 0)
        epochs = args.get("every_n_epochs")
        plans.append(
            CheckpointPlan(
                every_n_train_steps=steps,
                every_n_epochs=int(epochs if epochs is not None else (0 if steps else 1)),
                save_top_k=int(args.get("save_top_k", 1)),
                save_last=args.get("save_last") is True,  # "link" writes no second file
                adapter=name.endswith("AdapterCheckpoint"),
            )
        )
    if not plans and trainer.get("enable_checkpointing", True) is not False:
        plans.append(CheckpointPlan())  # Lightning's default ModelCheckpoint
    return tuple(plans)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, objects merged key by key, anything else replaced (how
    several ``--config`` files combine)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def read_recipe(
    paths: str | Path | list[str | Path],
    num_prompts: int | None = None,
    devices: int | None = None,
) -> Recipe:
    """The :class:`Recipe` of a ``fit`` YAML config, or of several applied in order (a recipe
    and overlays such as ``configs/multigpu/ddp.yaml``).

    Prompts per epoch: ``num_prompts`` if given, else ``data.num_prompts``, else the rows of
    ``data.data_path`` (or ``data.pairs_path`` x ``pairs_repeat``) when that file exists, less
    ``data.num_val_prompts``, else SeVa's 16,000. ``devices`` overrides ``trainer.devices``.
    """
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    config: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: config not found; pass a fit config, e.g. configs/seva_llava15_7b.yaml"
            )
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: not a LightningCLI config (a YAML mapping)")
        config = _merge(config, loaded)
    source = " + ".join(map(str, paths))
    trainer = config.get("trainer") or {}
    model = _init_args(config.get("model"))
    data = _init_args(config.get("data"))
    if "model_name_or_path" not in model:
        raise ValueError(f"{source}: model.init_args.model_name_or_path is not set")
    if model.get("finetune", "lora") != "lora":
        raise ValueError(
            f"{source}: model.finetune {model['finetune']!r}: only LoRA recipes are planned here"
        )
    epochs, max_steps = trainer.get("max_epochs"), int(trainer.get("max_steps", -1) or -1)
    if epochs is None and max_steps < 1:
        raise ValueError(
            f"{source}: trainer.max_epochs is not set (Lightning would run up to "
            "1000 epochs); set it, or trainer.max_steps"
        )
    prompts, prompts_from = _prompts(source, data, num_prompts)
    optimizer = str((model.get("optimizer") or {}).get("class_path", "AdamW")).split(".")[-1]
    states = OPTIMIZER_STATES.get(optimizer, 2)
    if optimizer == "SGD" and not _init_args(model.get("optimizer")).get("momentum"):
        states = 0
    sampling = _init_args(data.get("sampling"))
    return Recipe(
        source=source,
        model_name_or_path=str(model["model_name_or_path"]),
        model_args=model,
        prompts=prompts,
        prompts_from=prompts_from,
        epochs=int(epochs) if epochs is not None else None,
        batch_size=int(data.get("batch_size", 8)),
        accumulate=int(trainer.get("accumulate_grad_batches", 1)),
        devices=devices or _devices(source, trainer.get("devices")),
        max_steps=max_steps,
        max_new_tokens=int(data.get("max_new_tokens", 64)),
        num_samples=int(sampling.get("num_samples", 1)),
        rollouts=not data.get("pairs_path"),
        rollout_model=str(data.get("rollout_model", "reference")),
        optimizer=optimizer,
        optimizer_states=states,
        checkpoints=_checkpoints(trainer),
        export_merged=bool(model.get("export_merged", False)),
    )


def model_config_for(
    recipe: Recipe, model_config: str | Path | None = None
) -> tuple[dict[str, Any], str]:
    """The model's completed ``config.json`` dict and where it came from: ``model_config`` if
    given, else ``config.json`` in a local ``model_name_or_path`` folder, else the published
    sizes of a known checkpoint (LLaVA-1.5 7B and 13B)."""
    name = recipe.model_name_or_path
    path = Path(model_config) if model_config else Path(name) / "config.json"
    if model_config or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: model config not found; pass the checkpoint's config.json"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: not valid JSON ({err}); pass the checkpoint's config.json"
            ) from None
        return complete_config(raw, str(path)), str(path)
    if name in PUBLISHED_CONFIGS:
        return complete_config(PUBLISHED_CONFIGS[name], name), "its published config.json"
    raise ValueError(
        f"{recipe.source}: no sizes known for model_name_or_path {name!r}; pass "
        f"--model-config path/to/config.json (known: {sorted(PUBLISHED_CONFIGS)})"
    )
