"""LLaVA-Bench (in the wild): official files, review parsing and the official relative score.

The download has ``questions.jsonl`` (``question_id, image, text, category``), ``context.jsonl``
(``id, image, caption``: one caption per image), ``answers_gpt4.jsonl`` (GPT-4's reference
answers, ``question_id, text``) and ``images/``. Rows are joined by id, never by line order:
answers by ``question_id`` and captions by ``image``, as LLaVA's ``eval_gpt_review_bench.py``
looks captions up by image name.

A review row (``eval_gpt_review_bench.py`` output) carries ``question_id``, ``category``
(``llava_bench_<category>``), the judge's ``content`` and ``tuple = [reference, model]``, both on
a 1-10 scale. LLaVA writes ``[-1, -1]`` when the reply has no score line; here such a row is
marked ``"failed": true`` as well, counted and reported, and never averaged in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.files import check_images, name_ids, read_jsonl, write_jsonl

CATEGORY_PREFIX = "llava_bench_"
FAILED = [-1.0, -1.0]


@dataclass(frozen=True)
class LLaVABenchItem:
    """One question with its image caption (the judge's context) and GPT-4's answer."""

    question_id: int
    image: str
    question: str
    category: str  # conv, detail or complex
    caption: str
    reference: str  # GPT-4's answer text
    reference_id: str  # its answer_id (``answer1_id`` of a review)


@dataclass(frozen=True)
class LLaVABench:
    source: Path
    items: dict[int, LLaVABenchItem]
    images: dict[int, Path]

    def limited(self, limit: int | None) -> LLaVABench:
        if not limit:
            return self
        ids = list(self.items)[:limit]
        return LLaVABench(
            self.source, {q: self.items[q] for q in ids}, {q: self.images[q] for q in ids}
        )


def _by_key(rows: list[dict[str, Any]], key: str, path: Path) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row[key] in out:
            raise ValueError(f"{path}: {key} {row[key]!r} appears twice; keep one row per {key}")
        out[row[key]] = row
    return out


def load_llava_bench(data_dir: str | Path, limit: int | None = None, images: bool = True):
    """Load the official LLaVA-Bench (in the wild) download into a :class:`LLaVABench`.

    ``images=False`` skips the image check (scoring and judging need no pixels). Raises
    ``FileNotFoundError``/``ValueError`` naming the file, the row or id, and the fix.
    """
    data_dir = Path(data_dir)
    qpath = data_dir / "questions.jsonl"
    questions = read_jsonl(qpath, "LLaVA-Bench questions", ("question_id", "image", "text"))
    cpath = data_dir / "context.jsonl"
    contexts = _by_key(
        read_jsonl(cpath, "LLaVA-Bench captions", ("image", "caption")), "image", cpath
    )
    apath = data_dir / "answers_gpt4.jsonl"
    refs = _by_key(
        read_jsonl(apath, "GPT-4 reference answers", ("question_id", "text")), "question_id", apath
    )
    _by_key(questions, "question_id", qpath)
    items: dict[int, LLaVABenchItem] = {}
    for row in questions:
        qid = row["question_id"]
        if row["image"] not in contexts:
            raise ValueError(
                f"{cpath}: no caption for image {row['image']!r} of {qpath} question {qid}; "
                "use context.jsonl from the same download"
            )
        if qid not in refs:
            raise ValueError(
                f"{apath}: no reference answer for question_id {qid}; "
                "use answers_gpt4.jsonl from the same download"
            )
        caption = contexts[row["image"]]["caption"]
        items[qid] = LLaVABenchItem(
            question_id=qid,
            image=row["image"],
            question=row["text"],
            category=str(row.get("category", "default")),
            caption="\n".join(caption) if isinstance(caption, list) else str(caption),
            reference=refs[qid]["text"],
            reference_id=str(refs[qid].get("answer_id", qid)),
        )
    paths = {q: data_dir / "images" / i.image for q, i in items.items()}
    if images:
        paths = check_images(
            data_dir / "images",
            {q: i.image for q, i in items.items()},
            qpath,
            "unpack the LLaVA-Bench images into DATA_DIR/images/",
        )
    return LLaVABench(qpath, items, paths).limited(limit)


def answer_rows(
    items: Mapping[int, LLaVABenchItem], answers: Mapping[int, str], model_id: str
) -> list[dict[str, Any]]:
    """Answers as LLaVA's answer JSONL rows (``answer_id`` is stable: model and question)."""
    return [
        {
            "question_id": qid,
            "prompt": items[qid].question,
            "text": answers[qid],
            "answer_id": f"{model_id}-{qid}",
            "model_id": model_id,
            "metadata": {},
        }
        for qid in items
        if qid in answers
    ]


def write_answers_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_jsonl(path, rows)


def read_answers_jsonl(path: str | Path) -> dict[int, dict[str, Any]]:
    """``{question_id: row}`` of an answer JSONL (LLaVA's ``model_vqa`` output format)."""
    path = Path(path)
    return _by_key(read_jsonl(path, "an answer file", ("question_id", "text")), "question_id", path)


def parse_two_scores(reply: str) -> list[float] | None:
    """The two scores on the reply's first line (commas count as spaces), else ``None``.

    LLaVA's ``parse_score`` splits the first line on single spaces and needs exactly two
    fields; this splits on any whitespace, so ``"7,  9"`` also parses. Scores must be finite.
    """
    first = reply.strip().split("\n")[0].replace(",", " ").split()
    if len(first) != 2:
        return None
    try:
        scores = [float(first[0]), float(first[1])]
    except ValueError:
        return None
    return scores if all(math.isfinite(s) for s in scores) else None


def read_reviews(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a review JSONL; each needs ``question_id`` and a two-number ``tuple``."""
    path = Path(path)
    rows = read_jsonl(path, "a LLaVA-Bench review file", ("question_id", "tuple"))
    for number, row in enumerate(rows, start=1):
        pair = row["tuple"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_num(v) for v in pair)):
            raise ValueError(
                f"{path}: row {number} (question_id {row['question_id']!r}) 'tuple' must be "
                "[reference score, model score]"
            )
    return rows


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_failed(row: Mapping[str, Any]) -> bool:
    """A review whose reply could not be parsed (LLaVA's ``[-1, -1]``, or ``failed``)."""
    return bool(row.get("failed")) or [float(v) for v in row["tuple"]] == FAILED


@dataclass(frozen=True)
class RunScore:
    """One review run: per category ``(ref mean, model mean, relative)`` and failed ids."""

    categories: dict[str, tuple[float, float, float]]
    failed: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class LLaVABenchScores:
    """Relative scores (model / GPT-4 reference x 100) per category and ``overall``.

    ``mean[k]`` is the mean over review runs of each run's relative score, ``std[k]`` their
    population std; ``runs`` keeps every run's numbers; ``failed`` counts unparsed reviews.
    """

    mean: dict[str, float]
    std: dict[str, float]
    runs: list[RunScore]
    num_questions: int

    @property
    def failed(self) -> int:
        return sum(len(r.failed) for r in self.runs)

    def as_metrics(self, prefix: str = "llava_bench") -> dict[str, float]:
        head = f"{prefix}/" if prefix else ""
        return {f"{head}{k}": v for k, v in self.mean.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.mean.get("overall"),
            "mean": self.mean,
            "std": self.std,
            "questions": self.num_questions,
            "failed": self.failed,
            "runs": [
                {
                    "relative": {k: v[2] for k, v in r.categories.items()},
                    "reference_mean": {k: v[0] for k, v in r.categories.items()},
                    "model_mean": {k: v[1] for k, v in r.categories.items()},
                    "failed_question_ids": r.failed,
                }
                for r in self.runs
            ],
        }

    def format_table(self, judge: str | None = None) -> str:
        """Plain-text table rounded to 1 decimal, one column per review run; ``judge`` is named
        in the title line (as in :meth:`MMVetScores.format_table`)."""
        names = list(self.mean)
        width = max(len(n) for n in [*names, "category"])
        head = "  ".join(f"run{i + 1:>3}" for i in range(len(self.runs)))
        lines = [
            f"LLaVA-Bench ({self.num_questions} questions, {len(self.runs)} review runs, "
            f"{self.failed} failed reviews{f'; judge: {judge}' if judge else ''})",
            f"{'category':<{width}}  {'score':>6}  {'std':>5}  {head}",
        ]
        for name in names:
            per_run = "  ".join(
                f"{r.categories[name][2]:>6.1f}" if name in r.categories else f"{'-':>6}"
                for r in self.runs
            )
            lines.append(
                f"{name:<{width}}  {self.mean[name]:>6.1f}  {self.std[name]:>5.1f}  {per_run}"
            )
        return "\n".join(lines)


def _category(row: Mapping[str, Any], categories: Mapping[Any, str] | None) -> str:
    if categories is not None:
        return categories[row["question_id"]]
    name = str(row.get("category", "default"))
    return name[len(CATEGORY_PREFIX) :] if name.startswith(CATEGORY_PREFIX) else name


def score_run(
    rows: Sequence[Mapping[str, Any]], categories: Mapping[Any, str] | None = None
) -> RunScore:
    """One run, as LLaVA's ``summarize_gpt_review.py`` computes it.

    For each category and for all rows (``overall``)::

        ref   = round(mean of tuple[0], 3)
        model = round(mean of tuple[1], 3)
        relative = round(model / ref * 100, 1)

    (the per-run value the summariser prints; LLaVA-1.5's published score is the mean of those
    over 3 review runs, e.g. 64.7, 65.3, 66.3 -> 65.4). Failed reviews are left out of both
    means (LLaVA would average their ``-1``s in) and listed in ``RunScore.failed``.
    """
    groups: dict[str, list[list[float]]] = {}
    failed: list[Any] = []
    for row in rows:
        if is_failed(row):
            failed.append(row["question_id"])
            continue
        pair = [float(v) for v in row["tuple"]]
        groups.setdefault(_category(row, categories), []).append(pair)
        groups.setdefault("overall", []).append(pair)
    out: dict[str, tuple[float, float, float]] = {}
    for name in sorted(k for k in groups if k != "overall") + ["overall"] * ("overall" in groups):
        pairs = groups[name]
        ref = round(sum(p[0] for p in pairs) / len(pairs), 3)
        model = round(sum(p[1] for p in pairs) / len(pairs), 3)
        # The summariser prints round(., 1); LLaVA-1.5's table averages those printed values.
        out[name] = (ref, model, round(model / ref * 100, 1) if ref else float("nan"))
    return RunScore(out, failed)


def score_llava_bench(
    runs: Sequence[Sequence[Mapping[str, Any]]],
    question_ids: Iterable[Any] | None = None,
    categories: Mapping[Any, str] | None = None,
) -> LLaVABenchScores:
    """Score review runs: each run as :func:`score_run`, then mean and population std of the
    per-run relative scores (LLaVA-1.5 reports the mean of 3 runs).

    With ``question_ids`` every run must review exactly those questions once (``ValueError``
    naming the missing or unknown ids otherwise); ``categories`` maps question id to category
    (default: each review's own ``category``).
    """
    if not runs:
        raise ValueError("no review runs to score; give at least one review file")
    expected = set(question_ids) if question_ids is not None else None
    for index, rows in enumerate(runs, start=1):
        ids = [r["question_id"] for r in rows]
        dupes = sorted({q for q in ids if ids.count(q) > 1}, key=str)
        if dupes:
            raise ValueError(f"review run {index} reviews question ids {name_ids(dupes)} twice")
        if expected is not None:
            missing = sorted(expected - set(ids), key=str)
            unknown = sorted(set(ids) - expected, key=str)
            if missing or unknown:
                raise ValueError(
                    f"review run {index}: missing question ids {name_ids(missing)}, unknown ids "
                    f"{name_ids(unknown)}; review every question of the benchmark once"
                )
    scored = [score_run(rows, categories) for rows in runs]
    names = [*sorted({k for r in scored for k in r.categories if k != "overall"}), "overall"]
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for name in names:
        values = [r.categories[name][2] for r in scored if name in r.categories]
        if not values:  # every review of every run failed
            continue
        mean[name] = sum(values) / len(values)
        std[name] = math.sqrt(sum((v - mean[name]) ** 2 for v in values) / len(values))
    count = len(expected) if expected is not None else len(runs[0])
    return LLaVABenchScores(mean, std, scored, count)
