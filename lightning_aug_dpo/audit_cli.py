"""``lightning-aug-dpo audit``: what separates chosen from rejected in a pairs file, judge-free.

    lightning-aug-dpo audit runs/pairs.jsonl
    lightning-aug-dpo audit pairs.jsonl --out runs/audit --tokenizer MODEL_DIR
    lightning-aug-dpo audit seva_pairs.json --flag-words blurry white --opening "yes,no"

Reads any pairs file the project reads (this project's ``predict`` output, SeVa's step-3 files,
TRL rows), prints rich tables and the verdict lines ("DPO can satisfy 78% of these pairs by
preferring the shorter answer"), and with ``--out DIR`` writes ``DIR/audit.json`` and
``DIR/audit.md``. Where scene records exist (the toy world's ``scenes.json``: ``--scenes``, or
found in or beside ``--image-folder``, or beside the pairs file), both answers are also scored
exactly.
The statistics are defined in :mod:`lightning_aug_dpo.audit_stats`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_aug_dpo.audit import audit_pairs, check_settings
from lightning_aug_dpo.audit_stats import DEFAULT_OPENINGS
from lightning_aug_dpo.audit_truth import SCENES_FILE, find_scenes, load_scenes
from lightning_aug_dpo.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-aug-dpo audit",
        description="What separates chosen from rejected besides the image: lengths, words, "
        "openings, and which simple rule DPO could learn instead of looking at the image.",
    )
    parser.add_argument("pairs", metavar="PAIRS", help="pairs file (JSONL or JSON list)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/audit.json and DIR/audit.md")
    parser.add_argument(
        "--tokenizer", metavar="MODEL_DIR",
        help="count lengths in this tokenizer's tokens (default: whitespace words)",
    )  # fmt: skip
    parser.add_argument(
        "--scenes", metavar="FILE",
        help="scene records {image: scene} (the toy world's scenes.json) for exact quality",
    )  # fmt: skip
    parser.add_argument(
        "--image-folder", metavar="DIR",
        help="the pairs' image folder (finds scenes.json in or beside it)",
    )  # fmt: skip
    parser.add_argument(
        "--flag-words", nargs="+", default=[], metavar="WORD",
        help="words or phrases to count on each side, e.g. blurry 'white triangle' (give PAIRS "
        "first)",
    )  # fmt: skip
    parser.add_argument(
        "--opening", action="append", metavar="A,B", dest="openings",
        help="a family of openings, comma-separated (repeatable; default: yes,no and "
        "'there is,there are')",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=float, default=0.65,
        help="a feature gets a verdict from this accuracy up (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--min-pairs", type=int, default=10, help="pairs a verdict needs (default: %(default)s)"
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="terms per side (default: %(default)s)")
    parser.add_argument(
        "--prior-scale", type=float, default=0.1,
        help="log-odds prior: this share of the pooled counts (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--min-count", type=int, default=3,
        help="terms seen fewer times are not scored (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-bad-rows", action="store_true",
        help="skip unreadable rows (counted) instead of stopping at the first",
    )  # fmt: skip
    return parser


def token_lengths(model_dir: str) -> Callable[[Sequence[str]], list[int]]:
    """Answer lengths in the tokens of the tokenizer saved in ``model_dir`` (no special tokens)."""
    if not Path(model_dir).is_dir():
        raise UserInputError(
            f"--tokenizer {model_dir}: no such folder. Fix: a model folder with tokenizer files "
            "(tokenizer.json or tokenizer_config.json), or leave --tokenizer out to count words"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"--tokenizer {model_dir}: no tokenizer could be loaded ({err}). Fix: a folder with "
            "tokenizer files, or leave --tokenizer out to count words"
        ) from None

    def lengths(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(row) for row in ids]

    return lengths


def read_pairs(path: Path, skip_bad_rows: bool) -> tuple[list[Any], list[tuple[int, str]], str]:
    """The pairs of ``path``, the rows skipped and the file's format; errors name the fix."""
    from lightning_aug_dpo.data.pairs import load_pairs

    try:
        source = load_pairs(path, on_bad_row="skip" if skip_bad_rows else "error")
    except FileNotFoundError:
        raise UserInputError(
            f"{path}: pairs file not found. Fix: the path of a JSONL or JSON pairs file "
            "(predict's output, SeVa's or TRL rows)"
        ) from None
    except ValueError as err:  # the message names the file, the line and the fix
        hint = "" if skip_bad_rows else " (or pass --skip-bad-rows to count and skip such rows)"
        raise UserInputError(f"{err}{hint}") from None
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: not a UTF-8 text file ({err.reason})") from None
    if not source.pairs:
        raise UserInputError(
            f"{path}: no pairs to audit ({len(source.skipped)} rows skipped). Fix: a file with "
            "prompt/chosen/rejected rows"
        )
    return source.pairs, source.skipped, source.format or "?"


def audit_main(argv: list[str]) -> dict[str, Any]:
    """Parse ``argv``, audit the file, print the tables and verdicts; returns the report."""
    from lightning_aug_dpo.atomic import write_json, write_text
    from lightning_aug_dpo.audit_format import format_markdown, print_report

    args = build_parser().parse_args(argv)
    check_settings(args.threshold, args.min_pairs, args.top, args.prior_scale, args.min_count)
    path = Path(args.pairs)
    openings = [[m.strip() for m in o.split(",") if m.strip()] for o in args.openings or []]
    if any(not family for family in openings):
        raise UserInputError("--opening: give comma-separated openings, e.g. --opening yes,no")
    scenes_path = Path(args.scenes) if args.scenes else find_scenes(args.image_folder)
    if scenes_path is None and (path.parent / SCENES_FILE).is_file():  # beside the pairs file
        scenes_path = path.parent / SCENES_FILE
    scenes = load_scenes(scenes_path) if scenes_path else None
    lengths = token_lengths(args.tokenizer) if args.tokenizer else None
    pairs, skipped, fmt = read_pairs(path, args.skip_bad_rows)
    report = audit_pairs(
        pairs,
        lengths=lengths,
        length_unit="tokens" if args.tokenizer else "words",
        scenes=scenes,
        flag_words=args.flag_words,
        openings=openings or DEFAULT_OPENINGS,
        threshold=args.threshold,
        min_pairs=args.min_pairs,
        top_k=args.top,
        prior_scale=args.prior_scale,
        min_count=args.min_count,
    )
    if args.tokenizer:
        report["lengths"]["counted_by"] = f"tokenizer {args.tokenizer}"
    report = {"pairs_path": str(path), "format": fmt, "rows_skipped": len(skipped),
              "scenes": str(scenes_path) if scenes_path else None, **report}  # fmt: skip
    source = f"{path} ({fmt} format, {len(pairs):,} pairs"
    source += f", {len(skipped)} rows skipped)" if skipped else ")"
    print_report(report, source)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "audit.json", report)
        write_text(out / "audit.md", format_markdown(report, source))
        print(f"wrote {out / 'audit.json'} and {out / 'audit.md'}")
    return report


if __name__ == "__main__":  # python -m lightning_aug_dpo.audit_cli == lightning-aug-dpo audit
    from lightning_aug_dpo.cli import main

    main(["audit", *sys.argv[1:]])
