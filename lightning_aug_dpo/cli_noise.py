"""What the CLI keeps off the console: known upstream noise that tells a user nothing to act on.

Each filter names the message AND where it comes from (the warning's module, or the logger), so
the same words from the user's code or from this project still show. Filters are installed once,
where the CLI starts (``cli_main``), before LightningCLI builds anything: most of these lines are
printed while the Trainer, the model or bitsandbytes are set up.

What goes, and why it is noise here:

- Lightning's two "💡 Tip" banners advertise hosted services (litlogger, litmodels).
- bitsandbytes, on CPUs with AVX512-BF16, tries to fetch a hub kernel at import and logs its
  failure ("Failed to load CPU gemm_4bit_forward from kernels-community ..."), with the hub
  loader's advice to set ``trust_remote_code=True`` where that loader is installed: this library
  never runs remote code, and 4-bit works without that kernel.
- transformers' deprecation of ``gradient_checkpointing_enable`` / ``is_gradient_checkpointing``
  (PEFT reads the old property on every model it wraps), and torch's deprecation of
  ``isinstance(treespec, LeafSpec)`` that Lightning's own pytree helper triggers.
- The model summary's "Total FLOPs: 0" line and FLOPs column: Lightning counts FLOPs only for a
  module with an ``example_input_array``, which a VLM here has not, so the figure is always 0.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

__all__ = [
    "UPSTREAM_LOG_LINES",
    "UPSTREAM_WARNINGS",
    "FlopsFreeModelSummary",
    "FlopsFreeRichModelSummary",
    "install_noise_filters",
    "without_flops_summary",
]

# (message regex, category, regex of the module that issues the warning)
UPSTREAM_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`(gradient_checkpointing_enable|is_gradient_checkpointing)` is deprecated",
        FutureWarning,
        r"transformers\.modeling_utils\Z",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"(lightning\.pytorch|pytorch_lightning)\.utilities\._pytree\Z",
    ),
)

# logger name -> regex of the messages dropped from it (only records logged to that very logger)
UPSTREAM_LOG_LINES: dict[str, str] = {
    "lightning.pytorch.utilities.rank_zero": r"💡 Tip: For seamless cloud (logging|uploads)",
    "lightning.fabric.utilities.rank_zero": r"💡 Tip: For seamless cloud (logging|uploads)",
    "pytorch_lightning.utilities.rank_zero": r"💡 Tip: For seamless cloud (logging|uploads)",
    "bitsandbytes.backends.cpu.ops": r"Failed to load CPU gemm_4bit_forward from kernels-community",
}


class _DropMatching(logging.Filter):
    """Drops the records whose formatted message matches ``pattern`` (from its start)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def install_noise_filters() -> None:
    """Install the warning and log filters above; calling it again adds nothing."""
    for message, category, module in UPSTREAM_WARNINGS:
        # filterwarnings drops an identical earlier entry itself before inserting it first
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in UPSTREAM_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))


def _without_flops(summary_data: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [column for column in summary_data if column[0] != "FLOPs"]


class FlopsFreeModelSummary(ModelSummary):
    """Lightning's text model summary without the FLOPs column and its always-0 total."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import (
            _format_summary_table,
        )

        table = _format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *_without_flops(summary_data),
        )
        lines = [line for line in table.splitlines() if not line.rstrip().endswith("Total Flops")]
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join(lines))


class FlopsFreeRichModelSummary(RichModelSummary):
    """Lightning's rich model summary without the FLOPs column and its always-0 total."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )
        from rich import get_console
        from rich.table import Table

        console = get_console()
        columns = _without_flops(summary_data)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            style = {" ": "dim", "In sizes": "white", "Out sizes": "white"}.get(name)
            justify = "left" if name in (" ", "Name", "Type", "Mode") else "right"
            table.add_column(name, justify=justify, style=style, no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console.print(table)

        grid = Table.grid(expand=True)
        grid.add_column()
        frozen = total_parameters - trainable_parameters
        for label, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(frozen))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)


def without_flops_summary(trainer: pl.Trainer) -> None:
    """Swap the Trainer's stock model summary (the one it adds itself, or one named in a config)
    for the same summary without FLOPs; a user's own summary subclass is left as it is."""
    swaps = {RichModelSummary: FlopsFreeRichModelSummary, ModelSummary: FlopsFreeModelSummary}
    for i, callback in enumerate(trainer.callbacks):  # type: ignore[attr-defined]
        replacement = swaps.get(type(callback))
        if replacement is not None:
            quiet = replacement(max_depth=callback._max_depth, **callback._summarize_kwargs)
            trainer.callbacks[i] = quiet  # type: ignore[attr-defined]
