"""Command-line plumbing shared by the standalone jobs in ``benchmarks/`` (argparse, rich).

The jobs (``benchmarks/mmvet.py``, ``llava_bench.py``, ``pope.py``, ``toy.py``,
``toy_world_eval.py``) generate, grade and score; every step resumes: answers are saved after
each batch and only missing ones are generated again, and the judge's replies are cached in
``OUT/judge_cache.jsonl``. The model is supplied by the job as a zero-argument loader, called
only if some answer is missing, so a job whose answers are complete re-grades without loading a
model. The loader builds the module class of the checkpoint's family (``model_class``), so every
family the project trains is evaluated by the same jobs, with the same generation path as the
epoch-end callbacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS, Answerer, generate_answers
from lightning_aug_dpo.eval.hf_judge import HFJudge
from lightning_aug_dpo.eval.http_judge import OpenAIJudge
from lightning_aug_dpo.eval.judges import Judge, JudgeError, RuleJudge
from lightning_aug_dpo.eval.model_class import MODEL_CLASSES, module_class, parse_model_args

#: Why the MM-Vet and LLaVA-Bench jobs (and their callbacks) allow 1024 new tokens.
LLAVA_PROTOCOL = "LLaVA-1.5's model_vqa.py for MM-Vet and LLaVA-Bench"


def add_model_load_args(group: Any, model_help: str, required: bool = False) -> None:
    """``--model --model-class --model-arg --adapter --device --trust-remote-code``: what
    :func:`model_loader` reads (the jobs and ``lightning-aug-dpo generate`` share them)."""
    group.add_argument("--model", required=required, help=model_help)
    group.add_argument(
        "--model-class", metavar="CLASS_PATH",
        help="AugDPOModule subclass to load --model with, e.g. my_pkg.MyDPOModule, instead of "
        "the one for its model_type (default: chosen from config.json)",
    )  # fmt: skip
    group.add_argument(
        "--model-arg", action="append", metavar="KEY=VALUE",
        help="an __init__ argument of the module class, as the training config's "
        "model.init_args sets it (VALUE read as JSON, else as text), e.g. image_size=512 for "
        "a Qwen-VL model trained at 512 px; repeat for more (default: the class defaults)",
    )  # fmt: skip
    group.add_argument("--adapter", help="PEFT adapter folder to apply (default: base model)")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    group.add_argument(
        "--trust-remote-code", action="store_true",
        help="run code shipped with --model's checkpoint (off: only if you trust it)",
    )  # fmt: skip


def add_model_args(
    parser: argparse.ArgumentParser,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    protocol: str = LLAVA_PROTOCOL,
    batch_size: int = 8,
    limit_help: str = "only the first N questions, for quick checks",
) -> None:
    """The loading options of :func:`add_model_load_args`, then ``--dtype --max-new-tokens
    --batch-size --limit``. ``protocol`` says where the ``max_new_tokens`` default comes from;
    every default is shown as argparse holds it (``%(default)s``), so a job's ``set_defaults``
    keeps its help right."""
    group = parser.add_argument_group("model and generation")
    add_model_load_args(
        group,
        "checkpoint folder or hub id of any supported family (the module class comes "
        "from config.json's model_type: " + ", ".join(sorted(MODEL_CLASSES)) + "); needed "
        "unless OUT already holds every answer (then no model is loaded)",
    )
    group.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
        help="weight dtype (default: %(default)s; use float32 on CPU)",
    )  # fmt: skip
    group.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens,
        help=f"answer length in tokens (default: %(default)s, {protocol})",
    )  # fmt: skip
    group.add_argument(
        "--batch-size", type=int, default=batch_size,
        help="questions per generate call (default: %(default)s)",
    )  # fmt: skip
    group.add_argument("--limit", type=int, default=None, help=f"{limit_help} (default: all)")


def add_judge_args(parser: argparse.ArgumentParser, llava: bool = False) -> None:
    """The judge options; the API key is read from the variable ``--judge-api-key-env`` names."""
    group = parser.add_argument_group("judge")
    group.add_argument(
        "--judge", default="rule", choices=["rule", "openai", "hf"],
        help="rule: offline string matching; openai: any OpenAI-compatible endpoint (OpenAI, "
        "vLLM, SGLang); hf: a local Hugging Face causal LM (default: %(default)s)",
    )  # fmt: skip
    group.add_argument("--judge-model", help="model name (openai) or path / hub id (hf)")
    group.add_argument(
        "--judge-base-url", default="https://api.openai.com/v1",
        help="endpoint base URL, e.g. http://localhost:8000/v1 (default: %(default)s, OpenAI)",
    )  # fmt: skip
    group.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY",
        help="NAME of the environment variable holding the API key (the key itself is never "
        "passed on the command line, logged or written); unset variable = no key (default: "
        "%(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--judge-timeout", type=float, default=60.0,
        help="seconds per request (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--judge-max-retries", type=int, default=6,
        help="retries on 429/5xx/connection errors, with exponential backoff "
        "(default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--judge-concurrency", type=int, default=4,
        help="requests in flight (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--judge-device", default="cpu", help="device of an hf judge (default: %(default)s)"
    )
    group.add_argument(
        "--judge-trust-remote-code", action="store_true",
        help="let an hf judge run code shipped with its checkpoint (off: only if you trust it)",
    )  # fmt: skip
    group.add_argument(
        "--runs", type=int, default=1,
        help="grading runs (mean and std over runs; default: %(default)s)",
    )  # fmt: skip
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
    """Generate only the answers not in ``done``, saving progress after every batch and showing
    it on stderr (:func:`answer_progress`)."""
    if all(q in done for q in questions):
        return {q: done[q] for q in questions}
    model = load_model()
    kept = {q: a for q, a in done.items() if q in questions}
    with answer_progress(len(questions) - len(kept)) as show:

        def on_batch(partial: dict[Any, str]) -> None:
            save(partial)
            show(len(partial) - len(kept))

        answers = generate_answers(
            model,
            questions,
            images,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            done=kept,
            on_batch=on_batch,
        )
    save(answers)
    return answers


class AnswerRate(ProgressColumn):
    """Answers per second since generation began (answers arrive a batch at a time, so rich's
    windowed speed would swing between batches and vanish in slow ones)."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text("-- answers/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:.2f} answers/s", style="progress.data.speed")


