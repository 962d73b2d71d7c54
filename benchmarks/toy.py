"""Toy benchmark: a generated MM-Vet-format benchmark of shapes, colours, words and counts,
answered by a model and graded by the offline rule judge (or any judge). Runs on CPU with the
tiny demo model in seconds; a smoke test of the whole evaluation path, not a result.

    python benchmarks/toy.py --model demo_assets/tiny-llava --dtype float32 \\
        --out runs/eval/toy
    python benchmarks/toy.py --model demo_assets/tiny-llava \\
        --adapter runs/demo/version_0/adapter --out runs/eval/toy-seva --dtype float32

Without --data-dir the benchmark (NUM questions, SEED) is written to OUT/data first; with it,
any folder in MM-Vet's layout (mm-vet.json + images/) is used. Outputs and resuming are as in
benchmarks/mmvet.py, whose options (judge included) all apply here, with the toy's own answer
length: 16 new tokens, as the demo's MM-Vet callback (the toy answers are a few words).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_aug_dpo.data.synthetic import write_mmvet_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mmvet  # the MM-Vet job beside this file

from lightning_aug_dpo.eval.jobs import job_main

#: The toy's answer length: a few words, as the demo config's MMVetCallback (max_new_tokens 16).
TOY_MAX_NEW_TOKENS = 16


def run_parser() -> argparse.ArgumentParser:
    """benchmarks/mmvet.py's options with the toy's answer length as the default."""
    return mmvet.run_parser(
        TOY_MAX_NEW_TOKENS, "as the demo's MM-Vet callback: toy answers are a few words"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="toy.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("--data-dir", help="an MM-Vet-format folder (default: generate one)")
    parser.add_argument("--out", help="output folder (required; reruns resume)")
    parser.add_argument(
        "--num-questions", type=int, default=24,
        help="questions of the generated benchmark (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the generated benchmark (default: %(default)s)"
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    args, rest = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print("\nall options of benchmarks/mmvet.py also apply:\n")
        run_parser().print_help()
        return 0
    if not args.out:
        parser.error("--out is required")
    data_dir = Path(args.data_dir) if args.data_dir else Path(args.out) / "data"
    if not (data_dir / "mm-vet.json").is_file():
        write_mmvet_benchmark(data_dir, args.num_questions, args.seed)
    argv = ["--data-dir", str(data_dir), "--out", args.out, *rest]
    return job_main("toy.py", lambda a: mmvet.run_main(a, run_parser()), mmvet.score_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
