"""Toy-world evaluation: long-form descriptions and yes/no probes on the generated toy world,
scored exactly from its scene records (no judge). Resumable.

    python -m lightning_aug_dpo.data.toy_world data/toy            # write the world once
    python benchmarks/toy_world_eval.py --model runs/toy-sft/merged --adapter runs/x/adapter \\
        --split-dir data/toy/val --out runs/eval/toy-val --dtype float32

SPLIT_DIR is OUT/val or OUT/test of the world writer (descriptions.jsonl and
pope/coco_pope_{random,popular,adversarial}.json); IMAGE_DIR defaults to the world's images/
folder beside it; --limit N keeps the first N descriptions and the probes of their images.
OUT receives answers.jsonl ({id, prompt, answer}; probes as pope:<split>/<question_id>),
progress.jsonl (answers saved after every batch: a rerun generates only the missing ones, and
none at all, without --model, once all are there) and scores.json. --model takes a checkpoint
of any family the project trains (the module class comes from config.json's model_type, or
--model-class); it answers as the toy-world callback does during training.

Metrics (fractions, the table in percent): CHAIR_i = hallucinated kinds / mentioned kinds;
CHAIR_s = share of answers naming an absent kind; coverage = share of the images' objects named;
colour errors = hallucinated kinds whose shape is present; size / position errors = mentions of a
present kind with the wrong size / column; count errors = share of stated counts that are wrong;
toy/pope/<split>/* = POPE's accuracy, precision, recall, F1 and yes-ratio (percent).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning_aug_dpo.eval import read_answers_jsonl
from lightning_aug_dpo.eval.files import write_jsonl
from lightning_aug_dpo.eval.jobs import add_model_args, answer_missing, model_loader
from lightning_aug_dpo.eval.pipeline import finish_toy
from lightning_aug_dpo.eval.toy_world import load_toy_benchmark, toy_prompts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="toy_world_eval.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--split-dir", required=True,
        help="a split of the toy world (OUT/val or OUT/test): descriptions.jsonl and pope/",
    )  # fmt: skip
    p.add_argument("--image-dir", help="the world's images (default: images/ beside SPLIT_DIR)")
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument("--no-pope", action="store_true", help="descriptions only, no yes/no probes")
    # The toy world's own protocol, as ToyWorldCallback's: 48 tokens hold the longest true
    # description, and short answers allow larger batches.
    add_model_args(
        p,
        max_new_tokens=48,
        protocol="the toy world's: room for its longest true description",
        batch_size=32,
        limit_help="only the first N descriptions and the probes of their images",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    out, split_dir = Path(args.out), Path(args.split_dir)
    image_dir = Path(args.image_dir) if args.image_dir else split_dir.parent / "images"
    try:
        bench = load_toy_benchmark(split_dir, image_dir, args.limit, pope=not args.no_pope)
        questions, images = toy_prompts(bench)
        progress = out / "progress.jsonl"
        done = (
            {str(r["question_id"]): r["text"] for r in read_answers_jsonl(progress).values()}
            if progress.is_file()
            else {}
        )

        def save(part: dict) -> None:
            # Keep answers of questions outside this run (another --limit) in the progress file.
            merged = {**done, **part}
            write_jsonl(progress, [{"question_id": k, "text": v} for k, v in merged.items()])

        answers = answer_missing(
            model_loader(args), questions, images, done, save, args.max_new_tokens,
            args.batch_size,
        )  # fmt: skip
        model = {"model": args.model, "adapter": args.adapter, "split": str(split_dir)}
        record = finish_toy(bench, answers, out, model)
    except (FileNotFoundError, ValueError) as err:
        print(f"toy_world_eval.py: error: {err}", file=sys.stderr)
        return 1
    print(record["table"])
    print(json.dumps(record["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
