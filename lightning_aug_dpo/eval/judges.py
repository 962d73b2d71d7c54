"""Judges that grade an MM-Vet prediction against its ground-truth answer.

A judge turns ``(question, answer, prediction)`` into a :class:`Grade` whose ``content`` is the
judge's raw reply (kept in the grade file) and whose ``score`` lies in [0, 1]. The official
benchmark uses GPT-4; :class:`RuleJudge` is an offline, deterministic stand-in for tests, smoke
runs and CI. Further judges (an OpenAI-compatible HTTP judge, a local HF model) implement the
same :meth:`Judge.grade` method.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lightning_aug_dpo.eval.mmvet import MMVetItem, id_sort_key

AND = "<AND>"
OR = "<OR>"


@dataclass(frozen=True)
class Grade:
    """One grading run of one question: ``score`` in [0, 1], the judge's raw reply, its name."""

    score: float
    content: str
    model: str


@runtime_checkable
class Judge(Protocol):
    """Grades a prediction; ``name`` goes into the grade file's ``model`` list."""

    name: str

    def grade(self, question: str, answer: str, prediction: str) -> Grade:
        """Grade ``prediction`` against the ground truth ``answer`` to ``question``."""
        ...


def _is_punct(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _strip_token(token: str) -> str:
    # Only the edges: "3.5", "u.s" and "1,000" keep their inner punctuation.
    start, end = 0, len(token)
    while start < end and _is_punct(token[start]):
        start += 1
    while end > start and _is_punct(token[end - 1]):
        end -= 1
    return token[start:end]


def normalize(text: str) -> str:
    """Lower-case, split on whitespace, strip punctuation at token edges, rejoin with spaces."""
    tokens = (_strip_token(tok) for tok in text.lower().split())
    return " ".join(tok for tok in tokens if tok)


def contains_phrase(prediction: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in ``prediction`` on whole-word boundaries.

    Both strings are normalised first, so "cat" matches "The cat." but not "category".
    """
    phrase, prediction = normalize(phrase), normalize(prediction)
    return bool(phrase) and f" {phrase} " in f" {prediction} "


class RuleJudge(Judge):
    """Offline, deterministic string-matching judge (name ``"rule"``).

    The ground truth is read as alternatives separated by ``<OR>``, each a list of parts
    separated by ``<AND>``; a plain answer is one alternative with one part. An alternative
    scores the fraction of its parts that occur in the prediction as whole words/phrases after
    :func:`normalize` (partial credit, as MM-Vet's GPT grader gives 0.5 for half of an
    ``<AND>`` answer), and the grade is the best alternative's score. So ``<AND>`` gives
    matched/total, ``<OR>`` gives 1.0 if any part occurs else 0.0, and a plain answer 1.0 or
    0.0. There are no synonym tables: "2" matches "two" only if the answer lists both via
    ``<OR>``.
    """

    name = "rule"

    def grade(self, question: str, answer: str, prediction: str) -> Grade:
        """Score ``prediction`` against ``answer``; ``question`` is unused by this judge."""
        best: tuple[float, int, int] | None = None
        for alternative in answer.split(OR):
            parts = [p for p in alternative.split(AND) if normalize(p)]
            if not parts:
                continue
            hits = sum(contains_phrase(prediction, p) for p in parts)
            candidate = (hits / len(parts), hits, len(parts))
            if best is None or candidate[0] > best[0]:
                best = candidate
        if best is None:
            return Grade(0.0, "empty ground-truth answer", self.name)
        score, hits, total = best
        return Grade(score, f"matched {hits}/{total} parts", self.name)


def _missing_ids(items: Mapping[str, MMVetItem], answers: Mapping[str, str]) -> list[str]:
    return sorted((qid for qid in items if qid not in answers), key=id_sort_key)


def grade_mmvet(
    judge: Judge,
    items: Mapping[str, MMVetItem],
    answers: Mapping[str, str],
    runs: int = 1,
) -> dict[str, list[Grade]]:
    """Grade every item's answer ``runs`` times: ``{id: [Grade per run]}`` in numeric id order.

    Raises ``ValueError`` naming the ids (up to 5, and the count) that have no answer; answers
    for ids outside ``items`` are ignored.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    missing = _missing_ids(items, answers)
    if missing:
        shown = ", ".join(repr(q) for q in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"no answer for question ids {shown} ({len(missing)} in all); "
            "answer every MM-Vet question before grading"
        )
    return {
        qid: [judge.grade(item.question, item.answer, answers[qid]) for _ in range(runs)]
        for qid, item in sorted(items.items(), key=lambda kv: id_sort_key(kv[0]))
    }


def grade_scores(grades: Mapping[str, list[Grade]]) -> dict[str, list[float]]:
    """``{id: [Grade]}`` -> ``{id: [score per run]}``, the input of ``score_mmvet``."""
    return {qid: [g.score for g in runs] for qid, runs in grades.items()}
