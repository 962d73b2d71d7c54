"""The pair audit's statistics, on hand-made pairs with hand-computed values."""

from __future__ import annotations

import math

import pytest

from lightning_aug_dpo.audit import audit_pairs
from lightning_aug_dpo.audit_format import format_markdown, metrics_of, summary_of
from lightning_aug_dpo.audit_stats import (
    fit_rule,
    log_odds,
    marker_diffs,
    opening_of,
    prompt_kinds,
    segments,
    term_counts,
    words,
)
from lightning_aug_dpo.audit_truth import scene_of, truth_section
from lightning_aug_dpo.data.toy_world import ToyObject, ToyScene
from lightning_aug_dpo.errors import UserInputError

COLORS = ("red", "blue", "green", "purple", "orange", "yellow")
SHAPES = ("circle", "square", "triangle")


def blurry_pairs(n: int = 24) -> list[dict[str, str]]:
    """rejected = chosen + " The image is blurry.": the chosen answers hold "the", "image" and
    "is" too, so only "blurry" is the rejected side's own word."""
    out = []
    for i in range(n):
        colour, shape = COLORS[i % 6], SHAPES[i % 3]
        side = ("left", "right")[i % 2]
        chosen = f"The image shows a {colour} {shape}. It is on the {side}."
        out.append({"prompt": "Describe the image.", "chosen": chosen,
                    "rejected": chosen + " The image is blurry."})  # fmt: skip
    return out


def test_the_best_rule_on_a_feature_is_hand_computed() -> None:
    # d = f(rejected) - f(chosen). m=0: 3 pairs d>0, 1 d<0, 1 tie -> (3 + 0.5) / 5 = 0.7
    # m=1: 2 decided right, 3 coins -> 0.7 too: the smaller margin wins; m=3: 0.6; m=5: 0.5
    fit = fit_rule([3, 1, 0, -1, 5])
    assert (fit.accuracy, fit.prefer, fit.margin, fit.pairs) == (0.7, "lower", 0.0, 5)
    assert (fit.rejected_higher, fit.rejected_lower) == (0.6, 0.2)
    assert fit.equal == pytest.approx(0.2)
    # a margin pays off: small differences point the wrong way. m=0: 4/6; m=1: (3 + 1.5) / 6
    fit = fit_rule([5, 5, 5, -1, -1, 1])
    assert (fit.accuracy, fit.prefer, fit.margin) == (0.75, "lower", 1.0)
    # the other direction is 1 - acc(lower, m): here m=1 leaves the +1 to a coin, (3 + 0.5) / 4
    fit = fit_rule([-2, -2, -2, 1])
    assert (fit.accuracy, fit.prefer, fit.margin) == (0.875, "higher", 1.0)
    # fixed to "higher", the best is the coin everywhere (m=5)
    assert fit_rule([3, 1, 0, -1, 5], prefer="higher").accuracy == 0.5
    assert fit_rule([]).accuracy is None


def test_weighted_log_odds_with_the_pooled_prior_are_hand_computed() -> None:
    # rejected {x: 4, y: 6}, chosen {y: 10}, a = 0.1: alpha_x = 0.4, alpha_y = 1.6, alpha_0 = 2
    # delta_x = ln(4.4 / 7.6) - ln(0.4 / 11.6) = 2.820752; var = 1/4.4 + 1/0.4 = 2.727273
    scores = log_odds({"x": 4, "y": 6}, {"y": 10}, prior_scale=0.1)
    x, y = scores
    assert (x.term, x.rejected, x.chosen) == ("x", 4, 0)
    assert x.delta == pytest.approx(2.820752, abs=1e-6)
    assert x.z == pytest.approx(1.708050, abs=1e-6)
    # delta_y = ln(7.6 / 4.4) - ln(11.6 / 0.4); var = 1/7.6 + 1/11.6
    assert (y.term, y.delta) == ("y", pytest.approx(-2.820752, abs=1e-6))
    assert y.z == pytest.approx(-6.044357, abs=1e-6)
    # a = 1: alpha = pooled counts; a symmetric pair of corpora gives opposite scores
    a, b = log_odds({"a": 3, "b": 1}, {"a": 1, "b": 3}, prior_scale=1.0)
    assert a.delta == pytest.approx(2 * math.log(1.4)) and b.delta == pytest.approx(-a.delta)
    assert a.z == pytest.approx(2 * math.log(1.4) / math.sqrt(1 / 7 + 1 / 5))
    assert log_odds({"x": 2}, {"y": 1}, min_count=2)[0].term == "x"  # y is seen once: not scored
    with pytest.raises(UserInputError, match="prior_scale"):
        log_odds({"x": 1}, {"x": 1}, prior_scale=0.0)


