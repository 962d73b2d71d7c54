"""Measuring one training step: its peak memory, the share of TRL's fused LM head in it, the
tokens its forwards compute, and a model's body-to-LM-head FLOPs per token.

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


class ForwardCounter:
    """Rows and width of every forward through a model's text decoder and its vision tower.

    Forward pre-hooks on the language model (the transformer body, whatever calls it: this
    project's ``forward_logits`` with ``inputs_embeds``, TRL's fused forward through the
    multimodal model) and on the vision tower record ``(policy, rows, width)``: ``policy`` is
    ``torch.is_grad_enabled()`` (both sides run the reference under ``no_grad``), ``rows x
    width`` the positions the body computes, padding included. :meth:`take` returns and clears.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.tower = base.model.vision_tower
        self.text: list[tuple[bool, int, int]] = []
        self.images: list[tuple[bool, int]] = []
        self.handles = [
            self.decoder.register_forward_pre_hook(self._on_text, with_kwargs=True),
            self.tower.register_forward_pre_hook(self._on_images, with_kwargs=True),
        ]

    @staticmethod
    def _first(args: tuple, kwargs: dict, *names: str) -> torch.Tensor:
        for name in names:
            if kwargs.get(name) is not None:
                return kwargs[name]
        return args[0]

    def _on_text(self, _: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = self._first(args, kwargs, "inputs_embeds", "input_ids")
        self.text.append((torch.is_grad_enabled(), int(x.shape[0]), int(x.shape[1])))

    def _on_images(self, _: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = self._first(args, kwargs, "pixel_values")
        self.images.append((torch.is_grad_enabled(), int(x.shape[0])))

    def take(self, pairs: int) -> dict[str, Any]:
        """Per forward and per pair (policy, reference) since the last call; then clears."""
        text, images = self.text, self.images
        self.text, self.images = [], []

        def per_pair(policy: bool) -> float:
            return sum(r * w for p, r, w in text if p == policy) / pairs

        return {
            "forwards": [{"policy": p, "rows": r, "width": w} for p, r, w in text],
            "policy_tokens_per_pair": per_pair(True),
            "reference_tokens_per_pair": per_pair(False),
            "images_encoded_per_pair": sum(n for _, n in images) / pairs,
        }

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


FLOPS_FORMULA = (
    "per token, linear layers only, 2 FLOPs per multiply-add: body = 2 L (2 h d_q + 2 h d_kv "
    "+ 3 h i) with d_q = heads x head_dim, d_kv = kv_heads x head_dim (q, o; k, v; gate, up, "
    "down); LM head = 2 h V; attention scores and values, norms and activations are not "
    "counted (they only add to the body)"
)


def flops_per_token(text_config: Any) -> dict[str, Any]:
    """Transformer-body and LM-head FLOPs per token of a Llama-style text config, and their
    ratio (:data:`FLOPS_FORMULA`). LLaVA-1.5-7B (vicuna-7B): 49.4."""
    h, i, layers = (
        text_config.hidden_size,
        text_config.intermediate_size,
        text_config.num_hidden_layers,
    )
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or h // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    body = 2 * layers * (2 * h * heads * head_dim + 2 * h * kv_heads * head_dim + 3 * h * i)
    head = 2 * h * text_config.vocab_size
    return {
        "body": body,
        "lm_head": head,
        "body_to_head_ratio": body / head,
        "formula": FLOPS_FORMULA,
    }


@contextmanager
def trl_compact_head(enabled: bool) -> Iterator[bool]:
    """TRL's fused LM head scoring only completion positions on CPU, as it does on a GPU.

    TRL 1.16 (``trl.trainer.utils.add_fused_lm_head``) projects only the positions with a
    label when ``_use_triton(device)``, i.e. on CUDA / XPU with Triton; elsewhere every
    position, image tokens included. This makes that one decision answer yes (the kernel keeps
    its torch fallback), so a CPU run compares against the code path TRL takes on a GPU.
    Yields whether it patched (a no-op where TRL compacts anyway).
    """
    if not enabled:
        yield False
        return
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield True
    finally:
        trl_utils._use_triton = original
