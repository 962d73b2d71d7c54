"""LLaVA-Bench loading and scoring; parity with LLaVA-1.5's published review runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_aug_dpo.eval import (
    load_llava_bench,
    load_rule_file,
    parse_two_scores,
    read_answers_jsonl,
    read_reviews,
    score_llava_bench,
)
from lightning_aug_dpo.eval.llava_bench import answer_rows, write_answers_jsonl
from lightning_aug_dpo.eval.prompts import llava_review_request

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "llava_bench"


@pytest.fixture
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference files not found at {REF}")
    return REF


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def toy_bench(root: Path, images: bool = True) -> Path:
    """Two images, three questions; files deliberately in different line orders."""
    _jsonl(
        root / "questions.jsonl",
        [
            {"question_id": 0, "image": "a.jpg", "text": "What is it?", "category": "conv"},
            {"question_id": 1, "image": "b.jpg", "text": "Describe.", "category": "detail"},
            {"question_id": 2, "image": "a.jpg", "text": "Why?", "category": "complex"},
        ],
    )
    _jsonl(
        root / "context.jsonl",
        [
            {"id": "b", "image": "b.jpg", "caption": ["A red bus.", "On a street."]},
            {"id": "a", "image": "a.jpg", "caption": "A brown dog sleeping on grass."},
        ],
    )
    _jsonl(
        root / "answers_gpt4.jsonl",
        [{"question_id": q, "text": f"ref {q}", "answer_id": f"g{q}"} for q in (2, 0, 1)],
    )
    if images:
        (root / "images").mkdir()
        for name in ("a.jpg", "b.jpg"):
            (root / "images" / name).write_bytes(b"x")
    return root


def test_load_joins_by_id_not_line_order(tmp_path: Path) -> None:
    bench = load_llava_bench(toy_bench(tmp_path))
    assert list(bench.items) == [0, 1, 2]
    item = bench.items[2]
    assert (item.reference, item.reference_id, item.category) == ("ref 2", "g2", "complex")
    assert item.caption == "A brown dog sleeping on grass."
    assert bench.items[1].caption == "A red bus.\nOn a street."  # caption lists join by line
    assert bench.images[1] == tmp_path / "images" / "b.jpg"
    assert list(bench.limited(2).items) == [0, 1]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "context.jsonl").unlink(), r"context\.jsonl: LLaVA-Bench captions not"),
        (lambda r: (r / "images" / "b.jpg").unlink(), r"b\.jpg: image of .* row 1 not found"),
        (
            lambda r: _jsonl(r / "answers_gpt4.jsonl", [{"question_id": 0, "text": "x"}]),
            r"no reference answer for question_id 1",
        ),
        (
            lambda r: _jsonl(r / "context.jsonl", [{"image": "a.jpg", "caption": "c"}]),
            r"no caption for image 'b\.jpg' of .* question 1",
        ),
        (
            lambda r: (r / "questions.jsonl").write_text('{"question_id": 0}\n'),
            r"questions\.jsonl: line 1 lacks 'image'",
        ),
        (
            lambda r: (r / "questions.jsonl").write_text("{oops\n"),
            r"questions\.jsonl: line 1 is not valid JSON",
        ),
    ],
)
def test_load_errors_name_file_row_and_fix(tmp_path: Path, breakage, message: str) -> None:
    toy_bench(tmp_path)
    breakage(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_llava_bench(tmp_path)


def test_load_without_images_for_scoring(tmp_path: Path) -> None:
    assert len(load_llava_bench(toy_bench(tmp_path, images=False), images=False).items) == 3
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_llava_bench(tmp_path)


def test_answer_file_round_trip(tmp_path: Path) -> None:
    bench = load_llava_bench(toy_bench(tmp_path))
    rows = answer_rows(bench.items, {0: "a dog", 1: "a bus", 2: "sleepy"}, "m")
    write_answers_jsonl(tmp_path / "ans.jsonl", rows)
    back = read_answers_jsonl(tmp_path / "ans.jsonl")
    assert back[1] == {
        "question_id": 1,
        "prompt": "Describe.",
        "text": "a bus",
        "answer_id": "m-1",
        "model_id": "m",
        "metadata": {},
    }


@pytest.mark.parametrize(
    ("reply", "scores"),
    [
        ("7 9\nbecause", [7.0, 9.0]),
        ("8, 6.5\n", [8.0, 6.5]),
        ("  10 3", [10.0, 3.0]),
        ("Scores: 7 9", None),
        ("7\n9", None),
        ("nan 3", None),
        ("", None),
    ],
)
def test_parse_two_scores(reply: str, scores) -> None:
    assert parse_two_scores(reply) == scores


def _review(qid: int, category: str, ref: float, model: float, **extra) -> dict:
    return {
        "question_id": qid,
        "category": f"llava_bench_{category}",
        "tuple": [ref, model],
        **extra,
    }


def test_score_by_hand_with_failed_reviews_left_out() -> None:
    run1 = [_review(0, "conv", 8, 6), _review(1, "detail", 6, 6), _review(2, "conv", -1, -1)]
    run2 = [_review(0, "conv", 8, 8), _review(1, "detail", 5, 4), _review(2, "conv", 7, 0)]
    s = score_llava_bench([run1, run2], question_ids=[0, 1, 2])
    # run1: conv 6/8 = 75 (the failed row is not averaged in); detail 100; overall 12/14
    # run2: conv (8+0)/2 / 7.5 -> 4/7.5; detail 80; overall round(4, 3) / round(6.667, 3)
    assert s.runs[0].categories["conv"] == (8.0, 6.0, 75.0)
    assert s.runs[0].categories["overall"] == (7.0, 6.0, 85.7)  # round(600 / 7, 1)
    assert s.runs[1].categories["overall"] == (6.667, 4.0, 60.0)  # round(400 / 6.667, 1)
    assert s.runs[1].categories["conv"] == (7.5, 4.0, 53.3)
    assert s.mean["detail"] == pytest.approx(90.0) and s.std["detail"] == pytest.approx(10.0)
    assert s.runs[0].failed == [2] and s.failed == 1
    assert s.as_metrics()["llava_bench/conv"] == pytest.approx((75 + 53.3) / 2)
    assert "1 failed reviews" in s.format_table()
    assert s.to_dict()["runs"][0]["failed_question_ids"] == [2]


def test_score_checks_coverage() -> None:
    with pytest.raises(ValueError, match=r"missing question ids 1 .*unknown ids 7"):
        score_llava_bench([[_review(0, "conv", 1, 1), _review(7, "conv", 1, 1)]], [0, 1])
    with pytest.raises(ValueError, match="twice"):
        score_llava_bench([[_review(0, "conv", 1, 1), _review(0, "conv", 1, 1)]])
    with pytest.raises(ValueError, match="no review runs"):
        score_llava_bench([])


def test_read_reviews_rejects_bad_tuple(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    _jsonl(path, [{"question_id": 3, "tuple": [1]}])
    with pytest.raises(ValueError, match=r"row 1 \(question_id 3\) 'tuple' must be"):
        read_reviews(path)


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("size", "per_run", "overall"),
    [("7b", [64.7, 65.3, 66.3], 65.4), ("13b", [72.8, 72.7, 72.1], 72.5)],
)
def test_parity_llava_v15(ref: Path, size: str, per_run: list[float], overall: float) -> None:
    bench = load_llava_bench(ref, images=False)
    runs = [
        read_reviews(ref / "llava-v1.5" / f"llava-v1.5-{size}-eval{i}.jsonl") for i in (1, 2, 3)
    ]
    s = score_llava_bench(
        runs, question_ids=bench.items, categories={q: i.category for q, i in bench.items.items()}
    )
    assert [round(r.categories["overall"][2], 1) for r in s.runs] == per_run
    assert round(s.mean["overall"], 1) == overall
    assert set(s.mean) == {"conv", "detail", "complex", "overall"}
    assert s.num_questions == 60 and s.failed == 0
    if size == "7b":
        assert [round(r.categories["conv"][2], 1) for r in s.runs] == [59.3, 59.0, 59.0]


def test_official_rule_file_builds_the_official_request(ref: Path) -> None:
    rules = load_rule_file(ref / "official_rule.json")
    bench = load_llava_bench(ref, images=False)
    item = bench.items[0]
    text = llava_review_request(
        rules, item.category, item.caption, item.question, item.reference, "model answer"
    )
    assert text.startswith("[Context]\nAn aerial view of Diamond Head")
    assert "[Assistant 1]\nThe famous sight in the photo is Diamond Head.\n\n[End of Assistant 1]"
    assert "[Assistant 2]\nmodel answer\n\n[End of Assistant 2]\n\n[System]\n" in text
    assert rules["llava_bench_conv"]["prompt"] in text


def test_rule_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "rule.json"
    path.write_text(json.dumps({"llava_bench_conv": {"role": "A", "prompt": "p"}}))
    with pytest.raises(ValueError, match="'llava_bench_detail' is missing"):
        load_rule_file(path)
    with pytest.raises(FileNotFoundError, match="rule file not found"):
        load_rule_file(tmp_path / "nope.json")
