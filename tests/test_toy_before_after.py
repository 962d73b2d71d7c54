"""The before -> after report of the toy world: changes, which way is better, the verdicts and
the trivial baselines (always yes, say nothing), hand-computed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_aug_dpo.data.toy_world import ToyObject, ToyScene
from lightning_aug_dpo.eval.pope import POPEBenchmark, POPEItem
from lightning_aug_dpo.eval.toy_world import (
    ToyBenchmark,
    compare_toy,
    format_before_after,
    trivial_baselines,
)

# fractions for the description metrics, percent for POPE: as the scorers report them
BEFORE = {
    "toy/chair_i": 0.25, "toy/chair_s": 0.5, "toy/coverage": 0.8, "toy/colour_errors": 0.1,
    "toy/count_errors": 0.02, "toy/pope/mean/f1": 60.0, "toy/pope/mean/accuracy": 55.0,
    "toy/pope/adversarial/f1": 58.0,
}  # fmt: skip
AFTER = {
    "toy/chair_i": 0.20, "toy/chair_s": 0.5, "toy/coverage": 0.7, "toy/colour_errors": 0.12,
    "toy/count_errors": 0.02, "toy/pope/mean/f1": 66.0, "toy/pope/mean/accuracy": 50.0,
    "toy/pope/adversarial/f1": 58.02,
}  # fmt: skip


def _row(table: str, name: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(name + " ")]
    return line.removeprefix(name).split()


def test_changes_directions_and_verdicts_by_hand() -> None:
    compared = compare_toy(BEFORE, AFTER)
    change = {k: c["change"] for k, c in compared.items()}
    # percentage points: CHAIR_i 25 -> 20, coverage 80 -> 70, colour 10 -> 12, F1 60 -> 66,
    # accuracy 55 -> 50, adversarial F1 58 -> 58.02 (under the 0.05 that prints as 0.0)
    assert change == pytest.approx({
        "toy/chair_i": -5.0, "toy/chair_s": 0.0, "toy/coverage": -10.0,
        "toy/colour_errors": 2.0, "toy/count_errors": 0.0, "toy/pope/mean/f1": 6.0,
        "toy/pope/mean/accuracy": -5.0, "toy/pope/adversarial/f1": 0.02,
    })  # fmt: skip
    assert compared["toy/chair_i"]["before"] == 25.0 and compared["toy/coverage"]["after"] == 70.0
    table = format_before_after(BEFORE, AFTER)
    assert _row(table, "better") == ["lower"] * 2 + ["higher"] + ["lower"] * 2 + ["higher"] * 3
    assert _row(table, "before") == ["25.0", "50.0", "80.0", "10.0", "2.0", "60.0", "55.0", "58.0"]
    assert _row(table, "after") == ["20.0", "50.0", "70.0", "12.0", "2.0", "66.0", "50.0", "58.0"]
    assert _row(table, "change") == ["-5.0", "0.0", "-10.0", "+2.0", "0.0", "+6.0", "-5.0", "0.0"]
    # lower CHAIR_i is an improvement, lower coverage is not, higher F1 is
    assert _row(table, "verdict") == [
        "better", "same", "worse", "worse", "same", "better", "worse", "same",
    ]  # fmt: skip


def test_trivial_baselines_on_a_hand_made_probe_set() -> None:
    red_circle = ToyScene((ToyObject("red", "circle", "small", 0),), (30,), (0,), 1)
    items = {}
    # random: 3 yes, 1 no; adversarial: 2 yes, 2 no (the demo's splits are all 50/50)
    for split, labels in (("random", "yyyn"), ("adversarial", "yynn")):
        for i, label in enumerate(labels):
            label = "yes" if label == "y" else "no"
            items[f"{split}/{i}"] = POPEItem(split, i, "a.png", "Is there a red circle?", label)
    pope = POPEBenchmark(items, dict.fromkeys(items, Path("a.png")))
    bench = ToyBenchmark({"d": "Describe."}, {"d": red_circle}, {"d": Path("a.png")}, pope)
    baselines = trivial_baselines(bench)
    yes = baselines["always yes"]
    # random: TP 3, FP 1: precision 3/4, recall 1, F1 6/7; accuracy 3/4; adversarial F1 2/3
    assert yes["toy/pope/random/f1"] == pytest.approx(100 * 6 / 7)
    assert yes["toy/pope/random/accuracy"] == 75.0 and yes["toy/pope/random/yes_ratio"] == 100.0
    assert yes["toy/pope/adversarial/f1"] == pytest.approx(200 / 3)
    assert yes["toy/pope/adversarial/accuracy"] == 50.0
    assert yes["toy/pope/mean/f1"] == pytest.approx((600 / 7 + 200 / 3) / 2)  # 76.19
    assert yes["toy/pope/mean/accuracy"] == 62.5
    # naming nothing: no hallucination and nothing covered
    assert baselines["say nothing"] == {
        "toy/chair_i": 0.0, "toy/chair_s": 0.0, "toy/coverage": 0.0, "toy/colour_errors": 0.0,
    }  # fmt: skip
    table = format_before_after(BEFORE, AFTER, baselines)
    assert _row(table, "always yes") == ["-"] * 5 + ["76.2", "62.5", "66.7"]
    assert _row(table, "say nothing") == ["0.0"] * 4 + ["-"] * 4

    no_probes = ToyBenchmark(bench.questions, bench.scenes, bench.images, None)
    assert set(trivial_baselines(no_probes)) == {"say nothing"}
