"""Run a judge over a benchmark: N grading runs, bounded concurrency, partial results on outage.

Each (question, run) is one task. Tasks run on a thread pool of ``judge.concurrency`` workers,
so an HTTP judge keeps that many requests in flight. If the judge fails (an outage after all
retries, or a refused request), no new tasks start, the finished ones are kept, and the outcome
says ``complete=False`` with the error: grading resumes from the judge's reply cache next time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lightning_aug_dpo.eval.files import name_ids, sorted_ids
from lightning_aug_dpo.eval.judges import Grade, Judge, JudgeError, Review
from lightning_aug_dpo.eval.llava_bench import CATEGORY_PREFIX, LLaVABenchItem
from lightning_aug_dpo.eval.mmvet import MMVetItem

T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    """``results[id][run]`` for finished tasks; ``complete`` is False after a judge failure."""

    results: dict[Any, list[T | None]]
    complete: bool = True
    error: str | None = None
    pending: list[Any] = field(default_factory=list)  # ids with at least one run missing


def _run_tasks(
    ids: list[Any], runs: int, concurrency: int, task: Callable[[Any, int], T]
) -> Outcome[T]:
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    results: dict[Any, list[T | None]] = {qid: [None] * runs for qid in ids}
    error: str | None = None
    # Run-major order: a stop after an outage leaves whole early runs done, as the official
    # grader (one run after the other) would.
    jobs = [(qid, r) for r in range(runs) for qid in ids]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(task, qid, r): (qid, r) for qid, r in jobs}
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.cancelled() or not future.done():
                future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, (qid, r) in futures.items():
            if future.cancelled():
                continue
            err = future.exception()
            if err is None:
                results[qid][r] = future.result()
            elif isinstance(err, JudgeError):
                error = error or str(err)
            else:
                raise err
    pending = [qid for qid in ids if any(v is None for v in results[qid])]
    return Outcome(results, not pending, error, pending)


def _check_answers(ids: list[Any], answers: Mapping[Any, str], what: str) -> None:
    missing = [qid for qid in ids if qid not in answers]
    if missing:
        raise ValueError(
            f"no answer for question ids {name_ids(missing)}; answer every {what} question "
            "before grading"
        )


def grade_mmvet_outcome(
    judge: Judge, items: Mapping[str, MMVetItem], answers: Mapping[str, str], runs: int = 1
) -> Outcome[Grade]:
    """Grade every item's answer ``runs`` times; partial on a judge failure (see module doc)."""
    ids = sorted_ids(items)
    _check_answers(ids, answers, "MM-Vet")

    def task(qid: str, run: int) -> Grade:
        item = items[qid]
        return judge.grade(item.question, item.answer, answers[qid], run=run)

    return _run_tasks(ids, runs, judge.concurrency, task)


def grade_mmvet(
    judge: Judge, items: Mapping[str, MMVetItem], answers: Mapping[str, str], runs: int = 1
) -> dict[str, list[Grade]]:
    """``{id: [Grade per run]}`` in numeric id order; raises the judge's error on failure.

    Raises ``ValueError`` naming the ids (up to 5, and the count) that have no answer; answers
    for ids outside ``items`` are ignored.
    """
    outcome = grade_mmvet_outcome(judge, items, answers, runs)
    if not outcome.complete:
        raise JudgeError(outcome.error or "grading incomplete")
    return {qid: [g for g in grades if g is not None] for qid, grades in outcome.results.items()}


def grade_scores(grades: Mapping[str, list[Grade]]) -> dict[str, list[float]]:
    """``{id: [Grade]}`` -> ``{id: [score per run]}``, the input of ``score_mmvet``."""
    return {qid: [g.score for g in runs] for qid, runs in grades.items()}


def review_row(index: int, item: LLaVABenchItem, answer_id: str, review: Review) -> dict[str, Any]:
    """A review JSONL row as ``eval_gpt_review_bench.py`` writes it (plus ``model``/``failed``)."""
    return {
        "id": index,
        "question_id": item.question_id,
        "answer1_id": item.reference_id,
        "answer2_id": answer_id,
        "category": CATEGORY_PREFIX + item.category,
        "content": review.content,
        "tuple": review.scores,
        "model": review.model,
        "failed": review.failed,
    }


def review_llava_bench(
    judge: Judge,
    items: Mapping[int, LLaVABenchItem],
    answers: Mapping[int, str],
    runs: int = 1,
    answer_ids: Mapping[int, str] | None = None,
) -> Outcome[dict[str, Any]]:
    """Review every answer ``runs`` times: ``results[qid][run]`` is a review row."""
    ids = list(items)
    _check_answers(ids, answers, "LLaVA-Bench")
    index = {qid: i + 1 for i, qid in enumerate(ids)}

    def task(qid: int, run: int) -> dict[str, Any]:
        review = judge.review(items[qid], answers[qid], run=run)
        answer_id = (answer_ids or {}).get(qid, str(qid))
        return review_row(index[qid], items[qid], answer_id, review)

    return _run_tasks(ids, runs, judge.concurrency, task)


def judge_models(outcome: Outcome[Any]) -> list[str]:
    """The models the judge's replies name (sorted, each once), from finished grades or review
    rows: what actually graded, e.g. the dated snapshot an alias such as ``gpt-4o`` resolved to."""
    names: set[str] = set()
    for results in outcome.results.values():
        for result in results:
            if isinstance(result, dict):  # a review row
                model = result.get("model")
            else:  # a Grade, or None for an unfinished task
                model = getattr(result, "model", None)
            if model:
                names.add(str(model))
    return sorted(names)


def runs_of(outcome: Outcome[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Review rows per run (finished rows only), the input of ``score_llava_bench``."""
    num = max((len(v) for v in outcome.results.values()), default=0)
    return [
        [rows[r] for rows in outcome.results.values() if rows[r] is not None] for r in range(num)
    ]
