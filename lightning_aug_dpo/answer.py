"""``lightning-aug-dpo generate``: answer a question about an image with a model (+ adapter).

    lightning-aug-dpo generate --model lightning_aug_dpo/assets/toy-llava-sft \\
        --image demo_assets/toy_world/images/test/test_00000.png "Describe the image in detail."
    lightning-aug-dpo generate --model llava-hf/llava-1.5-7b-hf --adapter RUN/adapter \\
        --image photo.jpg "What is unusual about this image?" "How many people are there?"

The model's family (from ``config.json``'s ``model_type``, or ``--model-class``) formats each
question with its own chat template and image tokens, exactly as training and evaluation do, and
decodes greedily. Each answer is printed on its own line (``--json``: one JSON object per line).
The same in plain transformers + peft is in the model card (``README.md``) of every adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning_aug_dpo.errors import UserInputError
from lightning_aug_dpo.eval.jobs import add_model_load_args, model_loader


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-aug-dpo generate",
        description="Answer questions about one image with a model (and a trained adapter).",
    )
    parser.add_argument("questions", nargs="+", metavar="QUESTION", help="one or more questions")
    add_model_load_args(parser, "checkpoint folder or hub id (any family)", required=True)
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256,
        help="answer length limit in tokens (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="weight dtype; auto: bfloat16 on CUDA, float32 on CPU (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON lines with the question")
    return parser


def generate_main(argv: list[str]) -> list[str]:
    """Parse ``argv``, load the model once, print and return one answer per question."""
    import torch

    from lightning_aug_dpo.data.images import load_image

    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens={args.max_new_tokens}: give 1 or more")
    image = load_image(Path(args.image))  # a missing or broken file: named, before the model
    if args.adapter and not (Path(args.adapter) / "adapter_config.json").is_file():
        raise UserInputError(
            f"--adapter {args.adapter}: no adapter_config.json there. Fix: a run's adapter/ "
            "folder (or checkpoints/*-adapter/)"
        )
    cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if cuda else "float32"
    module = model_loader(args)()
    with torch.no_grad():
        pixels = module.preprocess_images([image.to(module.device)])
        answers = []
        for question in args.questions:  # one at a time: no padding enters the answers
            (answer,) = module.generate(
                pixels, [question], max_new_tokens=args.max_new_tokens, use_reference=False
            )
            answers.append(answer)
            if args.json:
                print(json.dumps({"question": question, "answer": answer}), flush=True)
            else:
                print(answer, flush=True)
    return answers


if __name__ == "__main__":  # python -m lightning_aug_dpo.answer == lightning-aug-dpo generate
    from lightning_aug_dpo.cli import main

    main(["generate", *sys.argv[1:]])
