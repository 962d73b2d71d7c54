"""Answer benchmark questions with a model: LLaVA-1.5's protocol, batched, sharded over ranks.

LLaVA-1.5 evaluates MM-Vet and LLaVA-Bench with greedy decoding, up to 1024 new tokens, the
model's own conversation template and the question as given (no answer-style suffix). Here the
model is anything with ``generate(pixel_values, questions, max_new_tokens=..., use_reference=False)
-> list[str]`` and ``preprocess_images(list of uint8 CHW tensors)`` (``AugDPOModule``, whose
``generate`` is greedy and applies the chat template).

With ``world_size`` ranks, rank ``r`` answers ids ``r, r + W, r + 2W, ...``; answers are then
gathered to every rank (``gather``, by default ``torch.distributed.all_gather_object``), so each
rank returns the full answer set. Every rank must call :func:`generate_answers` (a collective).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

DEFAULT_MAX_NEW_TOKENS = 1024  # LLaVA-1.5's model_vqa default for MM-Vet and LLaVA-Bench


class Answerer(Protocol):
    def preprocess_images(self, images: list[Any]) -> Any: ...

    def generate(
        self,
        pixel_values: Any,
        questions: list[str],
        max_new_tokens: int = ...,
        use_reference: bool = ...,
    ) -> list[str]: ...


def shard(ids: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Round-robin share of ``ids`` for ``rank`` (balanced to within one question)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(ids[rank::world_size])


def torch_gather(obj: Any, world_size: int) -> list[Any]:
    """``all_gather_object`` over the default process group (identity on one process)."""
    import torch.distributed as dist

    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def generate_answers(
    model: Answerer,
    questions: Mapping[Any, str],
    images: Mapping[Any, str | Path],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[Any, int], list[Any]] | None = None,
    done: Mapping[Any, str] | None = None,
    on_batch: Callable[[dict[Any, str]], None] | None = None,
) -> dict[Any, str]:
    """Greedy answers ``{id: text}`` for every id of ``questions`` (in its order).

    ``done`` answers are kept and not asked again (a resumed job); ``on_batch`` receives this
    rank's answers so far after each batch (single-process jobs save progress with it).
    Unreadable images raise ``ValueError`` naming the file and the question id.
    """
    from lightning_aug_dpo.data.prompts import decode_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    done = dict(done or {})
    todo = shard([q for q in questions if q not in done], rank, world_size)
    mine: dict[Any, str] = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        decoded: dict[str, Any] = {}  # several questions share an image (MM-Vet, LLaVA-Bench)
        pixels_in = []
        for qid in chunk:
            path = str(images[qid])
            if path not in decoded:
                try:
                    decoded[path] = decode_image(path)
                except (OSError, ValueError) as err:
                    raise ValueError(
                        f"{path}: cannot read the image of question {qid!r} ({err}); "
                        "replace the file with the benchmark's original"
                    ) from err
            pixels_in.append(decoded[path])
        pixels = model.preprocess_images(pixels_in)
        texts = model.generate(
            pixels,
            [questions[q] for q in chunk],
            max_new_tokens=max_new_tokens,
            use_reference=False,
        )
        mine.update(zip(chunk, texts, strict=True))
        if on_batch is not None:
            on_batch({**done, **mine})
    parts = (gather or torch_gather)(mine, world_size)
    merged = dict(done)
    for part in parts:
        merged.update(part)
    return {q: merged[q] for q in questions if q in merged}
