"""Safe loading of weights: safetensors only, no code shipped with a checkpoint unless asked.

A PyTorch pickle (``pytorch_model.bin``, ``adapter_model.bin``) can run code when unpickled, and
a checkpoint's ``auto_map`` can name Python files that ``trust_remote_code=True`` imports. So:

- models go through ``from_pretrained(..., use_safetensors=True)`` (:func:`model_kwargs`); a local
  folder that holds only ``.bin`` weights is refused up front with the fix, not with
  transformers' bare "no file named model.safetensors";
- ``trust_remote_code`` is ``False`` unless the user sets it (``model.trust_remote_code``);
- adapters (``init_adapter``) load only from a local folder with ``adapter_model.safetensors``
  whose header checks out (:func:`load_adapter`): PEFT itself would fall back to the pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays a lazy import for the judges in eval/
    from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def require_safetensors_model(path: str | Path) -> None:
    """Refuse a local model folder whose weights are only PyTorch pickles. Hub ids and folders
    without weight files pass: ``from_pretrained(use_safetensors=True)`` then decides."""
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.glob("*.bin") if p.name != "training_args.bin")
    if pickles:
        raise FileNotFoundError(
            f"{path}: holds PyTorch pickle weights only ({', '.join(pickles[:3])}) and no "
            "*.safetensors; pickles can run code when loaded, so they are not read. Convert "
            "them once, where you trust the file: from_pretrained(DIR, use_safetensors=False)"
            ".save_pretrained(NEW_DIR) writes safetensors; then load NEW_DIR"
        )


def model_kwargs(path: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Keyword arguments for a model's ``from_pretrained(path, ...)``, after checking that a
    local ``path`` has safetensors weights."""
    require_safetensors_model(path)
    return {"use_safetensors": True, "trust_remote_code": trust_remote_code}


def check_adapter_dir(path: str | Path) -> Path:
    """``path`` as a ``Path`` after checking that it is a complete PEFT adapter folder in
    safetensors format; ``FileNotFoundError`` / ``ValueError`` naming the file and the fix."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: adapter folder not found; give a folder written by save_adapter or by "
            f"PEFT's save_pretrained ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}); download a hub "
            "adapter first (huggingface-cli download REPO --local-dir DIR)"
        )
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise FileNotFoundError(
                f"{path}: holds adapter_model.bin (a PyTorch pickle, which can run code when "
                f"loaded) and no {ADAPTER_WEIGHTS}. Convert it once, where you trust the file: "
                "PeftModel.from_pretrained(base, DIR).save_pretrained(NEW_DIR) writes "
                "safetensors; then use NEW_DIR"
            )
        raise FileNotFoundError(f"{weights}: not found; {path} is not a PEFT adapter folder")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:  # reads the header only
            handle.keys()
    except SafetensorError as err:
        raise ValueError(
            f"{weights}: not a complete safetensors file ({err}); the adapter was cut short or "
            "damaged: use another copy, or save it again"
        ) from err
    config = path / ADAPTER_CONFIG
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{config}: not found; the adapter folder is incomplete") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config}: not valid JSON ({err}); the adapter is damaged") from err
    return path


def load_adapter(model: nn.Module, path: str | Path, is_trainable: bool) -> nn.Module:
    """``PeftModel.from_pretrained(model, path)`` for a checked safetensors adapter folder."""
    from peft import PeftModel

    folder = check_adapter_dir(path)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
