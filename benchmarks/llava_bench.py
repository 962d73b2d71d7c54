"""LLaVA-Bench (in the wild): generate answers, review them against GPT-4's with a judge, and
compute the relative score as LLaVA's summarize_gpt_review.py does. Resumable.

    # generate + review (3 runs, as LLaVA-1.5 reports) + score
    python benchmarks/llava_bench.py --model llava-hf/llava-1.5-7b-hf \\
        --data-dir data/llava-bench-in-the-wild --out runs/eval/llava_bench \\
        --judge openai --judge-model gpt-4-0613 --runs 3 \\
        --judge-rule-file LLaVA/llava/eval/table/rule.json

    # score existing review files, no model needed
    python benchmarks/llava_bench.py score --questions questions.jsonl \\
        --reviews R1.jsonl R2.jsonl R3.jsonl

--model takes a checkpoint of any family the project trains; its module class comes from
config.json's model_type (or --model-class), and it answers as the LLaVA-Bench callback does
during training (see benchmarks/mmvet.py --help).

DATA_DIR holds questions.jsonl, context.jsonl, answers_gpt4.jsonl and images/. OUT receives
answers.jsonl (LLaVA's answer format), reviews-run{k}.jsonl (LLaVA's review format, tuple =
[GPT-4 reference score, model score]), scores.json (relative score per category and overall,
per run and their mean/std, failed reviews counted; judge model and prompt identity) and
judge_cache.jsonl. Relative score per run: round(mean(model), 3) / round(mean(reference), 3) x
100; reviews whose reply had no score line are counted as failed and left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_aug_dpo.eval import (
    load_llava_bench,
    read_answers_jsonl,
    read_reviews,
    score_llava_bench,
)
from lightning_aug_dpo.eval.files import read_jsonl, write_json
from lightning_aug_dpo.eval.jobs import (
    add_judge_args,
    add_model_args,
    answer_missing,
    job_main,
    judge_from_args,
    model_loader,
    report_graded,
)
from lightning_aug_dpo.eval.llava_bench import answer_rows, write_answers_jsonl
from lightning_aug_dpo.eval.pipeline import finish_llava_bench


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava_bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommand: score  (score review files without a model: "
        "see `llava_bench.py score --help`)",
    )
    parser.add_argument(
        "--data-dir", required=True,
        help="LLaVA-Bench download: questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    parser.add_argument(
        "--model-id", default=None, help="model_id of the answer rows (default: model dir name)"
    )
    add_model_args(parser)
    add_judge_args(parser, llava=True)
    return parser


def score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava_bench.py score",
        description="Relative scores of LLaVA-Bench review files (one per review run): per "
        "category and overall, per run, and the mean and population std over runs.",
    )
    parser.add_argument("--questions", required=True, help="questions.jsonl (gives categories)")
    parser.add_argument(
        "--reviews", required=True, nargs="+", help="review JSONL files, one per run"
    )
    parser.add_argument("--out", help="scores JSON to write (default: beside the first review)")
    return parser


def score_main(argv: list[str]) -> int:
    args = score_parser().parse_args(argv)
    rows = read_jsonl(args.questions, "LLaVA-Bench questions", ("question_id",))
    categories = {r["question_id"]: str(r.get("category", "default")) for r in rows}
    runs = [read_reviews(path) for path in args.reviews]
    scores = score_llava_bench(runs, categories, categories)
    first = Path(args.reviews[0])
    out = Path(args.out or first.with_name(first.stem + "_scores.json"))
    # The judge as the review rows record it (LLaVA's own rows carry no model: "unrecorded").
    models = sorted({str(r.get("model", "unrecorded")) for rows in runs for r in rows})
    record = {"reviews": [str(p) for p in args.reviews], "judge": {"models": models}}
    write_json(out, {**record, **scores.to_dict()})
    print(scores.format_table(judge=", ".join(models)))
    print(f"wrote {out}")
    return 0


def run_main(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    out = Path(args.out)
    bench = load_llava_bench(args.data_dir, args.limit)
    model_id = args.model_id or Path(str(args.model or "model").rstrip("/")).name
    answers_path = out / "answers.jsonl"
    done = (
        {q: r["text"] for q, r in read_answers_jsonl(answers_path).items()}
        if answers_path.is_file()
        else {}
    )
    answers = answer_missing(
        model_loader(args),
        {q: i.question for q, i in bench.items.items()},
        bench.images,
        done,
        lambda part: write_answers_jsonl(answers_path, answer_rows(bench.items, part, model_id)),
        args.max_new_tokens,
        args.batch_size,
    )
    judge = judge_from_args(args, out)
    model = {"model": args.model, "adapter": args.adapter}
    record = finish_llava_bench(bench, answers, judge, out, args.runs, model_id, model=model)
    return report_graded(record, "reviewing")


def main(argv: list[str] | None = None) -> int:
    return job_main("llava_bench.py", run_main, score_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
