"""``lightning-aug-dpo``: LightningCLI over ``AugDPOModule`` subclasses and the pair DataModule.

    lightning-aug-dpo fit --config configs/demo.yaml
    lightning-aug-dpo fit --config configs/seva_llava15_7b.yaml --print_config
    lightning-aug-dpo predict --config configs/demo.yaml   # offline pairs (PairsWriter)

``model`` and ``data`` take a ``class_path``, so a new VLM or prompt source is a subclass named in
YAML: no registry.
"""

from __future__ import annotations

import os

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


def main() -> None:
    """Console-script entry point."""
    cli_main()
