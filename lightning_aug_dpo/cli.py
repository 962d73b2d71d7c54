"""``lightning-aug-dpo``: LightningCLI over ``AugDPOModule`` subclasses and any DataModule.

    lightning-aug-dpo fit --config configs/demo.yaml
    lightning-aug-dpo fit --config configs/seva_llava15_7b.yaml --print_config
    lightning-aug-dpo fit --config configs/sft_demo.yaml   # supervised fine-tuning (SFTDataModule)
    lightning-aug-dpo predict --config configs/demo.yaml   # offline pairs (PairsWriter)
    lightning-aug-dpo preview --preset moco --images a.jpg b.png   # a preset's augmentations
    lightning-aug-dpo generate --model M [--adapter A] --image I "question"   # answer it
    lightning-aug-dpo --version   # this library's version and those of torch, transformers, ...

``model`` and ``data`` take a ``class_path``, so a new VLM or prompt source is a subclass named in
YAML: no registry.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import lightning_aug_dpo
from lightning_aug_dpo.checkpoint_io import explain_load_errors, use_atomic_checkpoints
from lightning_aug_dpo.cli_help import (
    ROOT_DESCRIPTION,
    HelpFormatter,
    tidy_subcommand_help,
    version_text,
)
from lightning_aug_dpo.cli_noise import install_noise_filters, without_flops_summary
from lightning_aug_dpo.cli_parser import AugDPOArgumentParser
from lightning_aug_dpo.errors import UserInputError
from lightning_aug_dpo.module import AugDPOModule
from lightning_aug_dpo.preflight import run_problems
from lightning_aug_dpo.validation import ConfigError

# The package loads its names lazily; the CLI imports them all, so that LightningCLI lists every
# family, loss, augmentation and callback in --help and resolves their short class names.
for _name in lightning_aug_dpo.__all__:
    getattr(lightning_aug_dpo, _name)


class AugDPOCLI(LightningCLI):
    """LightningCLI with subclass mode for both the model and the data, whose Trainer writes
    ``.ckpt`` files atomically and resumes with ``torch.load(weights_only=True)``
    (:class:`AtomicCheckpointIO`: no plugin to configure).

    Before any class is built, the whole configuration is checked (:mod:`.preflight`); the
    problems it finds, with those the constructors raise, stop the run together as one
    :class:`ConfigError`. A run that fails before its first optimizer step removes the run
    folder it created, so a failed attempt leaves nothing behind.

    Each subcommand's ``--help`` lists this project's options before the Trainer's
    (:mod:`.cli_help`); the model summary leaves out FLOPs, which it cannot count here
    (:mod:`.cli_noise`)."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in self._subcommand_parsers.items():
            tidy_subcommand_help(subparser, name, self._subcommand_method_arguments[name])

    def before_instantiate_classes(self) -> None:
        # Only before a run: run=False parses and builds for inspection (configs of machines
        # and data this one lacks), where missing paths are expected.
        self.problems = run_problems(self.config[self.subcommand]) if self.subcommand else []

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except ValueError as err:  # a constructor's own check of a value from the config
            raise ConfigError([*self.problems, root_message(err)]) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.problems:  # before the Trainer: it would fail on a missing accelerator itself
            raise ConfigError(self.problems)
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        without_flops_summary(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        new = first_new_folder(planned_run_dir(self.trainer))
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if new is not None and self.trainer.is_global_zero and not trained_steps(self.trainer):
                shutil.rmtree(new, ignore_errors=True)
            raise

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of --ckpt_path (weights_only=True) before any
        # Trainer exists: give a damaged or unsafe checkpoint our message, naming the file.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        with explain_load_errors(path):
            super()._parse_ckpt_path()


def root_message(error: BaseException) -> str:
    """The innermost ValueError's message: jsonargparse wraps a constructor's own error in
    lines about Union subtypes that name no key."""
    while isinstance(error.__cause__ or error.__context__, ValueError):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return str(error)


def trained_steps(trainer: Trainer) -> int:
    """Optimizer steps that updated the model: Lightning counts a step whose batch held no
    pair too (``training_step`` returned None), the module counts those as empty batches."""
    module = trainer.lightning_module
    return trainer.global_step - int(getattr(module, "empty_batches", 0) if module else 0)


def first_new_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (what this run would
    create: ``runs/name/version_0``, or ``name/version_0`` under an existing ``runs``)."""
    new = None
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists():
            return new
        new = path
    return new


def planned_run_dir(trainer: Trainer) -> Path:
    """Where this run's files will go (the logger's versioned folder), without creating it."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, CSVLogger | TensorBoardLogger):
        return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def cli_main(args: list[str] | None = None, run: bool = True) -> AugDPOCLI:
    """Build and run the CLI (``args=None`` reads ``sys.argv``); returns it for inspection.

    ``run=False`` only parses and instantiates (no subcommand), as ``LightningCLI(run=False)``.
    """
    # Tokenizers' thread pool forks badly into DataLoader workers; rollouts tokenise on device.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    install_noise_filters()  # before the Trainer, the model and bitsandbytes print anything
    return AugDPOCLI(
        AugDPOModule,
        LightningDataModule,  # AugPairDataModule (DPO) or SFTDataModule, by class_path
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=AugDPOArgumentParser,
        parser_kwargs={"description": ROOT_DESCRIPTION, "formatter_class": HelpFormatter},
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
    """Console-script entry point (``args=None`` reads ``sys.argv``). A user-input error (a
    config value, a data file, an image) prints its message and exits 2, without a traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in ("--version", "-V"):
        print(version_text())
        return
    install_noise_filters()  # generate and preview load models too
    try:
        # LightningCLI's subcommands are fixed (fit, validate, ...): route ours before it parses.
        if argv and argv[0] == "preview":
            preview_main(argv[1:])
            return
        if argv and argv[0] == "generate":
            from lightning_aug_dpo.answer import generate_main

            generate_main(argv[1:])
            return
        if argv and argv[0] == "audit":  # lightning-aug-dpo audit PAIRS (see audit_cli.py)
            from lightning_aug_dpo.audit_cli import audit_main

            audit_main(argv[1:])
            return
        cli_main(args)
    except UserInputError as err:
        print(f"lightning-aug-dpo: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
