"""From answers to score files: grade (resumable), score, and write the official formats.

Shared by the epoch-end callbacks and the standalone jobs. Each ``finish_*`` writes into one
output folder:

* MM-Vet: ``answers.json`` (results format ``{"v1_0": ...}``), ``grades.json`` (the official
  grader's ``{id: {model, content, score}}``, fully graded ids only), ``scores.json``;
* LLaVA-Bench: ``answers.jsonl`` (LLaVA's answer rows), ``reviews-run{k}.jsonl`` (review rows with
  ``tuple``), ``scores.json``;
* POPE: ``answers-<split>.jsonl``, ``scores.json``; the toy world: ``answers.jsonl`` (``{id,
  prompt, answer}``), ``scores.json`` (judge-free: always complete).

``scores.json`` records ``complete`` (False after a judge outage, with the error), the judge's
identity (``judge``: class, model, endpoint, prompt sources and hashes; never a key), its name
(``judge_name``: ``"rule"``, ``"openai:<model>"``, ``"hf:<path>"``) and the models its replies
named (``judge_models``, e.g. the dated snapshot behind an alias), the number of runs, the full
scores and the flat metrics; the printed table names the judge in its title line. The official
answer and grade files stay as the official tools write them. Grading an incomplete folder again
resumes from the judge's reply cache: only unanswered requests are sent.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.files import read_jsonl, write_json, write_jsonl
from lightning_aug_dpo.eval.grading import (
    grade_mmvet_outcome,
    judge_models,
    review_llava_bench,
    runs_of,
)
from lightning_aug_dpo.eval.judges import Judge
from lightning_aug_dpo.eval.llava_bench import (
    LLaVABench,
    answer_rows,
    read_answers_jsonl,
    score_llava_bench,
    write_answers_jsonl,
)
from lightning_aug_dpo.eval.mmvet import (
    MMVetBenchmark,
    read_answers,
    score_mmvet,
    write_answers,
    write_grades,
)
from lightning_aug_dpo.eval.pope import (
    POPEBenchmark,
    format_pope_table,
    pope_as_metrics,
    score_pope,
)
from lightning_aug_dpo.eval.toy_world import (
    ToyBenchmark,
    format_toy_table,
    score_answer,
    score_toy,
    toy_prompts,
)


def _write_scores(out: Path, record: dict[str, Any]) -> None:
    write_json(out / "scores.json", record)


def read_scores(out: str | Path) -> dict[str, Any] | None:
    """``scores.json`` of an output folder, or ``None`` if there is none (or it is torn)."""
    path = Path(out) / "scores.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def judge_summary(judge: Judge, served: list[str]) -> str:
    """The judge for a summary line: its label, plus the models its replies named when they are
    not the configured one, e.g. ``"openai:gpt-4o (replies from gpt-4o-2024-08-06)"``."""
    if any(model != judge.name for model in served):
        return f"{judge.label()} (replies from {', '.join(served)})"
    return judge.label()


def _graded_record(
    benchmark: str,
    outcome: Any,
    judge: Judge,
    runs: int,
    questions: int,
    files: dict[str, Any],
    prefix: str,
    model: dict[str, Any] | None,
) -> dict[str, Any]:
    """The score record of a judged benchmark before scoring: what was graded, by whom, and
    whether grading finished (``scores`` stays None until it did)."""
    return ({"model": model} if model is not None else {}) | {
        "benchmark": benchmark,
        "complete": outcome.complete,
        "error": outcome.error,
        "pending_ids": outcome.pending,
        "judge": judge.identity(),
        "judge_name": judge.label(),
        "judge_models": judge_models(outcome),
        "runs": runs,
        "questions": questions,
        "files": files,
        "scores": None,
        "metrics": {f"{prefix}/complete": float(outcome.complete)},
    }


def finish_mmvet(
    bench: MMVetBenchmark,
    answers: dict[str, str] | None,
    judge: Judge,
    out: str | Path,
    runs: int = 1,
    prefix: str = "mmvet",
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write answers (``None``: read ``out/answers.json``), grade, score; return the record.
    ``model``: what was evaluated, recorded under ``"model"`` in ``scores.json``."""
    out = Path(out)
    if answers is None:
        answers = read_answers(out / "answers.json")
    else:
        write_answers(out / "answers.json", answers)
    outcome = grade_mmvet_outcome(judge, bench.items, answers, runs)
    graded = {q: g for q, g in outcome.results.items() if all(x is not None for x in g)}
    write_grades(out / "grades.json", graded)  # type: ignore[arg-type]
    files = {"answers": "answers.json", "grades": "grades.json"}
    record = _graded_record("mmvet", outcome, judge, runs, len(bench.items), files, prefix, model)
    if outcome.complete:
        scores = score_mmvet(
            {q: [g.score for g in gs] for q, gs in graded.items()},
            {q: i.capabilities for q, i in bench.items.items()},
        )
        record["scores"] = scores.to_dict()
        record["metrics"].update(scores.as_metrics(prefix))
        record["table"] = scores.format_table(judge=judge_summary(judge, record["judge_models"]))
    _write_scores(out, record)
    return record


