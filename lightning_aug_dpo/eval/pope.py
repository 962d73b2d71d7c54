"""POPE (object hallucination, yes/no questions on COCO val2014): loading and judge-free scoring.

The user supplies the POPE question files (``coco_pope_{random,popular,adversarial}.json``: JSON
lines ``{question_id, image, text, label}``, label ``yes``/``no``) and the COCO val2014 images.
Scoring follows LLaVA's ``eval_pope.py``: an answer is cut at its first ``.``, commas are removed,
and it counts as "no" if any space-separated word is ``No``, ``no`` or ``not``, else "yes". With
"yes" as the positive class, per split::

    accuracy  = (TP + TN) / N        precision = TP / (TP + FP)     recall = TP / (TP + FN)
    F1 = 2 precision recall / (precision + recall)                  yes_ratio = (TP + FP) / N

all reported in percent (LLaVA prints fractions; papers quote percent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.files import check_images, read_jsonl

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio")
# LLaVA-1.5's POPE prompt (llava_pope_test.jsonl): the question plus this short-answer hint.
POPE_SUFFIX = "\nAnswer the question using a single word or phrase."


@dataclass(frozen=True)
class POPEItem:
    split: str
    question_id: Any
    image: str
    question: str
    label: str  # "yes" or "no"


@dataclass(frozen=True)
class POPEBenchmark:
    items: dict[str, POPEItem]  # keyed "split/question_id"
    images: dict[str, Path]

    def limited(self, limit: int | None) -> POPEBenchmark:
        """The first ``limit`` questions of each split."""
        if not limit:
            return self
        keep, seen = [], dict.fromkeys(SPLITS, 0)
        for key, item in self.items.items():
            if seen.get(item.split, 0) < limit:
                seen[item.split] = seen.get(item.split, 0) + 1
                keep.append(key)
        return POPEBenchmark({k: self.items[k] for k in keep}, {k: self.images[k] for k in keep})


def _question_file(data_dir: Path, split: str) -> Path:
    for name in (f"coco_pope_{split}.json", f"coco_pope_{split}.jsonl"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(
        f"{data_dir / f'coco_pope_{split}.json'}: POPE question file not found; put the POPE "
        f"files coco_pope_{{{','.join(SPLITS)}}}.json in the data folder"
    )


def load_pope(
    data_dir: str | Path,
    image_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
    images: bool = True,
) -> POPEBenchmark:
    """Questions of ``splits`` from ``data_dir`` and their images in ``image_dir`` (COCO val2014).

    Raises ``FileNotFoundError``/``ValueError`` naming the file, the line or id and the fix.
    """
    data_dir = Path(data_dir)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown POPE split {unknown[0]!r}; use some of {', '.join(SPLITS)}")
    items: dict[str, POPEItem] = {}
    for split in splits:
        path = _question_file(data_dir, split)
        rows = read_jsonl(path, "POPE questions", ("question_id", "image", "text", "label"))
        for number, row in enumerate(rows, start=1):
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{path}: line {number} label {row['label']!r} is not yes/no")
            key = f"{split}/{row['question_id']}"
            if key in items:
                raise ValueError(f"{path}: question_id {row['question_id']!r} appears twice")
            items[key] = POPEItem(split, row["question_id"], row["image"], row["text"], label)
    bench_images = {k: Path(image_dir) / i.image for k, i in items.items()}
    if images:
        bench_images = check_images(
            Path(image_dir),
            {k: i.image for k, i in items.items()},
            data_dir,
            "point image_dir at the COCO val2014 images",
        )
    return POPEBenchmark(items, bench_images).limited(limit)


def parse_yes_no(answer: str) -> str:
    """LLaVA's ``eval_pope.py`` rule: "no" if the first sentence has No/no/not, else "yes"."""
    text = answer.split(".")[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio in percent ("yes" is positive)."""
    pairs = list(zip(labels, predictions, strict=True))
    if not pairs:
        raise ValueError("no POPE answers to score")
    tp = sum(lab == "yes" and pred == "yes" for lab, pred in pairs)
    fp = sum(lab == "no" and pred == "yes" for lab, pred in pairs)
    tn = sum(lab == "no" and pred == "no" for lab, pred in pairs)
    fn = sum(lab == "yes" and pred == "no" for lab, pred in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / len(pairs),
    }


def score_pope(
    items: Mapping[str, POPEItem], answers: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """``{split: metrics}`` plus ``"mean"`` (the average of each metric over the splits)."""
    missing = [k for k in items if k not in answers]
    if missing:
        raise ValueError(f"no answer for POPE questions {missing[:5]} ({len(missing)} in all)")
    out: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        keys = [k for k, i in items.items() if i.split == split]
        if keys:
            out[split] = pope_metrics(
                [items[k].label for k in keys], [parse_yes_no(answers[k]) for k in keys]
            )
    out["mean"] = {m: sum(out[s][m] for s in out) / len(out) for m in METRICS}
    return out


def format_pope_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    lines = [f"{'split':<12}" + "".join(f"{m:>11}" for m in METRICS)]
    for split, metrics in scores.items():
        lines.append(f"{split:<12}" + "".join(f"{metrics[m]:>11.2f}" for m in METRICS))
    return "\n".join(lines)


def pope_as_metrics(scores: Mapping[str, Mapping[str, float]], prefix: str = "pope"):
    """``pope/<metric>`` (mean over splits) and ``pope/<split>/<metric>``."""
    out = {f"{prefix}/{m}": v for m, v in scores["mean"].items()}
    for split, metrics in scores.items():
        if split != "mean":
            out.update({f"{prefix}/{split}/{m}": v for m, v in metrics.items()})
    return out
