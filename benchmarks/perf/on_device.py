"""Run a benchmark script with every module loading its weights straight onto ``--device``.

    python benchmarks/perf/on_device.py benchmarks/perf/dpo_step.py --device cuda ARGS...

A script that calls ``module.configure_model()`` before ``module.to(device)`` loads the base on
the CPU first: slow for a 7B bf16 base, and for a 4-bit one bitsandbytes then quantises on the
CPU (minutes at 7B) while TRL's ``Trainer`` leaves a quantised copy where it was loaded.
``ModelSetupMixin`` loads onto the module's device when the module is moved there first
(``rollout.py`` and ``recipe_memory.py`` do so themselves); this wrapper does that move for any
script: each module goes to the script's ``--device`` (default: CUDA when there is one) just
before its ``configure_model()``, then the script runs unchanged as ``__main__``.
"""

from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path


def _device(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: on_device.py SCRIPT [ARGS...]")
    script, args = Path(argv[0]), argv[1:]
    device = _device(args)

    from lightning_aug_dpo.model_setup import ModelSetupMixin

    original = ModelSetupMixin.configure_model

    @functools.wraps(original)
    def configure_model(self) -> None:
        if self.model is None:
            self.to(device)
        original(self)

    ModelSetupMixin.configure_model = configure_model
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
