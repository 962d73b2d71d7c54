"""POPE: LLaVA's yes/no parsing, metrics by hand, and loader errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_aug_dpo.eval import load_pope, parse_yes_no, pope_metrics, score_pope
from lightning_aug_dpo.eval.pope import POPEItem


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No, there is not.", "no"),
        ("There is no dog in the image.", "no"),
        ("Yes. There is no cat though.", "yes"),  # only the first sentence counts
        ("not really", "no"),
        ("NO", "yes"),  # LLaVA's rule is case-sensitive: "No", "no", "not"
        ("Nothing", "yes"),
    ],
)
def test_parse_yes_no_follows_llava(answer: str, parsed: str) -> None:
    assert parse_yes_no(answer) == parsed


def test_metrics_by_hand() -> None:
    # TP 2, FN 1, FP 1, TN 2
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    preds = ["yes", "yes", "no", "yes", "no", "no"]
    m = pope_metrics(labels, preds)
    assert m == pytest.approx(
        {"accuracy": 400 / 6, "precision": 200 / 3, "recall": 200 / 3, "f1": 200 / 3,
         "yes_ratio": 50.0}
    )  # fmt: skip


def test_score_pope_per_split_and_mean() -> None:
    items = {
        "random/1": POPEItem("random", 1, "a.jpg", "q", "yes"),
        "random/2": POPEItem("random", 2, "a.jpg", "q", "no"),
        "popular/1": POPEItem("popular", 1, "a.jpg", "q", "yes"),
        "popular/2": POPEItem("popular", 2, "a.jpg", "q", "no"),
    }
    answers = {"random/1": "Yes", "random/2": "No", "popular/1": "Yes", "popular/2": "Yes"}
    s = score_pope(items, answers)
    assert s["random"]["accuracy"] == 100.0 and s["popular"]["accuracy"] == 50.0
    assert s["mean"]["accuracy"] == 75.0 and list(s) == ["random", "popular", "mean"]
    with pytest.raises(ValueError, match="no answer for POPE questions"):
        score_pope(items, {})


def test_load_pope_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"coco_pope_random\.json: POPE question file"):
        load_pope(tmp_path, tmp_path, ["random"])
    row = {"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}
    (tmp_path / "coco_pope_random.json").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="line 1 label 'maybe' is not yes/no"):
        load_pope(tmp_path, tmp_path, ["random"])
    (tmp_path / "coco_pope_random.json").write_text(json.dumps({**row, "label": "yes"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"x\.jpg: image of .* row 'random/1' not found"):
        load_pope(tmp_path, tmp_path, ["random"])
    with pytest.raises(ValueError, match="unknown POPE split 'easy'"):
        load_pope(tmp_path, tmp_path, ["easy"])
