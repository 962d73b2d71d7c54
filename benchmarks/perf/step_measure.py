"""Measuring one training step: its peak memory, and the share of TRL's fused LM head in it.

Helpers of ``benchmarks/perf/dpo_step.py`` (see its docstring for how the numbers are used).
"""

from __future__ import annotations

import ctypes
import gc
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MIB = 2**20


class PeakMemory:
    """Peak memory a call adds above what was live just before it.

    CUDA: the allocator's peak after ``reset_peak_memory_stats``. CPU (Linux, glibc): torch's CPU
    allocations are plain ``malloc``s, invisible to ``tracemalloc``, so the kernel's resident-set
    high-water mark is read instead: ``gc.collect()`` and ``malloc_trim(0)`` hand freed memory
    back first (else a step reuses what the previous one freed and shows nothing), the mark is
    reset through ``/proc/self/clear_refs`` and the peak is ``VmHWM`` minus ``VmRSS`` before the
    call. The mmap threshold is pinned so that glibc does not raise it after the first large
    free: every large tensor is then its own mapping, returned when freed, whoever ran before.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc: Any = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above memory_allocated before the step"
            return
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic raise
            self._reset_hwm()
            self.method = (
                "CPU resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) above "
                "VmRSS before the step, after gc + malloc_trim; mmap threshold pinned to 128 KiB"
            )
        except OSError:
            self.libc, self.method = None, "unavailable (needs Linux /proc and glibc)"

    @staticmethod
    def _status_kib(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    @staticmethod
    def _reset_hwm() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    def run(self, step: Callable[[], torch.Tensor]) -> tuple[float, float, float | None]:
        """``(loss, seconds, peak MiB or None)`` of one call of ``step``."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.libc is not None:
            self.libc.malloc_trim(0)
            base = self._status_kib("VmRSS") * 1024
            self._reset_hwm()
        start = time.perf_counter()
        loss = float(step())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - base
        elif self.libc is not None:
            peak = self._status_kib("VmHWM") * 1024 - base
        else:
            return loss, seconds, None
        return loss, seconds, peak / MIB


@contextmanager
def trl_fused_head_timer(enabled: bool) -> Iterator[list[float] | None]:
    """Accumulated seconds in TRL's fused LM head (``ChunkedLogProbFunction`` forward + backward).

    Without Triton (on CPU) TRL runs that head's torch fallback on every position, which can
    dominate its step: this split tells how much of a CPU comparison is that fallback. Off on
    CUDA, where the kernels run asynchronously and timing them would need extra syncs.
    """
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction as head
    except ImportError:
        enabled = False
    if not enabled:
        yield None
        return
    spent = [0.0]
    originals = {name: head.__dict__[name] for name in ("forward", "backward")}

    def timed(function: Callable[..., Any]) -> staticmethod:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return staticmethod(wrapper)

    for name, original in originals.items():
        setattr(head, name, timed(original.__func__))
    try:
        yield spent
    finally:
        for name, original in originals.items():
            setattr(head, name, original)
