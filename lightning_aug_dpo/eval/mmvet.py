"""MM-Vet benchmark files and scoring, without Lightning or torch.

MM-Vet (Yu et al., 2023) has 218 open-ended questions, each tagged with a subset of six
capabilities. ``mm-vet.json`` maps ``"v1_0"``..``"v1_217"`` to ``{"imagename", "question",
"answer", "capability"}``; model answers use the official results format ``{id: text}``; grade
files (written by the official GPT-4 grader, or by :func:`write_grades`) map each id to
``{"model": [...], "content": [...], "score": [...]}`` with one entry per grading run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.files import (
    check_images,
    name_ids,
    read_json_dict,
    require_file,
    sorted_ids,
)

# the answer and grade file formats live in mmvet_files.py; re-exported, they belong to MM-Vet
from lightning_aug_dpo.eval.mmvet_files import GradeLike as GradeLike
from lightning_aug_dpo.eval.mmvet_files import read_answers as read_answers
from lightning_aug_dpo.eval.mmvet_files import read_grades as read_grades
from lightning_aug_dpo.eval.mmvet_files import write_answers as write_answers
from lightning_aug_dpo.eval.mmvet_files import write_grades as write_grades

CAPABILITIES: tuple[str, ...] = ("rec", "ocr", "know", "gen", "spat", "math")
_ROW_KEYS = ("imagename", "question", "answer", "capability")
_ROW_HINT = "each row needs imagename, question, answer, capability"


@dataclass(frozen=True)
class MMVetItem:
    """One MM-Vet question; ``capabilities`` is in the fixed order of :data:`CAPABILITIES`."""

    id: str
    imagename: str
    question: str
    answer: str
    capabilities: tuple[str, ...]


_sorted_ids = sorted_ids
_read_json_dict = read_json_dict


def canonical_capabilities(caps: Iterable[str], where: str = "") -> tuple[str, ...]:
    """Return ``caps`` as a tuple in the fixed order rec, ocr, know, gen, spat, math.

    Raises ``ValueError`` (prefixed with ``where``) for an unknown or empty capability list.
    """
    caps = list(caps)
    unknown = [c for c in caps if c not in CAPABILITIES]
    if unknown:
        raise ValueError(
            f"{where}has unknown capability {unknown[0]!r}; "
            f"use a subset of {', '.join(CAPABILITIES)}"
        )
    if not caps:
        raise ValueError(f"{where}has an empty capability list; give at least one capability")
    return tuple(c for c in CAPABILITIES if c in caps)


def combination_key(caps: Iterable[str]) -> str:
    """Name of an exact capability set, e.g. ``("spat", "rec", "ocr")`` -> ``"rec_ocr_spat"``."""
    return "_".join(canonical_capabilities(caps))


def _row_capabilities(path: Path, qid: str, row: Any, needed: Sequence[str], hint: str):
    if not isinstance(row, dict):
        raise ValueError(f"{path}: row {qid!r} is {type(row).__name__}, not an object; {hint}")
    for key in needed:
        if key not in row:
            raise ValueError(f"{path}: row {qid!r} lacks {key!r}; {hint}")
    caps = row["capability"]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ValueError(f"{path}: row {qid!r} 'capability' must be a list of strings; {hint}")
    return canonical_capabilities(caps, where=f"{path}: row {qid!r} ")


def load_mmvet(path: str | Path) -> dict[str, MMVetItem]:
    """Read ``mm-vet.json`` into ``{id: MMVetItem}`` in numeric id order.

    Strict: invalid JSON, a row lacking a key, a non-string field or an unknown capability
    raises ``ValueError`` naming the file, the row id and what each row needs.
    """
    path = Path(path)
    data = _read_json_dict(path, "the MM-Vet mm-vet.json dict keyed by question id")
    items: dict[str, MMVetItem] = {}
    for qid in _sorted_ids(data):
        row = data[qid]
        caps = _row_capabilities(path, qid, row, _ROW_KEYS, _ROW_HINT)
        for key in ("imagename", "question", "answer"):
            if not isinstance(row[key], str):
                raise ValueError(f"{path}: row {qid!r} {key!r} must be a string; {_ROW_HINT}")
        items[qid] = MMVetItem(qid, row["imagename"], row["question"], row["answer"], caps)
    return items


def load_capabilities(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read ``{id: capabilities}`` from ``mm-vet.json`` or a ``capability_index.json``.

    Both files carry a ``"capability"`` list per id; nothing else is required.
    """
    path = Path(path)
    data = _read_json_dict(path, "a dict keyed by question id with a 'capability' list per row")
    hint = "each row needs a 'capability' list"
    return {
        qid: _row_capabilities(path, qid, data[qid], ("capability",), hint)
        for qid in _sorted_ids(data)
    }


