"""How long the pair audit takes: a 16,000-pair file on the CPU.

    python benchmarks/perf/audit.py                      # 16,000 toy-world pairs, 3 repeats
    python benchmarks/perf/audit.py --pairs 2000 --repeats 1 --no-cli

The pairs are toy-world descriptions (:mod:`lightning_aug_dpo.data.toy_world`) of seeded random
scenes, written as this project's pairs file with the scenes in ``scenes.json`` beside it: the
chosen answer describes the scene; the rejected one names an extra small object (60%), changes
a colour (25%) or is the same answer (15%), about what SeVa's noise-500 pairs look like. Timed,
each ``--repeats`` times (median and minimum reported):

* **read**: :func:`~lightning_aug_dpo.data.pairs.load_pairs` of the file;
* **audit (words)**: :func:`~lightning_aug_dpo.audit.audit_pairs` with whitespace lengths;
* **audit (words + scenes)**: the same with the scene records (exact quality of each side);
* **audit (tokens + scenes)**: lengths in the committed toy base's tokenizer tokens;
* **CLI**: ``lightning-aug-dpo audit FILE --out DIR`` in a fresh process, start-up included.

One torch thread is irrelevant here (no tensor work); the numbers are single-process Python.
Prints a Markdown table and writes JSON (machine, versions, date, settings, seconds) to
``--output`` (default ``benchmarks/perf/results/audit.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lightning_aug_dpo.atomic import write_json  # noqa: E402
from lightning_aug_dpo.audit import audit_pairs  # noqa: E402
from lightning_aug_dpo.audit_cli import token_lengths  # noqa: E402
from lightning_aug_dpo.audit_truth import load_scenes  # noqa: E402
from lightning_aug_dpo.data.pairs import load_pairs  # noqa: E402
from lightning_aug_dpo.data.toy_world import (  # noqa: E402
    TOY_COLORS,
    ToyObject,
    ToyScene,
    build_split,
    describe,
)
from lightning_aug_dpo.toy_base import TOY_BASE_DIR  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "audit.json"
VERSIONED = ("transformers", "tokenizers", "rich", "torch")  # the packages the audit runs on


def write_pairs_file(folder: Path, count: int, seed: int = 0) -> Path:
    """``folder/pairs.jsonl`` (``count`` pairs) and ``folder/scenes.json``; returns the file."""
    rng = random.Random(seed)
    images = build_split("pool", count, seed_offset=seed)
    rows, scenes = [], {}
    for i, item in enumerate(images):
        scene = item.scene
        chosen = describe(scene, rng)
        draw = rng.random()
        if draw < 0.6 and len(scene.objects) < 3:  # one more object, the noise's favourite
            free = next(c for c in range(3) if c not in {o.column for o in scene.objects})
            extra = ToyObject(rng.choice(TOY_COLORS), "triangle", "small", free)
            objects = tuple(sorted((*scene.objects, extra), key=lambda o: o.column))
            seen = ToyScene(objects, (*scene.cy, 30), (*scene.cx_jitter, 0), scene.noise_seed)
            rejected = describe(seen, rng)
        elif draw < 0.85:  # a wrong colour
            first = scene.objects[0]
            wrong = ToyObject(rng.choice(TOY_COLORS), first.kind, first.size, first.column)
            seen = ToyScene((wrong, *scene.objects[1:]), scene.cy, scene.cx_jitter, 0)
            rejected = describe(seen, rng)
        else:
            rejected = chosen
        rows.append({"id": f"pair-{i}", "image": item.image,
                     "prompt": "Describe the image in detail.", "chosen": chosen,
                     "rejected": rejected, "augmentation": None})  # fmt: skip
        scenes[item.image] = scene.to_record()
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "scenes.json").write_text(json.dumps(scenes), encoding="utf-8")
    return path


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """Median and minimum wall seconds of ``repeats`` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return {"median_s": median(seconds), "min_s": min(seconds), "runs": seconds}, result


def machine_info() -> dict[str, Any]:
    """Platform, CPU model and cores, and the versions that matter here."""
    from importlib.metadata import version

    import lightning_aug_dpo

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "lightning_aug_dpo": lightning_aug_dpo.__version__,
            **{name: version(name) for name in VERSIONED}}  # fmt: skip


def run_benchmark(count: int, repeats: int, cli: bool, work: Path) -> dict[str, Any]:
    path = write_pairs_file(work, count)
    scenes = load_scenes(work / "scenes.json")
    results: dict[str, dict[str, float]] = {}
    results["read"], pairs = timed(lambda: load_pairs(path).pairs, repeats)
    results["audit (words)"], report = timed(lambda: audit_pairs(pairs), repeats)
    results["audit (words + scenes)"], _ = timed(lambda: audit_pairs(pairs, scenes=scenes), repeats)
    lengths = token_lengths(str(TOY_BASE_DIR))
    results["audit (tokens + scenes)"], _ = timed(
        lambda: audit_pairs(pairs, scenes=scenes, lengths=lengths, length_unit="tokens"), repeats
    )
    if cli:
        command = [str(Path(sys.executable).parent / "lightning-aug-dpo"), "audit", str(path),
                   "--out", str(work / "report")]  # fmt: skip

        def run_cli() -> None:
            subprocess.run(command, check=True, capture_output=True, cwd=work)

        results["CLI (process, start-up included)"], _ = timed(run_cli, repeats)
    for row in results.values():
        row["pairs_per_s"] = count / row["median_s"]
    return {"results": results, "differing": report["differing"], "verdicts": report["verdicts"]}


def format_table(results: dict[str, dict[str, float]], count: int) -> str:
    lines = [f"| stage ({count:,} pairs) | median s | min s | pairs/s |", "|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
                     f"{row['pairs_per_s']:,.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audit.py", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=16000, help="pairs in the file")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI process row")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        measured = run_benchmark(args.pairs, args.repeats, not args.no_cli, Path(tmp))
    table = format_table(measured["results"], args.pairs)
    print(table)
    for line in measured["verdicts"]:
        print(f"  {line}")
    record = {
        "benchmark": "pair audit on the CPU",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"pairs": args.pairs, "repeats": args.repeats, "cli": not args.no_cli},
        **measured,
        "table": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, record)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
