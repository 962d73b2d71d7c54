"""Exact, judge-free scoring of toy-world answers against their scene records.

A description names objects as ``[size] colour shape [position]`` (``a large red circle on the
left``); :func:`parse_mentions` finds every such mention (a negated one, ``there is no red
circle``, names nothing) and :func:`parse_count` the stated number of shapes. Per answer,
with the scene's objects ``O`` and the distinct mentioned kinds ``M`` (colour + shape)::

    hallucinated = M - kinds(O)                  CHAIR_i = sum |hallucinated| / sum |M|
    CHAIR_s = share of answers with a hallucinated kind
    coverage = sum |M & kinds(O)| / sum |O|      (share of the images' objects named)
    colour errors = hallucinated kinds whose shape IS in the image (the colour is wrong)
    size / position errors = mentions of a present kind with the wrong size / column
    count errors = share of answers stating a count whose count is wrong

POPE-style yes/no probes (``pope/coco_pope_<split>.json``) are scored by the project's POPE
scorer (:mod:`lightning_aug_dpo.eval.pope`), so they read like the real benchmark.

Units: the description shares are fractions in [0, 1] and POPE's metrics percent, as each
scorer reports them; the tables (:func:`format_toy_table`, :func:`format_before_after`) show
both in percent (:func:`as_percent`). :func:`trivial_baselines` scores answers that ignore the
image (always "yes"; naming nothing) with the same scorers, so a table shows what chance gives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_aug_dpo.data.toy_world import COLUMNS, NUMBERS, TOY_COLORS, TOY_SHAPES, ToyScene
from lightning_aug_dpo.eval.pope import POPEBenchmark, load_pope, score_pope

_MENTION = re.compile(
    r"\b(?:(small|large)\s+)?(" + "|".join(TOY_COLORS) + r")\s+(" + "|".join(TOY_SHAPES)
    + r")s?\b(?:\s+(" + "|".join(re.escape(c) for c in COLUMNS) + r"))?"
)
# every number word a model might say (the world itself has 1-3 objects)
_NUMBER_WORDS = (*NUMBERS, "four", "five", "six", "seven", "eight", "nine", "ten")
_COUNT = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r"|\d+)\s+shapes?\b")
_NEGATED = re.compile(r"\b(?:no|not)\s+(?:an?\s+)?$")
DESCRIPTION_METRICS = (
    "chair_i", "chair_s", "coverage", "colour_errors", "size_errors", "position_errors",
    "count_errors", "mentions_per_answer", "words_per_answer",
)


@dataclass(frozen=True)
class Mention:
    color: str
    kind: str
    size: str | None
    column: int | None

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def parse_mentions(text: str) -> list[Mention]:
    """Every ``[size] colour shape [position]`` mention, in order (case-insensitive); a negated
    one (``there is no red circle``) names nothing."""
    out, lower = [], text.lower()
    for match in _MENTION.finditer(lower):
        if _NEGATED.search(lower[max(0, match.start() - 8) : match.start()]):
            continue
        size, color, kind, where = match.groups()
        out.append(Mention(color, kind, size or None, COLUMNS.index(where) if where else None))
    return out


def parse_count(text: str) -> int | None:
    """The first stated number of shapes (``two shapes``, ``3 shapes``), if any."""
    match = _COUNT.search(text.lower())
    if match is None:
        return None
    word = match.group(1)
    return int(word) if word.isdigit() else _NUMBER_WORDS.index(word)


def score_answer(answer: str, scene: ToyScene) -> dict[str, Any]:
    """Per-answer counts (summed over a benchmark by :func:`score_descriptions`)."""
    mentions = parse_mentions(answer)
    objects = {o.name: o for o in scene.objects}
    shapes = {o.kind for o in scene.objects}
    named = list(dict.fromkeys(m.name for m in mentions))
    hallucinated = [n for n in named if n not in objects]
    matched = [m for m in mentions if m.name in objects]
    count = parse_count(answer)
    return {
        "mentioned": named,
        "hallucinated": hallucinated,
        "covered": len(named) - len(hallucinated),
        "objects": len(objects),
        "colour_errors": sum(n.split()[1] in shapes for n in hallucinated),
        "size_errors": sum(m.size is not None and m.size != objects[m.name].size for m in matched),
        "sized": sum(m.size is not None for m in matched),
        "position_errors": sum(
            m.column is not None and m.column != objects[m.name].column for m in matched
        ),
        "placed": sum(m.column is not None for m in matched),
        "count": count,
        "count_error": count is not None and count != len(objects),
        "words": len(answer.split()),
    }


def score_descriptions(
    items: Mapping[str, ToyScene], answers: Mapping[str, str]
) -> dict[str, float]:
    """The description metrics over ``items`` (``{question_id: scene}``); fractions in [0, 1]."""
    missing = [k for k in items if k not in answers]
    if missing:
        raise ValueError(f"no answer for toy-world questions {missing[:5]} ({len(missing)} in all)")
    rows = [score_answer(answers[k], scene) for k, scene in items.items()]
    mentioned = sum(len(r["mentioned"]) for r in rows)
    counted = [r for r in rows if r["count"] is not None]

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {
        "chair_i": ratio(sum(len(r["hallucinated"]) for r in rows), mentioned),
        "chair_s": ratio(sum(bool(r["hallucinated"]) for r in rows), len(rows)),
        "coverage": ratio(sum(r["covered"] for r in rows), sum(r["objects"] for r in rows)),
        "colour_errors": ratio(sum(r["colour_errors"] for r in rows), mentioned),
        "size_errors": ratio(sum(r["size_errors"] for r in rows), sum(r["sized"] for r in rows)),
        "position_errors": ratio(
            sum(r["position_errors"] for r in rows), sum(r["placed"] for r in rows)
        ),
        "count_errors": ratio(sum(r["count_error"] for r in counted), len(counted)),
        "mentions_per_answer": ratio(mentioned, len(rows)),
        "words_per_answer": ratio(sum(r["words"] for r in rows), len(rows)),
    }


def truth_text(scene: ToyScene) -> str:
    """The scene's objects left to right, as a reader checks an answer against them:
    ``small red circle (left), large blue square (right)``."""
    sides = ("left", "middle", "right")
    return ", ".join(f"{o.size} {o.color} {o.kind} ({sides[o.column]})" for o in scene.objects)


@dataclass(frozen=True)
class ToyBenchmark:
    """A toy-world evaluation split: long-form prompts with scenes, and POPE probes."""

    questions: dict[str, str]  # question_id -> prompt
    scenes: dict[str, ToyScene]
    images: dict[str, Path]
    pope: POPEBenchmark | None

    def limited(self, limit: int | None) -> ToyBenchmark:
        """The first ``limit`` descriptions and the probes of their images."""
        if not limit:
            return self
        keep = list(self.questions)[:limit]
        pope = self.pope
        if pope is not None:
            wanted = {str(self.images[k]) for k in keep}
            items = {k: i for k, i in pope.items.items() if str(pope.images[k]) in wanted}
            pope = POPEBenchmark(items, {k: pope.images[k] for k in items})
        return ToyBenchmark(
            {k: self.questions[k] for k in keep}, {k: self.scenes[k] for k in keep},
            {k: self.images[k] for k in keep}, pope,
        )


def load_toy_benchmark(
    split_dir: str | Path, image_dir: str | Path, limit: int | None = None, pope: bool = True
) -> ToyBenchmark:
    """``split_dir/descriptions.jsonl`` (and ``split_dir/pope/``) written by
    :func:`lightning_aug_dpo.data.toy_world.write_toy_world`; images under ``image_dir``."""
    split_dir, image_dir = Path(split_dir), Path(image_dir)
    path = split_dir / "descriptions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: toy-world descriptions not found; write the world with "
            "`python -m lightning_aug_dpo.data.toy_world OUT_DIR` and point at OUT_DIR/<val|test>"
        )
    questions, scenes, images = {}, {}, {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            qid = str(row["question_id"])
            questions[qid], scenes[qid] = row["text"], ToyScene.from_record(row["scene"])
            images[qid] = image_dir / row["image"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {number} is not a toy-world row ({err!r})") from err
    probes = load_pope(split_dir / "pope", image_dir, images=False) if pope else None
    return ToyBenchmark(questions, scenes, images, probes).limited(limit)


def score_toy(bench: ToyBenchmark, answers: Mapping[str, str]) -> dict[str, float]:
    """``toy/<description metric>`` and ``toy/pope/<split>/<metric>`` (POPE in percent);
    ``answers`` keyed by description id and by ``pope:<split>/<question_id>``."""
    given = {k: answers[k] for k in bench.scenes if k in answers}
    described = score_descriptions(bench.scenes, given)
    out = {f"toy/{k}": v for k, v in described.items()}
    if bench.pope is not None:
        pope_answers = {k: answers[f"pope:{k}"] for k in bench.pope.items if f"pope:{k}" in answers}
        for split, metrics in score_pope(bench.pope.items, pope_answers).items():
            out.update({f"toy/pope/{split}/{m}": v for m, v in metrics.items()})
    return out


def toy_prompts(bench: ToyBenchmark) -> tuple[dict[str, str], dict[str, Path]]:
    """Every question of ``bench`` (descriptions, then probes as ``pope:<key>``) and its image."""
    questions, images = dict(bench.questions), dict(bench.images)
    if bench.pope is not None:
        for key, item in bench.pope.items.items():
            questions[f"pope:{key}"] = item.question
            images[f"pope:{key}"] = bench.pope.images[key]
    return questions, images


# The headline columns of the toy tables: (label, metric, which way is an improvement).
TOY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("CHAIR_i", "toy/chair_i", "lower"),
    ("CHAIR_s", "toy/chair_s", "lower"),
    ("cover", "toy/coverage", "higher"),
    ("colour", "toy/colour_errors", "lower"),
    ("count", "toy/count_errors", "lower"),
    ("POPE-F1", "toy/pope/mean/f1", "higher"),
    ("POPE-acc", "toy/pope/mean/accuracy", "higher"),
    ("adv-F1", "toy/pope/adversarial/f1", "higher"),
)
# The description metrics that are shares (scored as fractions); the others are per answer.
SHARES = frozenset(
    f"toy/{m}" for m in DESCRIPTION_METRICS if m not in ("mentions_per_answer", "words_per_answer")
)
SAME_WITHIN = 0.05  # a change that prints as 0.0 percentage points is no change


def as_percent(key: str, value: float) -> float:
    """A toy metric in percent: the description shares are scored as fractions, POPE in percent
    already; other values (words per answer, ...) are returned as they are."""
    return 100.0 * value if key in SHARES else value


def verdict(change: float, better: str) -> str:
    """``better`` / ``worse`` / ``same`` for a change in percentage points, given which way
    (``lower`` or ``higher``) is an improvement."""
    if abs(change) < SAME_WITHIN:
        return "same"
    return "better" if (change < 0) == (better == "lower") else "worse"


def compare_toy(
    before: Mapping[str, float], after: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Per headline metric present in both: before, after and change (after - before) in
    percent / percentage points, which way is better and whether the change is an improvement."""
    out: dict[str, dict[str, Any]] = {}
    for label, key, better in TOY_COLUMNS:
        if key in before and key in after:
            b, a = as_percent(key, before[key]), as_percent(key, after[key])
            out[key] = {"label": label, "better": better, "before": b, "after": a,
                        "change": a - b, "verdict": verdict(a - b, better)}  # fmt: skip
    return out


