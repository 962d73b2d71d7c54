"""MM-Vet's answer and grade files in the official formats, without Lightning or torch.

Answers: ``{id: answer text}``. Grades (written by the official GPT-4 grader, or by
:func:`write_grades`): ``{id: {"model": [...], "content": [...], "score": [...]}}``, one entry per
grading run. Ids are written and read in numeric order (``v1_2`` before ``v1_10``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from lightning_aug_dpo.eval.files import read_json_dict as _read_json_dict
from lightning_aug_dpo.eval.files import sorted_ids as _sorted_ids
from lightning_aug_dpo.eval.files import write_json as _write_json


class GradeLike(Protocol):
    """Anything with the three fields of a grade-file entry (e.g. ``judges.Grade``)."""

    score: float
    content: str
    model: str


def read_answers(path: str | Path) -> dict[str, str]:
    """Read model answers in the official MM-Vet results format ``{id: answer text}``."""
    path = Path(path)
    data = _read_json_dict(path, "the MM-Vet results format {id: answer text}")
    for qid, text in data.items():
        if not isinstance(text, str):
            raise ValueError(
                f"{path}: row {qid!r} answer is {type(text).__name__}; "
                "the results format maps each id to its answer text"
            )
    return {qid: data[qid] for qid in _sorted_ids(data)}


def write_answers(path: str | Path, answers: Mapping[str, str]) -> None:
    """Write answers in the official results format (numeric id order, indent 2, UTF-8)."""
    _write_json(path, {qid: answers[qid] for qid in _sorted_ids(answers)})


def _as_scores(path: Path, qid: str, value: Any) -> list[float]:
    # Accept the grader's {"score": [...]}, a bare list, or a single number per id.
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"{path}: row {qid!r} lacks 'score'; each grade row needs a score")
        value = value["score"]
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"{path}: row {qid!r} score must be a number or a non-empty number list")
    return [float(v) for v in values]


def read_grades(path: str | Path) -> dict[str, list[float]]:
    """Read a grade file into ``{id: [score per run]}`` (a scalar score counts as one run)."""
    path = Path(path)
    data = _read_json_dict(path, "an MM-Vet grade file {id: {'model', 'content', 'score'}}")
    return {qid: _as_scores(path, qid, data[qid]) for qid in _sorted_ids(data)}


def write_grades(path: str | Path, grades: Mapping[str, GradeLike | Sequence[GradeLike]]) -> None:
    """Write ``{id: [Grade per run]}`` as the official grade file layout.

    Each id becomes ``{"model": [...], "content": [...], "score": [...]}``, one entry per run.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    for qid in _sorted_ids(grades):
        runs = grades[qid]
        runs = [runs] if hasattr(runs, "score") else list(runs)  # type: ignore[arg-type]
        out[qid] = {
            "model": [g.model for g in runs],
            "content": [g.content for g in runs],
            "score": [float(g.score) for g in runs],
        }
    _write_json(path, out)
