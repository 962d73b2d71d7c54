"""POPE: yes/no object-hallucination questions on COCO val2014, scored without a judge
(accuracy, precision, recall, F1, yes-ratio per split, as LLaVA's eval_pope.py). Resumable.

    python benchmarks/pope.py --model llava-hf/llava-1.5-7b-hf --adapter runs/x/adapter \\
        --data-dir data/pope --image-dir data/coco/val2014 --out runs/eval/pope

DATA_DIR holds the POPE question files coco_pope_{random,popular,adversarial}.json (JSON
lines: question_id, image, text, label); IMAGE_DIR the COCO val2014 images; both are supplied
by the user. OUT receives answers-<split>.jsonl (LLaVA's answer format), progress.jsonl
(answers saved after every batch: a rerun generates only the missing ones) and scores.json.
Each question gets LLaVA-1.5's suffix "Answer the question using a single word or phrase."
unless --prompt-suffix says otherwise. --model takes a checkpoint of any family the project
trains (the module class comes from config.json's model_type, or --model-class); it answers as
the POPE callback does during training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning_aug_dpo.eval import load_pope, read_answers_jsonl
from lightning_aug_dpo.eval.files import write_jsonl
from lightning_aug_dpo.eval.jobs import add_model_args, answer_missing, model_loader
from lightning_aug_dpo.eval.pipeline import finish_pope
from lightning_aug_dpo.eval.pope import POPE_SUFFIX, SPLITS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pope.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", required=True, help="folder of coco_pope_<split>.json files")
    p.add_argument("--image-dir", required=True, help="COCO val2014 images")
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument(
        "--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
        help=f"splits to answer (default: {' '.join(SPLITS)})",
    )  # fmt: skip
    p.add_argument(
        "--prompt-suffix", default=POPE_SUFFIX,
        help=f"text appended to each question (default: {POPE_SUFFIX!r}, LLaVA-1.5's hint)",
    )  # fmt: skip
    add_model_args(
        p,
        max_new_tokens=128,
        protocol="LLaVA-1.5's model_vqa_loader.py for POPE",
        limit_help="only the first N questions of each split",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    try:
        bench = load_pope(args.data_dir, args.image_dir, args.splits, args.limit)
        progress = out / "progress.jsonl"
        done = (
            {str(r["question_id"]): r["text"] for r in read_answers_jsonl(progress).values()}
            if progress.is_file()
            else {}
        )

        def save(part: dict) -> None:
            write_jsonl(progress, [{"question_id": k, "text": v} for k, v in part.items()])

        answers = answer_missing(
            model_loader(args),
            {k: i.question + args.prompt_suffix for k, i in bench.items.items()},
            bench.images,
            done,
            save,
            args.max_new_tokens,
            args.batch_size,
        )
        model_id = Path(str(args.model or "model").rstrip("/")).name
        record = finish_pope(bench, answers, out, model_id)
    except (FileNotFoundError, ValueError) as err:
        print(f"pope.py: error: {err}", file=sys.stderr)
        return 1
    print(record["table"])
    print(json.dumps(record["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
