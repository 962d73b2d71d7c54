"""``lightning-aug-dpo``: LightningCLI over ``AugDPOModule`` subclasses and the pair DataModule.

    lightning-aug-dpo fit --config configs/demo.yaml
    lightning-aug-dpo fit --config configs/seva_llava15_7b.yaml --print_config
    lightning-aug-dpo predict --config configs/demo.yaml   # offline pairs (PairsWriter)
    lightning-aug-dpo preview --preset moco --images a.jpg b.png   # a preset's augmentations

``model`` and ``data`` take a ``class_path``, so a new VLM or prompt source is a subclass named in
YAML: no registry.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

from lightning_aug_dpo.data import AugPairDataModule
from lightning_aug_dpo.module import AugDPOModule


class AugDPOCLI(LightningCLI):
    """LightningCLI with subclass mode for both the model and the data."""


def cli_main(args: list[str] | None = None) -> AugDPOCLI:
    """Build and run the CLI (``args=None`` reads ``sys.argv``); returns it for inspection."""
    # Tokenizers' thread pool forks badly into DataLoader workers; rollouts tokenise on device.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return AugDPOCLI(
        AugDPOModule,
        AugPairDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def preview_main(args: list[str]) -> None:
    """``lightning-aug-dpo preview ...``: a plain function CLI, no Trainer (see ``preview.py``)."""
    from jsonargparse import auto_cli

    from lightning_aug_dpo.preview import preview

    path = auto_cli(preview, args=args)
    print(f"wrote {path}")


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args=None`` reads ``sys.argv``)."""
    argv = sys.argv[1:] if args is None else list(args)
    # LightningCLI's subcommands are fixed (fit, validate, ...): route ours before it parses.
    if argv and argv[0] == "preview":
        preview_main(argv[1:])
        return
    cli_main(args)