@contextmanager
def answer_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of ``total`` answers (count, answers per second, elapsed, left) on
    stderr, so that stdout keeps only the table and the metrics line that scripts read.
    Yields ``show(answered)``. On a terminal it redraws in place; otherwise rich itself prints
    only the final state, once."""
    progress = Progress(
        TextColumn("answering"),
        BarColumn(),
        MofNCompleteColumn(),
        AnswerRate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task("answering", total=total)
    with progress:
        yield lambda answered: progress.update(task, completed=answered)


def model_loader(args: argparse.Namespace) -> Callable[[], Answerer]:
    """A loader of ``--model`` (+ ``--adapter``) as its family's module in eval mode: the
    class of config.json's ``model_type`` or ``--model-class``, with ``--model-arg`` settings.

    Imported lazily: ``eval`` itself stays free of Lightning; only a job that must generate
    loads the module class.
    """

    def load() -> Answerer:
        import torch

        if not args.model:
            raise SystemExit("answers are missing: give --model (and --adapter) to generate them")
        cls = module_class(args.model, getattr(args, "model_class", None))
        settings = parse_model_args(getattr(args, "model_arg", None), cls)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # stderr: stdout carries only the results that scripts read
        print(f"loading {args.model} as {cls.__module__}.{cls.__qualname__}", file=sys.stderr)
        module = cls(
            model_name_or_path=args.model,
            init_adapter=args.adapter,
            torch_dtype=args.dtype,
            trust_remote_code=getattr(args, "trust_remote_code", False),
            **settings,
        )
        # configure_model warns that an init_adapter is not the DPO reference: a training
        # concern, noise here (a job only generates with the policy).
        setup_log = logging.getLogger("lightning_aug_dpo.model_setup")
        level = setup_log.level
        setup_log.setLevel(logging.ERROR)
        try:
            module.configure_model()
        finally:
            setup_log.setLevel(level)
        return module.to(device).eval()

    return load


def report_graded(record: dict[str, Any], what: str) -> int:
    """Print a judged job's outcome; the exit status: 0, or 2 when ``what`` (grading,
    reviewing) stopped before the end (a judge outage: the same command resumes)."""
    if not record["complete"]:
        print(f"{what} incomplete (judge: {record.get('judge_name')}): {record['error']}")
        print("rerun the same command to resume")
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
