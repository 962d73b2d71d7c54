"""MM-Vet: generate answers with a model, grade them with a judge, score them as the official
grader does. Resumable: rerun the same command after an interruption.

    # generate + grade + score (GPT-4 judge; the key is read from $OPENAI_API_KEY)
    python benchmarks/mmvet.py --model llava-hf/llava-1.5-7b-hf --adapter runs/x/adapter \\
        --data-dir data/mm-vet --out runs/eval/mmvet --judge openai --judge-model gpt-4-0613

    # a local vLLM / SGLang server as the judge, 3 grading runs
    python benchmarks/mmvet.py --model ... --data-dir data/mm-vet --out runs/eval/mmvet \\
        --judge openai --judge-base-url http://localhost:8000/v1 --judge-model Qwen2.5-72B \\
        --judge-api-key-env NONE --runs 3

    # any supported family: the module class comes from the checkpoint's config.json
    python benchmarks/mmvet.py --model Qwen/Qwen2.5-VL-7B-Instruct --adapter runs/q/adapter \\
        --data-dir data/mm-vet --out runs/eval/mmvet-qwen --judge openai --judge-model gpt-4-0613

    # score existing official files, no model needed
    python benchmarks/mmvet.py score --grades GRADES.json --index mm-vet.json

--model takes a checkpoint of any family the project trains (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, Gemma 3, InternVL, SmolVLM / Idefics3): its module class comes from
config.json's model_type (--model-class names your own AugDPOModule subclass instead), and it
answers through the same generation path as the MM-Vet callback during training (give the
training config's model settings that change answers, such as image_size, with --model-arg).

DATA_DIR is the official download (mm-vet.json + images/). OUT receives answers.json (the
official results format, uploadable to the MM-Vet evaluation server), grades.json (the official
grader's format), scores.json (scores per capability, per capability combination, total and std
over runs; judge model and prompt identity) and judge_cache.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning_aug_dpo.eval import (
    load_capabilities,
    load_mmvet_dir,
    read_answers,
    read_grades,
    score_mmvet,
    write_answers,
)
from lightning_aug_dpo.eval.files import write_json
from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS
from lightning_aug_dpo.eval.jobs import (
    LLAVA_PROTOCOL,
    add_judge_args,
    add_model_args,
    answer_missing,
    job_main,
    judge_from_args,
    model_loader,
    report_graded,
)
from lightning_aug_dpo.eval.pipeline import finish_mmvet

SCORE_HELP = "score official files without a model: see `mmvet.py score --help`"


def run_parser(
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, protocol: str = LLAVA_PROTOCOL
) -> argparse.ArgumentParser:
    """The run's options; ``max_new_tokens`` and ``protocol`` (why that default) let a job on
    another MM-Vet-format benchmark (``toy.py``) keep its own answer length."""
    parser = argparse.ArgumentParser(
        prog="mmvet.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"subcommand: score  ({SCORE_HELP})",
    )
    parser.add_argument("--data-dir", required=True, help="MM-Vet download: mm-vet.json, images/")
    parser.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    add_model_args(parser, max_new_tokens, protocol)
    add_judge_args(parser)
    return parser


def score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmvet.py score",
        description="Score an MM-Vet grade file as the official grader does: per capability, "
        "the 16 capability combinations, total, and the population std of the total over runs.",
    )
    parser.add_argument("--grades", required=True, help="grade file {id: {model, content, score}}")
    parser.add_argument(
        "--index", required=True, help="mm-vet.json (or any {id: {capability: [...]}} file)"
    )
    parser.add_argument("--out", help="scores JSON to write (default: GRADES with _scores.json)")
    return parser


def score_main(argv: list[str]) -> int:
    args = score_parser().parse_args(argv)
    scores = score_mmvet(read_grades(args.grades), load_capabilities(args.index))
    out = Path(args.out or Path(args.grades).with_name(Path(args.grades).stem + "_scores.json"))
    raw = json.loads(Path(args.grades).read_text(encoding="utf-8"))
    # The judge as the grade file records it (the official grader keeps the reply's model).
    models = sorted(
        {m for row in raw.values() if isinstance(row, dict) for m in row.get("model", [])}
    )
    write_json(out, {"grades": str(args.grades), "judge": {"models": models}, **scores.to_dict()})
    print(scores.format_table(judge=", ".join(models)))
    print(f"wrote {out}")
    return 0


def run_main(argv: list[str], parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or run_parser()).parse_args(argv)
    out = Path(args.out)
    bench = load_mmvet_dir(args.data_dir, args.limit)
    answers_path = out / "answers.json"
    done = read_answers(answers_path) if answers_path.is_file() else {}
    answers = answer_missing(
        model_loader(args),
        {q: i.question for q, i in bench.items.items()},
        bench.images,
        done,
        lambda partial: write_answers(answers_path, partial),
        args.max_new_tokens,
        args.batch_size,
    )
    judge = judge_from_args(args, out)
    model = {"model": args.model, "adapter": args.adapter}
    record = finish_mmvet(bench, answers, judge, out, args.runs, model=model)
    return report_graded(record, "grading")


def main(argv: list[str] | None = None) -> int:
    return job_main("mmvet.py", run_main, score_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