def trivial_baselines(bench: ToyBenchmark) -> dict[str, dict[str, float]]:
    """What answers that ignore the image score on ``bench``, computed by the real scorers:
    ``always yes`` to every probe (POPE metrics; 50/50 probes give F1 66.7, accuracy 50) and
    ``say nothing`` to every description (CHAIR 0, coverage 0: why CHAIR is read beside
    coverage). Raw metric units, as :func:`score_toy`'s."""
    out: dict[str, dict[str, float]] = {}
    if bench.pope is not None and bench.pope.items:
        yes = score_pope(bench.pope.items, dict.fromkeys(bench.pope.items, "Yes"))
        out["always yes"] = {
            f"toy/pope/{split}/{m}": v for split, metrics in yes.items() for m, v in metrics.items()
        }
    if bench.scenes:
        nothing = score_descriptions(bench.scenes, dict.fromkeys(bench.scenes, ""))
        keep = ("chair_i", "chair_s", "coverage", "colour_errors")  # no count is stated at all
        out["say nothing"] = {f"toy/{m}": nothing[m] for m in keep}
    return out


def _cells(
    metrics: Mapping[str, float],
    fmt: str = "{:.1f}",
    columns: tuple[tuple[str, str, str], ...] = TOY_COLUMNS,
) -> str:
    cells = []
    for _, key, _ in columns:
        value = metrics.get(key)
        cells.append(f"{'-' if value is None else fmt.format(as_percent(key, value)):>9}")
    return "".join(cells)