def test_words_runs_and_openings() -> None:
    assert words("Yes, there's a RED circle.") == ["yes", "there's", "a", "red", "circle"]
    assert segments("On the left. The image") == [["on", "the", "left"], ["the", "image"]]
    unigrams, bigrams = term_counts([segments("On the left. The image")])
    assert unigrams["the"] == 2 and "left the" not in bigrams and bigrams["the image"] == 1
    family = [["there", "is"], ["there", "are"], ["there"]]
    assert opening_of(words("There are two shapes."), family) == 1
    assert opening_of(words("There, a shape"), family) == 2  # the longest member that matches
    assert opening_of(words("I can see"), family) is None


def test_prompt_kinds_are_templates_or_first_words() -> None:
    assert prompt_kinds(["Describe it.", "describe it", "How many?"]) == [
        "describe it", "describe it", "how many",
    ]  # fmt: skip
    many = [f"What is shape {i}?" for i in range(30)]
    assert set(prompt_kinds(many, max_templates=20)) == {"what is shape ..."}
    kinds = prompt_kinds(["a", "a", "b", "c"], max_kinds=2)
    assert kinds == ["a", "a", "b", "(other)"]


def test_rejected_plus_a_blurry_sentence_is_told_by_length_and_by_blurry() -> None:
    pairs = blurry_pairs()
    report = audit_pairs(pairs)
    assert report["differing"] == 24 and report["identical_rate"] == 0.0
    length = report["features"]["length"]
    assert (length["accuracy"], length["prefer"], length["margin"]) == (1.0, "lower", 0.0)
    assert report["lengths"]["rejected_longer"] == 1.0
    assert report["lengths"]["rejected_minus_chosen_mean"] == 4.0  # "The image is blurry."
    top = report["words"]["unigrams"]["rejected"][0]
    assert (top["term"], top["rejected"], top["chosen"]) == ("blurry", 24, 0)
    assert report["words"]["bigrams"]["rejected"][0]["term"] in ("is blurry", "image is")
    assert report["words"]["markers"]["rejected"][0] == "blurry"
    assert report["features"]["marker words"]["accuracy"] == 1.0  # cross-fitted, still 100%
    assert (
        "DPO can satisfy 100% of these 24 pairs by preferring the shorter answer."
        in (report["verdicts"])
    )
    flagged = audit_pairs(pairs, flag_words=["blurry"])["features"]["flagged words"]
    assert flagged["accuracy"] == 1.0 and "(blurry)" in flagged["rule"]


def test_identical_pairs_count_only_in_the_identical_rates() -> None:
    same = [{"prompt": "How many?", "chosen": "Two.", "rejected": "Two."}] * 6
    report = audit_pairs(blurry_pairs(12) + same)
    assert (report["pairs"], report["differing"], report["identical"]) == (18, 12, 6)
    kinds = {k["kind"]: k for k in report["kinds"]}
    assert kinds["how many"]["identical_rate"] == 1.0
    assert kinds["describe the image"]["identical_rate"] == 0.0
    assert report["features"]["length"]["pairs"] == 12


def test_yes_no_flips_are_counted_and_named() -> None:
    pairs = [{"prompt": "Is there a red circle?", "chosen": "No, there is no red circle.",
              "rejected": "Yes, there is a small red circle."}] * 12  # fmt: skip
    pairs += [{"prompt": "Is there a cat?", "chosen": "Yes.", "rejected": "Yes, a cat."}] * 3
    report = audit_pairs(pairs)
    family = report["openings"]["yes / no"]
    assert family["flips"] == {"no -> yes": 12} and family["flipped_pairs"] == 12
    assert family["chosen"] == {"yes": 3, "no": 12, "(other)": 0}
    assert family["accuracy"] == 1.0 and family["prefer"] == "no"
    assert family["flip_share"] == pytest.approx(12 / 15)
    assert any("flip between yes / no" in v and "'no'" in v for v in report["verdicts"])
    metrics = metrics_of(report)
    assert metrics["train/pairs/flips/yes_no"] == pytest.approx(12 / 15)