@dataclass(frozen=True)
class MMVetBenchmark:
    """The official MM-Vet download: questions in id order and each question's image file."""

    source: Path
    items: dict[str, MMVetItem]
    images: dict[str, Path]

    def limited(self, limit: int | None) -> MMVetBenchmark:
        """The first ``limit`` questions (all for ``None``), for quick checks."""
        if not limit:
            return self
        ids = list(self.items)[:limit]
        return MMVetBenchmark(
            self.source, {q: self.items[q] for q in ids}, {q: self.images[q] for q in ids}
        )


def load_mmvet_dir(data_dir: str | Path, limit: int | None = None) -> MMVetBenchmark:
    """Load the official download ``DATA_DIR/mm-vet.json`` + ``DATA_DIR/images/``.

    Several questions share one image: each row names its file in ``imagename``. A missing
    ``mm-vet.json``, images folder or image file raises ``FileNotFoundError`` naming the path,
    the row ids and the fix.
    """
    data_dir = Path(data_dir)
    source = require_file(
        data_dir / "mm-vet.json",
        "MM-Vet question file",
        "point data_dir at the unpacked MM-Vet download (mm-vet.json + images/)",
    )
    items = load_mmvet(source)
    if not items:
        raise ValueError(f"{source}: no questions; expected the MM-Vet question file")
    images = check_images(
        data_dir / "images",
        {qid: item.imagename for qid, item in items.items()},
        source,
        "unpack the MM-Vet images into DATA_DIR/images/",
    )
    return MMVetBenchmark(source, items, images).limited(limit)


Stat = tuple[float, float]  # (mean, population std) over grading runs, on the 0-100 scale


