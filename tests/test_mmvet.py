"""MM-Vet loading, rule judge and scoring; parity with LLaVA-1.5's published grade files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_aug_dpo.eval import (
    Grade,
    Judge,
    MMVetItem,
    RuleJudge,
    combination_key,
    grade_mmvet,
    grade_scores,
    load_capabilities,
    load_mmvet,
    normalize,
    read_answers,
    read_grades,
    score_mmvet,
    write_answers,
    write_grades,
)
from lightning_aug_dpo.eval.mmvet import combination_label

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "mmvet"
LLAVA = REF / "llava-v1.5"


@pytest.fixture
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference files not found at {REF}")
    return REF


def _toy_rows() -> dict[str, dict]:
    return {
        "v1_0": {"imagename": "a.png", "question": "Q0?", "answer": "cat", "capability": ["rec"]},
        "v1_1": {
            "imagename": "b.png",
            "question": "Q1?",
            "answer": "12 <AND> 7",
            "capability": ["math", "ocr"],
        },
    }


# ---------------------------------------------------------------- rule judge


@pytest.mark.parametrize(
    ("answer", "prediction", "score", "content"),
    [
        ("red <AND> blue", "It is red and blue.", 1.0, "matched 2/2 parts"),
        ("red <AND> blue", "It is red.", 0.5, "matched 1/2 parts"),
        ("red<AND>blue<AND>green<AND>white", "Red, GREEN and white", 0.75, "matched 3/4 parts"),
        ("red <AND> blue", "It is yellow.", 0.0, "matched 0/2 parts"),
        ("Paris <OR> France", "This is in france.", 1.0, "matched 1/1 parts"),
        ("Paris <OR> France", "This is in Berlin.", 0.0, "matched 0/1 parts"),
        ("cat", "A cat.", 1.0, "matched 1/1 parts"),
        ("cat", "A dog.", 0.0, "matched 0/1 parts"),
        ("Cat!", "THE CAT, SITTING", 1.0, "matched 1/1 parts"),
        ("\u201cNew York\u201d", "It is new   york, USA.", 1.0, "matched 1/1 parts"),
        ("cat", "This is a category.", 0.0, "matched 0/1 parts"),
        ("New York", "It is newyork.", 0.0, "matched 0/1 parts"),
        ("2", "There are two apples.", 0.0, "matched 0/1 parts"),
        ("2 <OR> two", "There are two apples.", 1.0, "matched 1/1 parts"),
        ("2", "The answer is 2.", 1.0, "matched 1/1 parts"),
        ("2", "The answer is 2.5", 0.0, "matched 0/1 parts"),
        ("3.5", "x = 3.5.", 1.0, "matched 1/1 parts"),
    ],
)
def test_rule_judge_cases(answer: str, prediction: str, score: float, content: str) -> None:
    grade = RuleJudge().grade("question?", answer, prediction)
    assert grade == Grade(score=score, content=content, model="rule")


def test_rule_judge_mixed_and_or_takes_best_alternative() -> None:
    grade = RuleJudge().grade("q", "a b <AND> c <OR> d", "only c here")
    assert grade.score == 0.5 and grade.content == "matched 1/2 parts"


def test_rule_judge_empty_answer_scores_zero() -> None:
    assert RuleJudge().grade("q", " ?! ", "anything").score == 0.0


def test_normalize() -> None:
    assert normalize("  Hello,   WORLD!! (3.5%) u.s. ") == "hello world 3.5 u.s"


def test_rule_judge_is_a_judge() -> None:
    assert isinstance(RuleJudge(), Judge)
    assert RuleJudge.name == "rule"


def _items() -> dict[str, MMVetItem]:
    return {
        "v1_0": MMVetItem("v1_0", "a.png", "Q0", "cat", ("rec",)),
        "v1_1": MMVetItem("v1_1", "b.png", "Q1", "12 <AND> 7", ("ocr", "math")),
    }


def test_grade_mmvet_runs_and_scores() -> None:
    grades = grade_mmvet(RuleJudge(), _items(), {"v1_0": "a cat", "v1_1": "12", "x": "y"}, 2)
    assert list(grades) == ["v1_0", "v1_1"]
    assert grade_scores(grades) == {"v1_0": [1.0, 1.0], "v1_1": [0.5, 0.5]}
    assert grades["v1_1"][0].content == "matched 1/2 parts"


def test_grade_mmvet_missing_answer_names_ids() -> None:
    with pytest.raises(ValueError, match=r"'v1_1' \(1 in all\)"):
        grade_mmvet(RuleJudge(), _items(), {"v1_0": "a cat"})
    with pytest.raises(ValueError, match="runs must be at least 1"):
        grade_mmvet(RuleJudge(), _items(), {"v1_0": "", "v1_1": ""}, runs=0)


# ---------------------------------------------------------------- scoring

HAND_SCORES = {
    "v1_0": [1.0, 0.5],  # rec
    "v1_1": [0.0, 0.5],  # ocr
    "v1_2": [0.5, 1.0],  # rec + ocr
    "v1_3": [1.0, 1.0],  # rec
}
HAND_CAPS = {"v1_0": ("rec",), "v1_1": ("ocr",), "v1_2": ("ocr", "rec"), "v1_3": ("rec",)}


def test_score_mmvet_hand_example() -> None:
    s = score_mmvet(HAND_SCORES, HAND_CAPS)
    # total per run: 100 * 2.5/4 = 62.5 and 100 * 3/4 = 75 -> mean 68.75, population std 6.25
    assert s.total_mean == pytest.approx(68.75)
    assert s.total_std == pytest.approx(6.25)
    # rec (v1_0, v1_2, v1_3): 250/3 in both runs; ocr (v1_1, v1_2): 25 and 75
    assert s.per_capability == {
        "rec": pytest.approx((250 / 3, 0.0)),
        "ocr": pytest.approx((50.0, 25.0)),
    }
    # exact sets: rec (v1_0, v1_3) 100 / 75; ocr (v1_1) 0 / 50; rec_ocr (v1_2) 50 / 100
    assert list(s.per_combination) == ["rec", "ocr", "rec_ocr"]
    assert s.per_combination["rec"] == pytest.approx((87.5, 12.5))
    assert s.per_combination["ocr"] == pytest.approx((25.0, 25.0))
    assert s.per_combination["rec_ocr"] == pytest.approx((75.0, 25.0))
    assert (s.num_runs, s.num_questions) == (2, 4)
    assert s.as_metrics() == pytest.approx(
        {"mmvet/total": 68.75, "mmvet/rec": 250 / 3, "mmvet/ocr": 50.0}
    )
    assert s.as_metrics(prefix="val/mmvet", combinations=True)["val/mmvet/combo/rec_ocr"] == 75.0
    table = s.format_table()
    assert "4 questions, 2 grading runs" in table
    assert any(line.split() == ["ocr", "2", "50.0", "25.0"] for line in table.splitlines())


def test_score_table_keeps_capabilities_and_combinations_apart() -> None:
    s = score_mmvet(HAND_SCORES, HAND_CAPS)
    lines = s.format_table().splitlines()
    caps = lines.index("capabilities (a question counts under each capability it is tagged with)")
    combos = lines.index("capability combinations (each question once, under its exact set)")
    assert caps < combos
    # capability rows: every question tagged with it; combination rows: exact sets, renamed
    assert [line.split() for line in lines[caps + 1 : combos]] == [
        ["rec", "3", "83.3", "0.0"],
        ["ocr", "2", "50.0", "25.0"],
    ]
    assert [line.split() for line in lines[combos + 1 :]] == [
        ["rec", "only", "2", "87.5", "12.5"],
        ["ocr", "only", "1", "25.0", "25.0"],
        ["rec+ocr", "1", "75.0", "25.0"],
    ]
    names = [line.rsplit(maxsplit=3)[0].strip() for line in lines[2:] if line.startswith(" ")]
    assert len(names) == len(set(names)) == 5  # no name twice in one table
    # the logged metric names and the scores file keep the official keys
    assert set(s.as_metrics(combinations=True)) == {
        "mmvet/total", "mmvet/rec", "mmvet/ocr",
        "mmvet/combo/rec", "mmvet/combo/ocr", "mmvet/combo/rec_ocr",
    }  # fmt: skip
    assert list(s.to_dict()["combinations"]) == ["rec", "ocr", "rec_ocr"]
    assert combination_label("rec_ocr_spat") == "rec+ocr+spat"
    assert s.format_table(combinations=False).splitlines()[-1].split()[0] == "ocr"


def test_score_mmvet_scalar_scores_are_one_run() -> None:
    s = score_mmvet({"v1_0": 1.0, "v1_1": 0.0, "v1_2": 0.5, "v1_3": 1}, HAND_CAPS)
    assert (s.num_runs, s.total_mean, s.total_std) == (1, 62.5, 0.0)


def test_score_mmvet_errors() -> None:
    caps = {f"v1_{i}": ("rec",) for i in range(8)}
    with pytest.raises(ValueError, match=r"'v1_1', 'v1_2', 'v1_3', 'v1_4', 'v1_5', \.\.\. \(7 in"):
        score_mmvet({"v1_0": [1.0]}, caps)
    with pytest.raises(ValueError, match="same number of runs"):
        score_mmvet({**HAND_SCORES, "v1_3": [1.0]}, HAND_CAPS)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        score_mmvet({**HAND_SCORES, "v1_3": [1.0, 2.0]}, HAND_CAPS)
    with pytest.raises(ValueError, match="unknown capability 'vision'"):
        score_mmvet(HAND_SCORES, {**HAND_CAPS, "v1_3": ("vision",)})


def test_combination_key_order() -> None:
    assert combination_key(["math", "spat", "ocr", "rec"]) == "rec_ocr_spat_math"


# ---------------------------------------------------------------- files


def test_load_mmvet_toy(tmp_path: Path) -> None:
    path = tmp_path / "mm-vet.json"
    path.write_text(json.dumps(_toy_rows()))
    items = load_mmvet(path)
    assert items["v1_1"] == MMVetItem("v1_1", "b.png", "Q1?", "12 <AND> 7", ("ocr", "math"))
    assert load_capabilities(path) == {"v1_0": ("rec",), "v1_1": ("ocr", "math")}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rows: rows["v1_1"].pop("question"), "row 'v1_1' lacks 'question'; each row"),
        (lambda rows: rows["v1_1"].update(capability=["rec", "vis"]), "row 'v1_1' has unknown"),
        (lambda rows: rows["v1_1"].update(capability="ocr"), "row 'v1_1' 'capability' must"),
        (lambda rows: rows["v1_1"].update(answer=3), "row 'v1_1' 'answer' must be a string"),
        (lambda rows: rows.update(v1_1=[1]), "row 'v1_1' is list"),
    ],
)
def test_load_mmvet_broken_rows(tmp_path: Path, mutate, expected: str) -> None:
    rows = _toy_rows()
    mutate(rows)
    path = tmp_path / "mm-vet.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError) as info:
        load_mmvet(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_load_mmvet_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "mm-vet.json"
    path.write_text('{"v1_0": {"imagename": ')
    with pytest.raises(ValueError, match=r"mm-vet\.json: invalid JSON at line 1"):
        load_mmvet(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="top level is list"):
        load_mmvet(path)


def test_answers_round_trip(tmp_path: Path) -> None:
    answers = {"v1_10": "ten", "v1_2": "caf\u00e9 \u2014 two", "v1_0": "zero"}
    path = tmp_path / "out" / "answers.json"
    write_answers(path, answers)
    text = path.read_text(encoding="utf-8")
    assert "caf\u00e9" in text and '\n  "v1_0": "zero"' in text
    assert read_answers(path) == answers
    assert list(read_answers(path)) == ["v1_0", "v1_2", "v1_10"]


def test_grades_round_trip_and_scalar_scores(tmp_path: Path) -> None:
    grades = {"v1_1": [Grade(0.5, "0.5", "gpt-4"), Grade(1.0, "1.0", "gpt-4")]}
    path = tmp_path / "grades.json"
    write_grades(path, grades)
    raw = json.loads(path.read_text())
    assert raw == {"v1_1": {"model": ["gpt-4"] * 2, "content": ["0.5", "1.0"], "score": [0.5, 1]}}
    assert read_grades(path) == {"v1_1": [0.5, 1.0]}
    path.write_text(json.dumps({"v1_0": 0.5, "v1_1": {"score": 1}}))
    assert read_grades(path) == {"v1_0": [0.5], "v1_1": [1.0]}
    path.write_text(json.dumps({"v1_0": {"content": "x"}}))
    with pytest.raises(ValueError, match="row 'v1_0' lacks 'score'"):
        read_grades(path)


# ---------------------------------------------------------------- parity with published numbers


def test_parity_llava_7b_three_runs(ref: Path) -> None:
    caps = load_capabilities(ref / "capability_index.json")
    s = score_mmvet(read_grades(LLAVA / "llava-v1.5-7b_gpt-4-grade-3runs.json"), caps)
    assert (s.num_runs, s.num_questions) == (3, 218)
    assert (round(s.total_mean, 1), round(s.total_std, 1)) == (31.1, 0.2)
    means = {cap: round(m, 1) for cap, (m, _) in s.per_capability.items()}
    assert means == {"rec": 36.8, "ocr": 21.1, "know": 17.3, "gen": 19.9, "spat": 24.9, "math": 7.7}
    assert len(s.per_combination) == 16
    assert sum(s.combination_counts.values()) == 218


def test_parity_llava_13b_three_runs(ref: Path) -> None:
    caps = load_capabilities(ref / "capability_index.json")
    s = score_mmvet(read_grades(LLAVA / "llava-v1.5-13b_gpt-4-grade-3runs.json"), caps)
    assert (round(s.total_mean, 1), round(s.total_std, 1)) == (36.3, 0.2)
    assert len(s.per_combination) == 16


def test_parity_one_run_files(ref: Path) -> None:
    caps = load_capabilities(ref / "capability_index.json")
    for size in ("7b", "13b"):
        s = score_mmvet(read_grades(LLAVA / f"llava-v1.5-{size}_gpt-4-grade-1runs.json"), caps)
        assert s.num_runs == 1 and s.total_std == 0.0 and 30.0 < s.total_mean < 40.0


def test_reference_answers_round_trip(ref: Path, tmp_path: Path) -> None:
    answers = read_answers(LLAVA / "llava-v1.5-7b.json")
    assert set(answers) == set(load_capabilities(ref / "capability_index.json"))
    write_answers(tmp_path / "a.json", answers)
    assert read_answers(tmp_path / "a.json") == answers
    assert len(read_answers(ref / "example_results.json")) == 218


# ---------------------------------------------------------------- the official download


def test_load_mmvet_dir_finds_shared_images(tmp_path: Path) -> None:
    from lightning_aug_dpo.eval import load_mmvet_dir

    rows = _toy_rows()
    rows["v1_2"] = {**rows["v1_0"], "question": "Q2?"}  # shares a.png with v1_0
    (tmp_path / "mm-vet.json").write_text(json.dumps(rows))
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes(b"png")
    bench = load_mmvet_dir(tmp_path)
    assert bench.images["v1_2"] == bench.images["v1_0"] == tmp_path / "images" / "a.png"
    assert list(load_mmvet_dir(tmp_path, limit=2).items) == ["v1_0", "v1_1"]
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png: image of .*row 'v1_0' not found; 2 rows"):
        load_mmvet_dir(tmp_path)
    (tmp_path / "mm-vet.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"mm-vet\.json: MM-Vet question file not found"):
        load_mmvet_dir(tmp_path)


def test_parity_capability_table_and_per_run_totals(ref: Path) -> None:
    caps = load_capabilities(ref / "capability_index.json")
    s = score_mmvet(read_grades(LLAVA / "llava-v1.5-7b_gpt-4-grade-3runs.json"), caps)
    assert len(s.total_per_run) == 3
    assert sum(s.total_per_run) / 3 == pytest.approx(s.total_mean)
    d = s.to_dict()
    # MM-Vet's paper: rec in 68.8% of the 218 questions, ocr in 44.0%, math in 11.9%
    counts = {cap: v["n"] for cap, v in d["capabilities"].items()}
    assert counts == {"rec": 150, "ocr": 96, "know": 84, "gen": 80, "spat": 75, "math": 26}
    assert [round(t, 1) for t in d["total_per_run"]] == [31.2, 30.8, 31.2]