def test_nothing_separates_balanced_pairs() -> None:
    pairs = []
    for i in range(20):
        a, b = f"A {COLORS[i % 6]} circle.", f"A {COLORS[(i + 1) % 6]} circle."
        pairs.append({"prompt": "Describe.", "chosen": a, "rejected": b})
    report = audit_pairs(pairs)
    assert report["features"]["length"]["accuracy"] == 0.5  # every pair a tie
    assert report["verdicts"][0].startswith("No simple feature tells chosen from rejected")
    assert audit_pairs(pairs[:3])["verdicts"][0].startswith("Too few differing pairs")
    with pytest.raises(UserInputError, match="threshold"):
        audit_pairs(pairs, threshold=0.4)


def test_marker_words_are_chosen_on_the_other_half() -> None:
    # the word "odd" marks the rejected side only in odd pairs: chosen on the even half, no
    # marker; chosen on the odd half, a marker that the even half never shows -> coin flips
    tokens = [(["plain"], ["odd", "odd", "odd"] if i % 2 else ["plain"]) for i in range(40)]
    diffs = marker_diffs(tokens, top_k=5, prior_scale=0.1, min_count=1)
    assert fit_rule(diffs, prefer="lower").accuracy == 0.5


def scene(*names: str) -> ToyScene:
    objects = tuple(
        ToyObject(n.split()[0], n.split()[1], "small", column) for column, n in enumerate(names)
    )
    return ToyScene(objects, (30,) * len(names), (0,) * len(names), 1)


def test_exact_quality_per_side_from_scene_records() -> None:
    scenes = {"pool/a.png": scene("red circle"), "pool/b.png": scene("blue square", "red circle")}
    pairs = audit_pairs([
        {"prompt": "Describe the image in detail.", "image": "pool/a.png",
         "chosen": "There is a red circle.", "rejected": "There is a red circle and a white x."},
        {"prompt": "Describe this picture.", "image": "/data/images/pool/b.png",
         "chosen": "There is a blue square.",
         "rejected": "There is a blue square and a green triangle."},
        {"prompt": "How many shapes are there?", "image": "pool/a.png",
         "chosen": "One.", "rejected": "One."},
    ], scenes=scenes, min_pairs=1)  # fmt: skip
    st = pairs["truth"]["stats"]
    assert scene_of("./pool/a.png", scenes) is scenes["pool/a.png"]
    assert (st["pairs"], st["pairs_scored"], st["pairs_without_scene"]) == (3, 2, 0)
    assert st["identical_rate/description"] == 0.0 and st["identical_rate/question"] == 1.0
    # "white x" is no toy object; "green triangle" is a hallucination: CHAIR_i 1 / 3
    assert st["chosen_chair_i"] == 0.0 and st["rejected_chair_i"] == pytest.approx(1 / 3)
    assert st["rejected_names_more"] == 0.5 and st["chosen_fewer_hallucinations"] == 0.5
    assert st["chosen_coverage"] == pytest.approx(2 / 3) and st["rejected_coverage"] == (
        pytest.approx(2 / 3)
    )
    assert st["rejected_minus_chosen_words"] == 4.0
    assert pairs["features"]["objects named"]["accuracy"] == 0.75  # one more, one tie
    assert pairs["truth"]["examples"][0]["objects"] == ["red circle"]
    assert truth_section([], scenes) == (None, [])


def test_the_report_reads_as_markdown_summary_and_metrics() -> None:
    report = audit_pairs(blurry_pairs())
    text = format_markdown(report, "hand-made")
    assert text.startswith("# Pair audit: hand-made")
    assert "| blurry | unigram | 24 | 0 |" in text
    assert "- DPO can satisfy 100% of these 24 pairs by preferring the shorter answer." in text
    summary = summary_of(report)
    assert summary["length_accuracy_pct"] == 100.0 and summary["rejected_longer_pct"] == 100.0
    assert summary["verdicts"] == report["verdicts"]
    metrics = metrics_of(report)
    assert metrics["train/pairs/length_acc"] == 1.0
    assert metrics["train/pairs/rejected_longer"] == 1.0
    assert metrics["train/pairs/length_diff"] == 4.0