@dataclass(frozen=True)
class MMVetScores:
    """MM-Vet scores; every value is ``(mean, std)`` over grading runs at full precision."""

    total_mean: float
    total_std: float
    per_capability: dict[str, Stat]
    per_combination: dict[str, Stat]
    num_runs: int
    num_questions: int
    capability_counts: dict[str, int] = field(default_factory=dict)
    combination_counts: dict[str, int] = field(default_factory=dict)
    total_per_run: tuple[float, ...] = ()  # the official table's "runs" column

    def as_metrics(self, prefix: str = "mmvet", combinations: bool = False) -> dict[str, float]:
        """Means as ``{"mmvet/total": ..., "mmvet/rec": ...}`` (plus ``mmvet/combo/<key>``)."""
        head = f"{prefix}/" if prefix else ""
        metrics = {f"{head}total": self.total_mean}
        metrics.update({f"{head}{cap}": m for cap, (m, _) in self.per_capability.items()})
        if combinations:
            metrics.update(
                {f"{head}combo/{key}": m for key, (m, _) in self.per_combination.items()}
            )
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: total, per capability and per combination as ``{mean, std, n}``."""

        def block(stats: dict[str, Stat], counts: dict[str, int]) -> dict[str, Any]:
            return {k: {"mean": m, "std": s, "n": counts.get(k, 0)} for k, (m, s) in stats.items()}

        return {
            "total": self.total_mean,
            "std": self.total_std,
            "runs": self.num_runs,
            "questions": self.num_questions,
            "total_per_run": list(self.total_per_run),
            "capabilities": block(self.per_capability, self.capability_counts),
            "combinations": block(self.per_combination, self.combination_counts),
        }

    def format_table(self, combinations: bool = True, judge: str | None = None) -> str:
        """Plain-text table rounded to 1 decimal, as the reference implementation displays;
        ``judge`` (e.g. ``"openai:gpt-4o-2024-08-06"``) is named in the title line, since
        scores by different judges are not comparable.

        Capabilities and capability combinations share names (questions tagged only ``rec``
        form the combination ``rec``), so each kind has its own section, and combinations are
        written as :func:`combination_label` gives them (``rec only``, ``rec+ocr``).
        """
        indent = "  "
        rows: list[tuple[str, int, float, float] | str] = [
            ("total", self.num_questions, self.total_mean, self.total_std),
            "capabilities (a question counts under each capability it is tagged with)",
        ]
        rows += [
            (indent + cap, self.capability_counts.get(cap, 0), m, s)
            for cap, (m, s) in self.per_capability.items()
        ]
        if combinations:
            rows.append("capability combinations (each question once, under its exact set)")
            rows += [
                (indent + combination_label(key), self.combination_counts.get(key, 0), m, s)
                for key, (m, s) in self.per_combination.items()
            ]
        width = max(len(row[0]) for row in rows if isinstance(row, tuple))
        runs = "run" if self.num_runs == 1 else "runs"
        lines = [
            f"MM-Vet ({self.num_questions} questions, {self.num_runs} grading {runs}"
            f"{f'; judge: {judge}' if judge else ''})",
            f"{'category':<{width}}  {'n':>4}  {'score':>6}  {'std':>5}",
        ]
        for row in rows:
            if isinstance(row, str):
                lines.append(row)  # a section header
            else:
                name, n, m, s = row
                lines.append(f"{name:<{width}}  {n:>4}  {m:>6.1f}  {s:>5.1f}")
        return "\n".join(lines)


def combination_label(key: str) -> str:
    """How the score table names a combination key: ``"rec_ocr"`` -> ``"rec+ocr"``, and a
    single capability ``"rec"`` -> ``"rec only"`` (unlike the ``rec`` capability row, which
    also counts every question tagged ``rec`` and something else)."""
    parts = key.split("_")  # capability names have no "_" (see CAPABILITIES)
    return "+".join(parts) if len(parts) > 1 else f"{key} only"


def _mean_std(values: Sequence[float]) -> Stat:
    # Population std (ddof=0), as numpy's default in the official grader.
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


_name_ids = name_ids


def _score_runs(
    scores: Mapping[str, float | Sequence[float]], ids: Sequence[str]
) -> dict[str, list[float]]:
    missing = [qid for qid in ids if qid not in scores]
    if missing:
        raise ValueError(f"no score for question ids {_name_ids(missing)}; grade every question")
    runs: dict[str, list[float]] = {}
    for qid in ids:
        value = scores[qid]
        values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        bad = [v for v in values if not 0.0 <= v <= 1.0]  # also catches NaN
        if not values or bad:
            raise ValueError(f"question {qid!r} scores {values} must be a non-empty list in [0, 1]")
        runs[qid] = values
    lengths = {len(v) for v in runs.values()}
    if len(lengths) > 1:
        first = len(runs[ids[0]])
        odd = [qid for qid in ids if len(runs[qid]) != first]
        raise ValueError(
            f"grading runs differ in length: {ids[0]!r} has {first}, but ids {_name_ids(odd)} "
            "differ; give every question the same number of runs"
        )
    return runs


def _group_stat(runs: Mapping[str, list[float]], ids: Sequence[str], num_runs: int) -> Stat:
    per_run = [100.0 * sum(runs[q][r] for q in ids) / len(ids) for r in range(num_runs)]
    return _mean_std(per_run)


def score_mmvet(
    scores: Mapping[str, float | Sequence[float]],
    capabilities: Mapping[str, Sequence[str]],
) -> MMVetScores:
    """Score MM-Vet from per-question grades, as the official grader does.

    Let ``s[i, r]`` in [0, 1] be question ``i``'s score in grading run ``r`` (a scalar score
    is one run), ``Q`` the ids in ``capabilities`` and ``Q_c`` those tagged with capability
    ``c``. For each run ``r``::

        total[r] = 100 * sum_{i in Q} s[i, r] / |Q|
        cap_c[r] = 100 * sum_{i in Q_c} s[i, r] / |Q_c|
        combo_k[r] = 100 * mean_{i : caps(i) == k} s[i, r]

    where a combination key ``k`` is the exact capability set in the order rec, ocr, know,
    gen, spat, math joined by ``_`` (e.g. ``rec_ocr_spat``). Each score is reported as
    ``(mean over r, population std over r)`` (ddof=0; 0.0 for a single run). Capabilities no
    question carries are omitted; combinations are ordered by question count, largest first.
    Scores for ids outside ``capabilities`` are ignored.

    Raises ``ValueError`` if an id in ``capabilities`` has no score (naming up to 5 ids and the
    count), if ids have different numbers of runs, or if a score lies outside [0, 1].
    """
    ids = _sorted_ids(capabilities)
    if not ids:
        raise ValueError("no questions to score; capabilities is empty")
    caps = {q: canonical_capabilities(capabilities[q], where=f"question {q!r} ") for q in ids}
    runs = _score_runs(scores, ids)
    num_runs = len(runs[ids[0]])

    by_cap = {c: [q for q in ids if c in caps[q]] for c in CAPABILITIES}
    by_cap = {c: qs for c, qs in by_cap.items() if qs}
    by_combo: dict[str, list[str]] = {}
    for q in ids:
        by_combo.setdefault("_".join(caps[q]), []).append(q)
    # Largest combinations first, as the official table lists them; ties in first-seen order.
    combo_order = sorted(by_combo, key=lambda k: -len(by_combo[k]))

    total_mean, total_std = _group_stat(runs, ids, num_runs)
    return MMVetScores(
        total_mean=total_mean,
        total_std=total_std,
        per_capability={c: _group_stat(runs, qs, num_runs) for c, qs in by_cap.items()},
        per_combination={k: _group_stat(runs, by_combo[k], num_runs) for k in combo_order},
        num_runs=num_runs,
        num_questions=len(ids),
        capability_counts={c: len(qs) for c, qs in by_cap.items()},
        combination_counts={k: len(by_combo[k]) for k in combo_order},
        total_per_run=tuple(
            100.0 * sum(runs[q][r] for q in ids) / len(ids) for r in range(num_runs)
        ),
    )
