"""Evaluation job: answer an MM-Vet-format benchmark with a model (and optional adapter), grade it.

    python benchmarks/mmvet_eval.py --model demo_assets/tiny-llava \
        --adapter runs/demo/version_0/adapter \
        --benchmark demo_assets/data/mmvet/mm-vet.json --out runs/eval/mmvet

Writes ``<out>/<tag>.json`` (MM-Vet results format), ``<out>/<tag>_rule-grade-1runs.json`` (the
official grade-file format) and ``<out>/<tag>_scores.json``, and prints the score table. Uses the
same answering code as ``MMVetEvalCallback``; the judge here is the offline rule judge (model
judges come with the benchmark issue). On the real MM-Vet, pass ``--max-new-tokens 1024``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lightning_aug_dpo import LlavaDPOModule, MMVetEvalCallback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--adapter", help="PEFT adapter directory (omit for the base model)")
    parser.add_argument("--benchmark", required=True, help="mm-vet.json-style file")
    parser.add_argument("--images", help="image folder (default: images/ beside --benchmark)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tag", default=None, help="file stem (default: base or adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    args = parser.parse_args(argv)

    module = LlavaDPOModule(model_name_or_path=args.model, adapter_path=args.adapter)
    module.configure_model()
    module.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    evaluator = MMVetEvalCallback(
        data_path=args.benchmark,
        image_folder=args.images,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    out, tag = Path(args.out), args.tag or ("adapter" if args.adapter else "base")
    scores = evaluator.run(module, out, tag)
    judge = evaluator.judge.name
    metrics = {
        "judge": judge,
        "model": args.model,
        "adapter": args.adapter,
        **scores.as_metrics("mmvet"),
    }
    (out / f"{tag}_scores.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(scores.format_table(combinations=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
