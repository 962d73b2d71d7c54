"""What an exported adapter or merged model says about itself, and where it says it.

Every ``adapter/``, ``checkpoints/*-adapter/`` and ``merged/`` folder a run writes is finished
here, inside the atomic write:

* ``adapter_config.json`` names its base model by a path that works from any folder (absolute)
  or by its hub id: PEFT records the string the run was given, often a relative path;
* the adapter's tensors are stored in the model's ``torch_dtype`` (an r=1024 bf16 adapter is
  half its float32 size). The ``.ckpt`` files keep the float32 trainable tensors and optimizer
  state, so a resume stays exact; an export is for inference and merging, where the base runs in
  ``torch_dtype`` anyway;
* ``README.md`` is a real model card instead of PEFT's empty template: base model, method and
  recipe (loss, beta, LoRA, learning rate, steps, pairs kept), data file and counts, and the
  run's evaluation (before -> after where a callback measured it).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

METHOD = (
    "SeVa (self-supervised visual preference alignment, arXiv 2404.10501): DPO on pairs of the "
    "model's own answers to an image (chosen) and to an augmented copy of it (rejected); no "
    "human or model-judge labels."
)
SFT = "Supervised fine-tuning (visual instruction tuning) on image conversations."
EVAL_PREFIXES = ("toy/", "mmvet/", "llava_bench/", "pope/", "val/")


def portable_base(name_or_path: str) -> str:
    """An existing local path made absolute; anything else (a hub id) as it is."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def finish_adapter_folder(folder: Path, base: str, dtype: torch.dtype, card: str) -> None:
    """Absolute base path in ``adapter_config.json``, tensors in ``dtype``, the model card."""
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = portable_base(base)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = folder / "adapter_model.safetensors"
    if dtype != torch.float32 and weights.is_file():
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(cast, str(weights), metadata={"format": "pt"})
    (folder / "README.md").write_text(card)


def _version() -> str:
    try:
        return metadata.version("lightning_aug_dpo")
    except metadata.PackageNotFoundError:
        return "unknown"


def _class_args(obj: Any, names: tuple[str, ...]) -> str:
    shown = [f"{n}={getattr(obj, n)!r}" for n in names if hasattr(obj, n)]
    return f"{type(obj).__name__}({', '.join(shown)})"


def recipe_rows(module: Any) -> list[tuple[str, str]]:
    """``(what, value)`` rows of the training recipe, read from the module and its trainer."""
    hp = module.hparams
    rows = [] if is_sft(module) else [
        ("loss", _class_args(module.loss, ("beta", "label_smoothing", "gamma", "alpha")))
    ]  # fmt: skip
    if getattr(module, "has_adapter", True):
        lora = f"r={hp.lora_r}, alpha={hp.lora_alpha}, dropout={hp.lora_dropout}"
        rows.append(("LoRA", f"{lora}, targets {list(module.lora_target_modules)}"))
        if hp.modules_to_save:
            rows.append(("trained in full", ", ".join(hp.modules_to_save)))
    rows.append(("base weights", f"{hp.torch_dtype}{', 4-bit NF4' if hp.load_in_4bit else ''}"))
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:
        for optimizer in trainer.optimizers[:1]:
            group = optimizer.param_groups[0]
            lr = group.get("initial_lr", group["lr"])
            rows.append(("optimizer", f"{type(optimizer).__name__}, lr {lr:g}"))
        empty = int(getattr(module, "empty_batches", 0))
        rows.append(("optimizer steps", f"{trainer.global_step - empty} ({empty} empty skipped)"))
        rows.append(("epochs", str(trainer.current_epoch + (0 if trainer.training else 1))))
    counts = {k: float(m.sum_value) for k, m in module.train_metrics.counts.items()}
    if counts.get("candidates"):
        kept, candidates = int(counts.get("kept", 0)), int(counts["candidates"])
        rows.append(
            ("pairs kept", f"{kept} of {candidates} ({int(counts['identical'])} identical)")
        )
    return rows