def _measured(rows: Iterable[Mapping[str, float]]) -> tuple[tuple[str, str, str], ...]:
    """The headline columns that some row has a value for (all of them if none has)."""
    rows = list(rows)
    return tuple(c for c in TOY_COLUMNS if any(c[1] in r for r in rows)) or TOY_COLUMNS


def format_toy_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table in percent, one row per model: CHAIR_i/_s, coverage, errors, POPE."""
    width = max([len(k) for k in rows] + [8])
    lines = [f"{'model':<{width}}" + "".join(f"{c:>9}" for c, _, _ in TOY_COLUMNS)]
    lines += [f"{name:<{width}}" + _cells(metrics) for name, metrics in rows.items()]
    return "\n".join(lines)


def _signed(change: float) -> str:
    return "0.0" if abs(change) < SAME_WITHIN else f"{change:+.1f}"  # never "-0.0"


def format_before_after(
    before: Mapping[str, float],
    after: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The before -> after table: which way is better, both rows, the change (after - before,
    in percentage points) and whether it is an improvement, then the trivial baselines. Columns
    measured in neither row (POPE where the probes were not asked) are left out."""
    compared = compare_toy(before, after)
    columns = _measured([before, after])
    width = 12
    head = f"{'(percent)':<{width}}" + "".join(f"{c:>9}" for c, _, _ in columns)

    def row(name: str, values: Mapping[str, str]) -> str:
        cells = "".join(f"{values.get(key, '-'):>9}" for _, key, _ in columns)
        return f"{name:<{width}}" + cells

    lines = [head, row("better", {k: f"{b}" for _, k, b in columns})]
    lines += [f"{'before':<{width}}" + _cells(before, columns=columns)]
    lines += [f"{'after':<{width}}" + _cells(after, columns=columns)]
    lines.append(row("change", {k: _signed(c["change"]) for k, c in compared.items()}))
    lines.append(row("verdict", {k: c["verdict"] for k, c in compared.items()}))
    for name, metrics in (baselines or {}).items():
        lines.append(f"{name:<{width}}" + _cells(metrics, columns=columns))
    return "\n".join(lines)
