"""A callback for ``test_resume.py``, imported by the CLI subprocess through ``class_path``.

It appends the prompt ids of every trained batch to a log and can kill its own process with
SIGKILL (no cleanup, no exception handling: a real crash) when a given optimizer step is about
to start, i.e. after the checkpoint of the previous step was written.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl


class PromptLog(pl.Callback):
    def __init__(self, path: str, kill_before_step: int = -1) -> None:
        self.path = Path(path)
        self.kill_before_step = kill_before_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.kill_before_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        line = {"epoch": trainer.current_epoch, "batch": batch_idx, "ids": batch.meta["prompt_ids"]}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
