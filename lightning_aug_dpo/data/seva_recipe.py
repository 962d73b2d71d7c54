"""SeVa's prompt recipe: 8k OCR-VQA + 8k TextCaps prompts sampled from LLaVA-1.5's 665k mix.

The SeVa authors drew their 16,000 unsupervised prompts from ``llava_v1_5_mix665k.json``:

- OCR-VQA (images under ``ocr_vqa/``): 4,000 random images, up to 2 human questions each, with
  ``<image>`` and the short-answer suffix "Answer the question using a single word or phrase."
  removed so that the model answers free-form;
- TextCaps (LLaVA stores these images under ``textvqa/``): 8,000 random images, the first human
  turn (the caption instruction with the reference OCR tokens).

Answers are never read. The output rows are ``{"image", "text"}`` like SeVa's published lists
(``ocrvqa_prompts_8k.jsonl``, ``textcaps_prompts_8k.jsonl``) and load with
``load_jsonl_prompts``.

Image paths: by default ``image`` keeps LLaVA's relative path (``ocr_vqa/images/123.jpg``) so
that ``data.image_folder`` can point at LLaVA's data root, as for the 665k JSON itself. With
``basename_only=True`` it is the bare file name, exactly as in SeVa's files (then the image
folder must hold the files of one subset directly).

Run ``python -m lightning_aug_dpo.data.seva_recipe --help`` for the command line. With
``--check --image-folder DIR`` (and ``--prompts FILE`` or ``--llava-json FILE``) it writes nothing
and lists every image those prompts need that is missing or unreadable, per subset, with the
public archive that holds its folder (``data/recipe_images.py``); exit status 1 if any.
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_aug_dpo.atomic import write_lines
from lightning_aug_dpo.data.prompts import clean_question, load_prompts, read_llava_json
from lightning_aug_dpo.data.recipe_images import (
    PROGRESS_EVERY,
    check_images,
    print_progress,
    report_lines,
)

SUBSETS = ("ocrvqa", "textcaps")
# LLaVA-665k folder prefixes; TextCaps images live in TextVQA's train_images folder.
PREFIXES = {"ocrvqa": "ocr_vqa/", "textcaps": "textvqa/"}
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class SubsetCounts:
    """How much a subset had to offer and how much was sampled."""

    images_available: int
    questions_available: int
    images_sampled: int
    prompts: int


class SevaPrompts(dict[str, list[dict[str, str]]]):
    """Subset name -> ``{"image", "text"}`` rows; ``available`` holds the per-subset counts."""

    def __init__(self) -> None:
        super().__init__()
        self.available: dict[str, SubsetCounts] = {}


def _load_rows(rows_or_path: str | Path | Sequence[dict[str, Any]]) -> tuple[str, list]:
    if not isinstance(rows_or_path, str | Path):
        return "rows", list(rows_or_path)
    path = Path(rows_or_path)
    return str(path), read_llava_json(path, "pass llava_v1_5_mix665k.json")


def _strip(text: str, suffix: str | None) -> str:
    text = clean_question(text)
    if suffix and text.endswith(suffix):
        # rstrip also removes the newline or space that joined the suffix to the question.
        text = text[: -len(suffix)].rstrip()
    return text


def _human_turns(source: str, index: int, row: dict[str, Any]) -> list[str]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError(
            f"{source}: row {index} (id {row.get('id')!r}): 'conversations' must be a list of "
            "{'from', 'value'} objects; fix or remove the row"
        )
    return [str(t.get("value", "")) for t in turns if t.get("from") == "human"]


def collect_pools(
    rows_or_path: str | Path | Sequence[dict[str, Any]],
    strip_suffix: str | None = SHORT_ANSWER_SUFFIX,
) -> dict[str, dict[str, list[str]]]:
    """Per subset, every image (relative path) with its cleaned, de-duplicated human questions.

    Args:
        rows_or_path: LLaVA-665k rows, or the path of the JSON list.
        strip_suffix: removed from the end of each question (``None`` keeps questions as is).

    Rows without an image (text-only ShareGPT rows) and images of other sources are ignored.
    OCR-VQA keeps every human turn; TextCaps keeps only the first human turn of an image.
    """
    source, rows = _load_rows(rows_or_path)
    pools: dict[str, dict[str, list[str]]] = {name: {} for name in SUBSETS}
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            continue
        image = row["image"]
        subset = next((s for s, prefix in PREFIXES.items() if image.startswith(prefix)), None)
        if subset is None:
            continue
        questions = pools[subset].setdefault(image, [])
        if subset == "textcaps" and questions:
            continue  # one caption prompt per image; a repeated image adds nothing
        turns = _human_turns(source, index, row)
        if subset == "textcaps":
            turns = turns[:1]
        for turn in turns:
            question = _strip(turn, strip_suffix)
            # An identical question twice would give two identical prompts for one image.
            if question and question not in questions:
                questions.append(question)
        if not questions:
            del pools[subset][image]
    return pools


def sample_seva_prompts(
    rows_or_path: str | Path | Sequence[dict[str, Any]],
    ocrvqa_images: int = 4000,
    ocrvqa_questions_per_image: int = 2,
    textcaps_images: int = 8000,
    seed: int = 42,
    subsets: Sequence[str] = SUBSETS,
    strip_suffix: str | None = SHORT_ANSWER_SUFFIX,
    basename_only: bool = False,
    question_order: str = "first",
) -> SevaPrompts:
    """Sample SeVa's prompt lists from a LLaVA-665k-format conversation list.

    Args:
        rows_or_path: LLaVA-665k rows, or the path of ``llava_v1_5_mix665k.json``.
        ocrvqa_images: OCR-VQA images to draw (capped by what is available).
        ocrvqa_questions_per_image: at most this many questions per OCR-VQA image.
        textcaps_images: TextCaps images to draw, one prompt each (capped by what is available).
        seed: seeds one private RNG per subset, so one subset's count never changes the other's
            selection.
        subsets: which of ``"ocrvqa"``, ``"textcaps"`` to sample.
        strip_suffix: short-answer suffix removed from questions; ``None`` keeps it.
        basename_only: write the bare file name (SeVa's files) instead of LLaVA's relative path.
        question_order: ``"first"`` takes an image's questions in conversation order (LLaVA
            already shuffled the Q/A turns), ``"random"`` draws them with the subset's RNG.

    Returns:
        Subset name -> rows ``{"image", "text"}`` in sampled order; ``.available`` has the counts.
        A requested count above what is available emits a ``UserWarning`` and is capped.
    """
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown:
        raise ValueError(f"unknown subsets {unknown}; choose from {list(SUBSETS)}")
    if min(ocrvqa_images, textcaps_images) < 0 or ocrvqa_questions_per_image < 1:
        raise ValueError(
            "image counts must be >= 0 and ocrvqa_questions_per_image >= 1, got "
            f"{ocrvqa_images}, {textcaps_images}, {ocrvqa_questions_per_image}"
        )
    if question_order not in ("first", "random"):
        raise ValueError(f"question_order must be 'first' or 'random', got {question_order!r}")
    pools = collect_pools(rows_or_path, strip_suffix)
    wanted = {"ocrvqa": ocrvqa_images, "textcaps": textcaps_images}
    per_image = {"ocrvqa": ocrvqa_questions_per_image, "textcaps": 1}
    result = SevaPrompts()
    for subset in SUBSETS:
        if subset not in subsets:
            continue
        pool = pools[subset]
        # Sorting first makes the draw depend on the set of images, not on the JSON's row order.
        images = sorted(pool)
        if wanted[subset] > len(images):
            warnings.warn(
                f"{subset}: {wanted[subset]} images requested, only {len(images)} available; "
                "using all of them",
                stacklevel=2,
            )
        rng = random.Random(f"seva-{subset}-{seed}")
        chosen = rng.sample(images, min(wanted[subset], len(images)))
        rows = []
        for image in chosen:
            questions = pool[image]
            if question_order == "random" and len(questions) > per_image[subset]:
                questions = rng.sample(questions, per_image[subset])
            name = PurePosixPath(image).name if basename_only else image
            rows.extend({"image": name, "text": q} for q in questions[: per_image[subset]])
        result[subset] = rows
        result.available[subset] = SubsetCounts(
            images_available=len(images),
            questions_available=sum(len(q) for q in pool.values()),
            images_sampled=len(chosen),
            prompts=len(rows),
        )
    return result


def write_prompt_list(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    """Write ``{"image", "text"}`` rows as JSONL (the exact layout of SeVa's files); return path.

    Args:
        rows: prompt rows, e.g. one subset of ``sample_seva_prompts``'s result.
        path: output file; parent folders are created.
    """
    path = Path(path)
    # json.dumps defaults (ASCII escapes, ", " / ": ") match SeVa's published files.
    write_lines(path, (json.dumps({"image": r["image"], "text": r["text"]}) for r in rows))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_aug_dpo.data.seva_recipe",
        description="Sample SeVa's unsupervised prompts (OCR-VQA + TextCaps) from "
        "llava_v1_5_mix665k.json and write them as {image, text} JSONL; with --check, list "
        "the images those prompts need that are missing or unreadable (exit status 1 if any).",
    )
    parser.add_argument(
        "--llava-json",
        type=Path,
        metavar="PATH",
        help="LLaVA-665k-format conversation list (llava_v1_5_mix665k.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="combined JSONL output (OCR-VQA rows, then TextCaps rows)",
    )
    check = parser.add_argument_group("image check (before any GPU time)")
    check.add_argument(
        "--check",
        action="store_true",
        help="write nothing: check the images of --prompts FILE, or of the prompts "
        "--llava-json would give, under --image-folder",
    )
    check.add_argument(
        "--image-folder",
        type=Path,
        metavar="DIR",
        help="the folder image paths are relative to (data.image_folder); with --out, the "
        "written prompts are checked too",
    )
    check.add_argument(
        "--prompts", type=Path, metavar="PATH", help="prompt list to check ({image, text} JSONL)"
    )
    check.add_argument(
        "--show", type=int, metavar="N", default=20, help="problems listed (default: %(default)s)"
    )
    check.add_argument(
        "--workers", type=int, metavar="N", help="reading threads (default: CPU count, max 16)"
    )
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read headers only: seconds instead of minutes, but a truncated file passes",
    )
    parser.add_argument(
        "--ocrvqa-images",
        type=int,
        metavar="N",
        default=4000,
        help="OCR-VQA images to sample (default: %(default)s)",
    )
    parser.add_argument(
        "--ocrvqa-questions-per-image",
        type=int,
        metavar="N",
        default=2,
        help="max questions per OCR-VQA image (default: %(default)s)",
    )
    parser.add_argument(
        "--textcaps-images",
        type=int,
        metavar="N",
        default=8000,
        help="TextCaps images to sample, one prompt each (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default: %(default)s)")
    parser.add_argument(
        "--subsets",
        nargs="+",
        choices=SUBSETS,
        default=list(SUBSETS),
        help="subsets to sample (default: both)",
    )
    parser.add_argument(
        "--strip-suffix",
        default=SHORT_ANSWER_SUFFIX,
        help="suffix removed from questions (default: %(default)r)",
    )
    parser.add_argument(
        "--keep-suffix", action="store_true", help="do not strip any suffix from questions"
    )
    parser.add_argument(
        "--basename-only",
        action="store_true",
        help="write bare image file names like SeVa's files instead of "
        "LLaVA-relative paths (ocr_vqa/images/..., textvqa/train_images/...)",
    )
    parser.add_argument(
        "--question-order",
        choices=("first", "random"),
        default="first",
        help="which OCR-VQA questions of an image to keep (default: %(default)s)",
    )
    parser.add_argument(
        "--ocrvqa-out",
        type=Path,
        metavar="PATH",
        default=None,
        help="also write the OCR-VQA rows to this JSONL file",
    )
    parser.add_argument(
        "--textcaps-out",
        type=Path,
        metavar="PATH",
        default=None,
        help="also write the TextCaps rows to this JSONL file",
    )
    return parser


def run_check(args: argparse.Namespace, images: list[str]) -> int:
    """Check ``images`` under ``args.image_folder``, print the report; 1 if any is bad."""
    result = check_images(
        images,
        args.image_folder,
        workers=args.workers,
        decode=not args.headers_only,
        progress=print_progress if len(set(images)) >= PROGRESS_EVERY else None,
    )
    print("\n".join(report_lines(result, show=args.show)))
    return 1 if result.problems else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: sample, write the combined list (and per-subset lists), print counts;
    or (``--check``) check the images of a prompt list. Exit 0 ok, 1 bad images, 2 usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_folder is not None and not args.image_folder.is_dir():
        parser.error(f"--image-folder {args.image_folder} is not a folder; pass data.image_folder")
    if args.check:
        if args.image_folder is None or (args.prompts is None) == (args.llava_json is None):
            parser.error("--check needs --image-folder DIR and one of --prompts / --llava-json")
        if args.prompts is not None:
            try:
                return run_check(args, [p.image for p in load_prompts(args.prompts).prompts])
            except (ValueError, FileNotFoundError) as err:
                parser.error(str(err))
    elif args.llava_json is None or args.out is None:
        parser.error("--llava-json and --out are required (or --check)")
    prompts = sample_seva_prompts(
        args.llava_json,
        ocrvqa_images=args.ocrvqa_images,
        ocrvqa_questions_per_image=args.ocrvqa_questions_per_image,
        textcaps_images=args.textcaps_images,
        seed=args.seed,
        subsets=args.subsets,
        strip_suffix=None if args.keep_suffix else args.strip_suffix,
        basename_only=args.basename_only,
        question_order=args.question_order,
    )
    combined = [row for subset in SUBSETS for row in prompts.get(subset, [])]
    if args.check:
        return run_check(args, [row["image"] for row in combined])
    write_prompt_list(combined, args.out)
    for subset, path in (("ocrvqa", args.ocrvqa_out), ("textcaps", args.textcaps_out)):
        if path is not None and subset in prompts:
            write_prompt_list(prompts[subset], path)
            print(f"wrote {path}")
    for subset, counts in prompts.available.items():
        print(
            f"{subset}: {counts.prompts} prompts from {counts.images_sampled} images "
            f"({counts.images_available} images, {counts.questions_available} questions available)"
        )
    print(f"wrote {args.out}: {len(combined)} prompts")
    if args.image_folder is not None:
        return run_check(args, [row["image"] for row in combined])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
