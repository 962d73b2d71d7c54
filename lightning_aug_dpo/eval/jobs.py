"""Command-line plumbing shared by the standalone jobs in ``benchmarks/`` (argparse only).

The jobs (``benchmarks/mmvet.py``, ``llava_bench.py``, ``pope.py``, ``toy.py``) generate, grade and
score; every step resumes: answers are saved after each batch and only missing ones are
generated again, and the judge's replies are cached in ``OUT/judge_cache.jsonl``. The model is
supplied by the job as a zero-argument loader, called only if some answer is missing, so a job
whose answers are complete re-grades without loading a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS, Answerer, generate_answers
from lightning_aug_dpo.eval.hf_judge import HFJudge
from lightning_aug_dpo.eval.http_judge import OpenAIJudge
from lightning_aug_dpo.eval.judges import Judge, JudgeError, RuleJudge


def add_model_args(parser: argparse.ArgumentParser, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """``--model --adapter --dtype --device --trust-remote-code --max-new-tokens --batch-size
    --limit``."""
    group = parser.add_argument_group("model and generation")
    group.add_argument(
        "--model",
        help="checkpoint directory or hub id (LLaVA-1.5 format); needed unless OUT already "
        "holds every answer (then the job only grades and scores)",
    )
    group.add_argument("--adapter", help="PEFT adapter directory to apply (default: base model)")
    group.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
        help="weight dtype (default: bfloat16; use float32 on CPU)",
    )  # fmt: skip
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    group.add_argument(
        "--trust-remote-code", action="store_true",
        help="run code shipped with --model's checkpoint (off: only if you trust it)",
    )  # fmt: skip
    group.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens,
        help=f"answer length in tokens (default: {max_new_tokens}, the LLaVA-1.5 protocol)",
    )  # fmt: skip
    group.add_argument("--batch-size", type=int, default=8, help="questions per generate call")
    group.add_argument("--limit", type=int, default=None, help="only the first N questions")


def add_judge_args(parser: argparse.ArgumentParser, llava: bool = False) -> None:
    """The judge options; the API key is read from the variable ``--judge-api-key-env`` names."""
    group = parser.add_argument_group("judge")
    group.add_argument(
        "--judge", default="rule", choices=["rule", "openai", "hf"],
        help="rule: offline string matching; openai: any OpenAI-compatible endpoint (OpenAI, "
        "vLLM, SGLang); hf: a local Hugging Face causal LM (default: rule)",
    )  # fmt: skip
    group.add_argument("--judge-model", help="model name (openai) or path / hub id (hf)")
    group.add_argument(
        "--judge-base-url", default="https://api.openai.com/v1",
        help="endpoint base URL, e.g. http://localhost:8000/v1 (default: OpenAI)",
    )  # fmt: skip
    group.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY",
        help="NAME of the environment variable holding the API key (the key itself is never "
        "passed on the command line, logged or written); unset variable = no key",
    )  # fmt: skip
    group.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument(
        "--judge-max-retries", type=int, default=6,
        help="retries on 429/5xx/connection errors, with exponential backoff (default: 6)",
    )  # fmt: skip
    group.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight")
    group.add_argument("--judge-device", default="cpu", help="device of an hf judge")
    group.add_argument(
        "--judge-trust-remote-code", action="store_true",
        help="let an hf judge run code shipped with its checkpoint (off: only if you trust it)",
    )  # fmt: skip
    group.add_argument("--runs", type=int, default=1, help="grading runs (mean and std over runs)")
    group.add_argument("--cache", help="judge reply cache (default: OUT/judge_cache.jsonl)")
    if llava:
        group.add_argument(
            "--judge-rule-file", help="LLaVA rule.json to use instead of this project's rules "
            "(e.g. LLaVA's llava/eval/table/rule.json for the official wording)",
        )  # fmt: skip
    else:
        group.add_argument(
            "--judge-prompt-file", help="plain-text MM-Vet grading prompt to use instead of "
            "this project's (e.g. the official few-shot prompt)",
        )  # fmt: skip


def judge_from_args(args: argparse.Namespace, out: Path) -> Judge:
    """Build the judge the options describe, with its cache in ``--cache`` or ``OUT``."""
    if args.judge == "rule":
        return RuleJudge()
    if not args.judge_model:
        raise SystemExit(f"--judge {args.judge} needs --judge-model")
    files = {
        "mmvet_prompt_file": getattr(args, "judge_prompt_file", None),
        "llava_rule_file": getattr(args, "judge_rule_file", None),
        "cache_path": str(args.cache or out / "judge_cache.jsonl"),
    }
    if args.judge == "hf":
        trust = args.judge_trust_remote_code
        return HFJudge(args.judge_model, device=args.judge_device, trust_remote_code=trust, **files)
    return OpenAIJudge(
        base_url=args.judge_base_url,
        model=args.judge_model,
        api_key_env=args.judge_api_key_env or None,
        timeout=args.judge_timeout,
        max_retries=args.judge_max_retries,
        concurrency=args.judge_concurrency,
        **files,
    )


def answer_missing(
    load_model: Callable[[], Answerer],
    questions: Mapping[Any, str],
    images: Mapping[Any, Path],
    done: Mapping[Any, str],
    save: Callable[[dict[Any, str]], None],
    max_new_tokens: int,
    batch_size: int,
) -> dict[Any, str]:
    """Generate only the answers not in ``done``, saving progress after every batch."""
    if all(q in done for q in questions):
        return {q: done[q] for q in questions}
    answers = generate_answers(
        load_model(),
        questions,
        images,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        done={q: a for q, a in done.items() if q in questions},
        on_batch=save,
    )
    save(answers)
    return answers


def llava_loader(args: argparse.Namespace) -> Callable[[], Answerer]:
    """A loader of ``--model`` (+ ``--adapter``) as a ``LlavaDPOModule`` in eval mode.

    Imported lazily: ``eval`` itself stays free of Lightning; only a job that must generate
    loads the module class.
    """

    def load() -> Answerer:
        import torch

        from lightning_aug_dpo.models.llava import LlavaDPOModule

        if not args.model:
            raise SystemExit("answers are missing: give --model (and --adapter) to generate them")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        module = LlavaDPOModule(
            model_name_or_path=args.model,
            init_adapter=args.adapter,
            torch_dtype=args.dtype,
            trust_remote_code=getattr(args, "trust_remote_code", False),
        )
        module.configure_model()
        return module.to(device).eval()

    return load


def report_graded(record: dict[str, Any], what: str) -> int:
    """Print a judged job's outcome; the exit status: 0, or 2 when ``what`` (grading,
    reviewing) stopped before the end (a judge outage: the same command resumes)."""
    if not record["complete"]:
        print(f"{what} incomplete: {record['error']}\nrerun the same command to resume")
        return 2
    print(record["table"])
    print(json.dumps(record["metrics"]))
    return 0


def job_main(
    prog: str,
    run_main: Callable[[list[str]], int],
    score_main: Callable[[list[str]], int],
    argv: list[str] | None = None,
) -> int:
    """``prog [score] ARGS``: the ``score`` subcommand or a run; bad input exits 1 with a
    one-line message instead of a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["score"]:
            return score_main(argv[1:])
        return run_main(argv)
    except (FileNotFoundError, ValueError, JudgeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