def data_rows(module: Any) -> list[tuple[str, str]]:
    """The data file, image folder, augmentation and prompt counts of the run's DataModule."""
    trainer = getattr(module, "_trainer", None)
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    if data is None:
        return []
    hp = data.hparams
    rows = []
    for key in ("data_path", "pairs_path", "image_folder"):
        if hp.get(key):
            rows.append((key, portable_base(str(hp[key]))))
    prompts = getattr(data, "train_prompts", None) or getattr(data, "train_rows", None)
    if prompts is not None:
        rows.append(("training rows", str(len(prompts))))
    augmentation = getattr(data, "augmentation", None)
    if augmentation is not None:
        rows.append(("augmentation", repr(augmentation)[:200]))
    return rows


def evaluation_text(module: Any, run_folder: Path | None) -> str:
    """The run's before -> after tables (written by the evaluation callbacks) or, failing
    those, the last logged evaluation metrics."""
    if run_folder is not None:
        tables = sorted(run_folder.glob("eval/*/before_after.md"))
        if tables:
            return "\n\n".join(t.read_text().strip() for t in tables)
    trainer = getattr(module, "_trainer", None)
    metrics = getattr(trainer, "callback_metrics", {}) if trainer is not None else {}
    rows = [
        f"| {k} | {float(v):.4g} |" for k, v in sorted(metrics.items())
        if k.startswith(EVAL_PREFIXES)
    ]  # fmt: skip
    if not rows:
        return "No evaluation ran in this run."
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def is_sft(module: Any) -> bool:
    """Whether the module is trained by an ``SFTDataModule`` (not on preference pairs)."""
    from lightning_aug_dpo.data.sft import SFTDataModule

    trainer = getattr(module, "_trainer", None)
    return isinstance(getattr(trainer, "datamodule", None), SFTDataModule)


def model_card(module: Any, kind: str, run_folder: Path | None = None) -> str:
    """The README.md of an export: ``kind`` is ``adapter`` or ``merged``."""
    base = portable_base(str(module.hparams.model_name_or_path))
    sft = is_sft(module)
    lines = [
        "---",
        "library_name: " + ("peft" if kind == "adapter" else "transformers"),
        f"base_model: {base}",
        "tags: [lightning_aug_dpo, seva, dpo, vision-language]",
        "---",
        "",
        f"# {'LoRA adapter' if kind == 'adapter' else 'Merged model'}: "
        f"{'SFT' if sft else 'SeVa DPO'} of {base}",
        "",
        f"Made by lightning_aug_dpo {_version()} ({type(module).__name__}). "
        + (SFT if sft else METHOD),
        "",
        "## Recipe",
        "",
        "| what | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in recipe_rows(module) + data_rows(module)),
        "",
        "## Evaluation",
        "",
        evaluation_text(module, run_folder),
        "",
        "## Use",
        "",
        "```bash",
        "lightning-aug-dpo generate --model "
        + (f"{base} --adapter THIS_FOLDER" if kind == "adapter" else "THIS_FOLDER")
        + ' --image IMAGE "Describe the image in detail."',
        "```",
        "",
        "or with plain transformers" + (" and peft:" if kind == "adapter" else ":"),
        "",
        "```python",
        *usage_snippet(kind),
        "```",
        "",
    ]
    return "\n".join(lines)


def usage_snippet(kind: str) -> list[str]:
    """Loading the export without this library (the processor's chat template formats)."""
    load = (
        [
            "from peft import PeftConfig, PeftModel",
            "base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path",
            "model = AutoModelForImageTextToText.from_pretrained(base_path)",
            "model = PeftModel.from_pretrained(model, folder)",
        ]
        if kind == "adapter"
        else ["base_path = folder", "model = AutoModelForImageTextToText.from_pretrained(folder)"]
    )
    return [
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'folder = "THIS_FOLDER"',
        *load,
        "processor = AutoProcessor.from_pretrained(base_path)",
        'messages = [{"role": "user", "content": [{"type": "image"},',
        '             {"type": "text", "text": "Describe the image in detail."}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(images=Image.open("IMAGE"), text=prompt, return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=256, do_sample=False)",
        'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
