"""What ``lightning-aug-dpo --help``, ``fit --help`` and ``--version`` show a newcomer.

LightningCLI prints the Trainer's 40 options (400+ lines) before the model and the data, and a
usage line per option. Here each subcommand's help starts with how to run it and how to see a
class's own options, then lists the config, the model, the data and the subcommand's arguments,
and the Trainer's options last.
"""

from __future__ import annotations

import argparse
import textwrap
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from jsonargparse import DefaultHelpFormatter

__all__ = ["ROOT_DESCRIPTION", "HelpFormatter", "tidy_subcommand_help", "version_text"]

ROOT_DESCRIPTION = """\
SeVa visual preference alignment for vision-language models: DPO on pairs of
answers to the clean and to the augmented image.

Train (the demo config runs in a few minutes on a CPU); see the options of a run:
  lightning-aug-dpo fit --config configs/demo.yaml
  lightning-aug-dpo fit --help
Write pairs to a file instead (a config with a PairsWriter callback):
  lightning-aug-dpo predict --config configs/demo_rollout.yaml
More commands, each with its own --help: preview (a preset's augmentations on
your images), generate (answer a question about an image), audit (what separates
chosen from rejected). lightning-aug-dpo --version prints the versions in use."""

# (what the subcommand does, a config to try it with); Lightning's own descriptions are cut
# from the Trainer's docstrings, mid-sentence
SUBCOMMANDS = {
    "fit": (
        "Train: DPO on pairs rolled out on the fly or read from a pairs file\n"
        "(or supervised fine-tuning, with SFTDataModule).",
        "configs/demo.yaml",
    ),
    "validate": ("One evaluation pass over the validation prompts.", "configs/demo_mmvet.yaml"),
    "test": ("One evaluation pass over the test prompts.", "configs/demo_mmvet.yaml"),
    "predict": (
        "Roll out pairs without training; a PairsWriter callback writes them to a file.",
        "configs/demo_rollout.yaml",
    ),
}

GUIDE = """\
{description}

Run a config; change one value; print the whole resolved config:
  {prog} --config {example}
  {prog} --config CONFIG --model.init_args.lora_r 8
  {prog} --config CONFIG --print_config
A class's own options (the model's LoRA rank, the data's augmentation, ...):
  {prog} --model.help lightning_aug_dpo.LlavaDPOModule
  {prog} --data.help lightning_aug_dpo.AugPairDataModule

This project's options come first; Lightning's Trainer options (--trainer.*)
are listed last."""

USAGE = """\
{prog} [-h] [-c CONFIG] [--print_config[=flags]]
         [--seed_everything SEED] [--model CLASS] [--model.init_args.NAME VALUE]
         [--data CLASS] [--data.init_args.NAME VALUE]
         [--trainer.NAME VALUE]
        {own}"""

GROUP_TITLES = {
    "model": "Model: a VLM family by class path (its options: --model.help CLASS)",
    "data": "Data: prompts or a pairs file (its options: --data.help CLASS)",
    "trainer": "Trainer: Lightning's options (devices, precision, epochs, callbacks, loggers)",
}
# help order: the config and general options, the library's classes, the subcommand's own
# arguments, anything else, the Trainer
ORDER = {"options": 0, "model": 1, "data": 2, "subcommand": 3, "other": 4, "trainer": 5}


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the line breaks of a description (its examples);
    only a line wider than the terminal is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            if line
            else ""
            for line in text.splitlines()
        )


def version_text() -> str:
    """``lightning-aug-dpo X`` and the versions of the libraries a run depends on, one a line."""
    lines = []
    for package in ("lightning-aug-dpo", "torch", "transformers", "lightning", "peft"):
        try:
            found = version(package)
        except PackageNotFoundError:
            found = "not installed"
        lines.append(f"{package} {found}")
    return "\n".join(lines)


def _kind(group: argparse._ArgumentGroup, own: set[str]) -> str:
    dests = {action.dest for action in group._group_actions}
    for name in ("trainer", "model", "data"):
        if name in dests:
            return name
    if dests & own:
        return "subcommand"
    return "options" if group.title in ("options", "positional arguments") else "other"


def tidy_subcommand_help(parser: Any, subcommand: str, own: list[str]) -> None:
    """Reorder and retitle the help of a subcommand's parser (``own``: the subcommand's own
    arguments, e.g. ``ckpt_path``) once it is added to the main parser; parsing is unchanged."""
    kinds = {id(group): _kind(group, set(own)) for group in parser._action_groups}
    parser._action_groups.sort(key=lambda group: ORDER[kinds[id(group)]])
    titles = {**GROUP_TITLES, "subcommand": f"Arguments of {subcommand}"}
    for group in parser._action_groups:
        group.title = titles.get(kinds[id(group)], group.title)
    prog = parser.prog.replace(" [options]", "")  # set when the subcommand was added
    own_usage = "".join(f" [--{name} VALUE]" for name in own)
    parser.usage = USAGE.format(prog=prog, own=own_usage)
    description, example = SUBCOMMANDS.get(subcommand, (parser.description or "", "CONFIG"))
    parser.description = GUIDE.format(description=description, prog=prog, example=example)
    parser.formatter_class = HelpFormatter
