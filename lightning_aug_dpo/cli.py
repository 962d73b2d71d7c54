"""``lightning-aug-dpo``: LightningCLI over ``AugDPOModule`` subclasses and any DataModule.

    lightning-aug-dpo fit --config configs/demo.yaml
    lightning-aug-dpo fit --config configs/seva_llava15_7b.yaml --print_config
    lightning-aug-dpo fit --config configs/sft_demo.yaml   # supervised fine-tuning (SFTDataModule)
    lightning-aug-dpo predict --config configs/demo.yaml   # offline pairs (PairsWriter)
    lightning-aug-dpo preview --preset moco --images a.jpg b.png   # a preset's augmentations

``model`` and ``data`` take a ``class_path``, so a new VLM or prompt source is a subclass named in
YAML: no registry.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_aug_dpo.checkpoint_io import explain_load_errors, use_atomic_checkpoints
from lightning_aug_dpo.module import AugDPOModule


class AugDPOCLI(LightningCLI):
    """LightningCLI with subclass mode for both the model and the data, whose Trainer writes
    ``.ckpt`` files atomically and resumes with ``torch.load(weights_only=True)``
    (:class:`AtomicCheckpointIO`: no plugin to configure)."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of --ckpt_path (weights_only=True) before any
        # Trainer exists: give a damaged or unsafe checkpoint our message, naming the file.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        with explain_load_errors(path):
            super()._parse_ckpt_path()


def cli_main(args: list[str] | None = None, run: bool = True) -> AugDPOCLI:
    """Build and run the CLI (``args=None`` reads ``sys.argv``); returns it for inspection.

    ``run=False`` only parses and instantiates (no subcommand), as ``LightningCLI(run=False)``.
    """
    # Tokenizers' thread pool forks badly into DataLoader workers; rollouts tokenise on device.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return AugDPOCLI(
        AugDPOModule,
        LightningDataModule,  # AugPairDataModule (DPO) or SFTDataModule, by class_path
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def spread_list_option(args: list[str], option: str) -> list[str]:
    """``OPTION a b c`` -> ``OPTION=["a", "b", "c"]``: jsonargparse reads a list option as ONE
    JSON/YAML value, but shells give file lists (``--images *.jpg``) as separate words."""
    out, i = [], 0
    while i < len(args):
        if args[i].startswith(f"{option}="):  # --images=a.jpg: one file, or already a list
            value = args[i].split("=", 1)[1]
            listed = value.lstrip().startswith("[")
            out.append(args[i] if listed else f"{option}={json.dumps([value])}")
            i += 1
            continue
        if args[i] != option:
            out.append(args[i])
            i += 1
            continue
        end = i + 1
        while end < len(args) and not args[end].startswith("--"):
            end += 1
        values = args[i + 1 : end]
        if len(values) == 1 and values[0].lstrip().startswith("["):
            out += [option, values[0]]  # already a list: --images '[a.jpg, b.png]'
        else:
            out.append(f"{option}={json.dumps(values)}")
        i = end
    return out


def preview_main(args: list[str]) -> Path:
    """``lightning-aug-dpo preview ...``: a plain function CLI, no Trainer (see ``preview.py``)."""
    from jsonargparse import auto_cli

    from lightning_aug_dpo.preview import preview

    try:
        path = auto_cli(
            preview,
            args=spread_list_option(args, "--images"),
            as_positional=False,
            prog="lightning-aug-dpo preview",
        )
    except (FileNotFoundError, ValueError) as err:  # bad input: a message, not a traceback
        raise SystemExit(f"lightning-aug-dpo preview: error: {err}") from err
    print(f"wrote {path}")
    return path


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args=None`` reads ``sys.argv``)."""
    argv = sys.argv[1:] if args is None else list(args)
    # LightningCLI's subcommands are fixed (fit, validate, ...): route ours before it parses.
    if argv and argv[0] == "preview":
        preview_main(argv[1:])
        return
    cli_main(args)