def finish_llava_bench(
    bench: LLaVABench,
    answers: dict[int, str] | None,
    judge: Judge,
    out: str | Path,
    runs: int = 1,
    model_id: str = "model",
    prefix: str = "llava_bench",
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """As :func:`finish_mmvet` for LLaVA-Bench (``None``: read ``out/answers.jsonl``)."""
    out = Path(out)
    if answers is None:
        rows = read_answers_jsonl(out / "answers.jsonl")
        answers = {q: r["text"] for q, r in rows.items()}
        answer_ids = {q: str(r.get("answer_id", q)) for q, r in rows.items()}
    else:
        rows_out = answer_rows(bench.items, answers, model_id)
        write_answers_jsonl(out / "answers.jsonl", rows_out)
        answer_ids = {r["question_id"]: r["answer_id"] for r in rows_out}
    outcome = review_llava_bench(judge, bench.items, answers, runs, answer_ids)
    per_run = runs_of(outcome)
    for k, rows_k in enumerate(per_run, start=1):
        write_jsonl(out / f"reviews-run{k}.jsonl", rows_k)
    files = {
        "answers": "answers.jsonl",
        "reviews": [f"reviews-run{k}.jsonl" for k in range(1, len(per_run) + 1)],
    }
    record = _graded_record(
        "llava_bench", outcome, judge, runs, len(bench.items), files, prefix, model
    )
    if outcome.complete:
        scores = score_llava_bench(
            per_run, bench.items, {q: i.category for q, i in bench.items.items()}
        )
        record["scores"] = scores.to_dict()
        record["metrics"].update(scores.as_metrics(prefix))
        record["metrics"][f"{prefix}/failed"] = float(scores.failed)
        record["table"] = scores.format_table(judge=judge_summary(judge, record["judge_models"]))
    _write_scores(out, record)
    return record


def finish_pope(
    bench: POPEBenchmark,
    answers: dict[str, str] | None,
    out: str | Path,
    model_id: str = "model",
    prefix: str = "pope",
) -> dict[str, Any]:
    """Write ``answers-<split>.jsonl`` (LLaVA's answer rows), score, write ``scores.json``.

    ``answers`` is ``{"split/question_id": text}``; ``None`` reads the answer files in ``out``.
    """
    out = Path(out)
    splits = sorted({i.split for i in bench.items.values()})
    if answers is None:
        answers = {}
        for split in splits:
            for qid, row in read_answers_jsonl(out / f"answers-{split}.jsonl").items():
                answers[f"{split}/{qid}"] = row["text"]
    else:
        for split in splits:
            rows = [
                {
                    "question_id": item.question_id,
                    "prompt": item.question,
                    "text": answers[key],
                    "answer_id": f"{model_id}-{key}",
                    "model_id": model_id,
                    "metadata": {"label": item.label},
                }
                for key, item in bench.items.items()
                if item.split == split and key in answers
            ]
            write_jsonl(out / f"answers-{split}.jsonl", rows)
    scores = score_pope(bench.items, answers)
    record: dict[str, Any] = {
        "benchmark": "pope",
        "complete": True,
        "error": None,
        "judge": None,
        "questions": len(bench.items),
        "files": {"answers": [f"answers-{s}.jsonl" for s in splits]},
        "scores": scores,
        "metrics": {f"{prefix}/complete": 1.0, **pope_as_metrics(scores, prefix)},
        "table": format_pope_table(scores),
    }
    _write_scores(out, record)
    return record


def _model_label(model: dict[str, Any] | None) -> str:
    """The table's row name: the adapter's folder if any, else the model's, else ``model``."""
    if not model:
        return "model"
    name = model.get("adapter") or model.get("model")
    return Path(str(name)).name if name else "model"


def finish_toy(
    bench: ToyBenchmark,
    answers: dict[str, str] | None,
    out: str | Path,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``answers.jsonl`` (``{id, prompt, answer}`` per question: descriptions, then the
    probes as ``pope:<split>/<question_id>``), score exactly from the scene records, write
    ``scores.json``; ``None`` reads ``out/answers.jsonl``. ``model`` as :func:`finish_mmvet`.

    Metrics are :func:`~lightning_aug_dpo.eval.toy_world.score_toy`'s ``toy/...`` names plus
    ``toy/complete`` (always 1: no judge, nothing can be left pending).
    """
    out = Path(out)
    questions, _ = toy_prompts(bench)
    if answers is None:
        rows = read_jsonl(out / "answers.jsonl", "toy-world answers", ("id", "answer"))
        answers = {str(r["id"]): str(r["answer"]) for r in rows}
    else:
        write_jsonl(
            out / "answers.jsonl",
            ({"id": k, "prompt": q, "answer": answers[k]} for k, q in questions.items()
             if k in answers),
        )  # fmt: skip
    metrics = score_toy(bench, answers)
    # Which kinds are named without being there: the prior partners, if SeVa has work to do.
    hallucinated: Counter[str] = Counter()
    for qid, scene in bench.scenes.items():
        hallucinated.update(score_answer(answers[qid], scene)["hallucinated"])
    record: dict[str, Any] = ({"model": model} if model is not None else {}) | {
        "benchmark": "toy",
        "complete": True,
        "error": None,
        "judge": None,
        "questions": len(questions),
        "descriptions": len(bench.questions),
        "probes": len(questions) - len(bench.questions),
        "files": {"answers": "answers.jsonl"},
        "scores": {"hallucinated_kinds": dict(hallucinated.most_common())},
        "metrics": {"toy/complete": 1.0, **metrics},
        "table": format_toy_table({_model_label(model): metrics}),
    }
    _write_scores(out, record)
    return record
