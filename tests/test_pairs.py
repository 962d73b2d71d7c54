"""Loading preference-pair files (this project's, SeVa's, TRL's) and SeVa's x2 repetition."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_aug_dpo.callbacks.pairs_writer import PairsWriter
from lightning_aug_dpo.data.pairs import Pair, load_pairs, repeat_pairs

RECORD = {
    "preset": "diffusion",
    "noise_step": 500,
    "num_steps": 1000,
    "space": "normalized",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "seed": 1234,
}


def _jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ours(i: int, **extra) -> dict:
    row = {
        "id": f"p{i}",
        "image": f"ocr_vqa/images/{i}.jpg",
        "prompt": f"Who wrote book {i}?",
        "chosen": f"Author {i}.",
        "rejected": "Ünknown — unclear.",
        "augmentation": RECORD,
    }
    return {**row, **extra}


def test_pairs_writer_file_round_trips(tmp_path: Path) -> None:
    rows = [_ours(0), _ours(1, augmentation=None), _ours(2, chosen="")]
    writer = PairsWriter(str(tmp_path / "out" / "pairs.jsonl"))
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    writer.on_predict_start(trainer, None)
    writer.write_on_batch_end(trainer, None, rows[:2], None, None, 0, 0)
    writer.write_on_batch_end(trainer, None, rows[2:], None, None, 1, 0)
    source = load_pairs(tmp_path / "out" / "pairs.jsonl")
    assert source.format == "aug_dpo" and source.skipped == []
    assert source.pairs == [Pair(**row) for row in rows]
    assert source.pairs[0].augmentation == RECORD


def test_seva_pairs_json_list_and_jsonl(tmp_path: Path) -> None:
    rows = [
        {
            "chosen": ["The author is Ann Lee."],
            "reject": ["The author is Tom Day."],
            "question": "<image>\nWho is the author of this book?",
            "image_id": "962850500.jpg",
        },
        {
            "chosen": "A red sign that says STOP.",
            "reject": "A sign.",
            "question": "Provide a one-sentence caption for the provided image.\n<image>",
            "image_id": "d9eaf28c4d3f65b1.jpg",
        },
    ]
    as_list = tmp_path / "seva_pairs.json"
    as_list.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    expected = [
        Pair(
            "seva_pairs:1",
            "962850500.jpg",
            "Who is the author of this book?",
            "The author is Ann Lee.",
            "The author is Tom Day.",
            None,
        ),
        Pair(
            "seva_pairs:2",
            "d9eaf28c4d3f65b1.jpg",
            "Provide a one-sentence caption for the provided image.",
            "A red sign that says STOP.",
            "A sign.",
            None,
        ),
    ]
    source = load_pairs(as_list)
    assert source.format == "seva" and source.pairs == expected
    # JSONL: the default id is the 1-based line number, blank lines included in the count.
    as_jsonl = _jsonl(tmp_path / "seva_pairs.jsonl", [rows[0], "", rows[1]])
    assert [p.id for p in load_pairs(as_jsonl).pairs] == ["seva_pairs:1", "seva_pairs:3"]


def test_trl_plain_and_conversational(tmp_path: Path) -> None:
    plain = {
        "image": "a.jpg",
        "prompt": "<image>What is this?",
        "chosen": "A cat.",
        "rejected": "A dog.",
    }
    conversational = {
        "images": ["b.jpg"],
        "prompt": [
            {"role": "system", "content": "You are helpful."},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}],
            },
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Two cats."}]}],
        "rejected": [{"role": "assistant", "content": "Three dogs."}],
    }
    path = tmp_path / "trl.json"
    path.write_text(json.dumps([plain, conversational]), encoding="utf-8")
    source = load_pairs(path)
    assert source.format == "trl"
    assert source.pairs == [
        Pair("trl:1", "a.jpg", "What is this?", "A cat.", "A dog.", None),
        Pair("trl:2", "b.jpg", "Describe the image.", "Two cats.", "Three dogs.", None),
    ]
    path = _jsonl(tmp_path / "trl.jsonl", [plain, {**plain, "id": "x7"}])
    assert [p.id for p in load_pairs(path).pairs] == ["trl:1", "x7"]


def test_trl_more_than_one_image_is_an_error(tmp_path: Path) -> None:
    row = {"images": ["a.jpg"], "prompt": "Q?", "chosen": "A", "rejected": "B"}
    path = _jsonl(tmp_path / "multi.jsonl", [row, {**row, "images": ["a.jpg", "b.jpg"]}])
    with pytest.raises(ValueError, match=r"multi\.jsonl: line 2: 2 images in one row"):
        load_pairs(path)
    source = load_pairs(path, on_bad_row="skip")
    assert len(source.pairs) == 1 and source.skipped[0][0] == 2


def test_bad_rows_error_with_line_numbers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [_ours(0), "{not json", _ours(2)])
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: not valid JSON.*fix or remove"):
        load_pairs(path)
    missing = _ours(1)
    del missing["rejected"], missing["augmentation"]  # now keys of no known format
    path = _jsonl(tmp_path / "miss.jsonl", [_ours(0), missing])
    with pytest.raises(ValueError, match=r"miss\.jsonl: line 2: missing 'rejected'.*aug_dpo"):
        load_pairs(path)
    path = _jsonl(tmp_path / "unknown.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(ValueError, match=r"line 1: keys \['answer', 'question'\] match no"):
        load_pairs(path)
    path = tmp_path / "list.json"
    path.write_text(json.dumps([_ours(0), {**_ours(1), "augmentation": "noise"}]))
    with pytest.raises(ValueError, match=r"list\.json: row 2: 'augmentation' must be"):
        load_pairs(path)
    with pytest.raises(ValueError, match="on_bad_row"):
        load_pairs(path, on_bad_row="ignore")  # type: ignore[arg-type]


def test_skip_collects_line_and_reason(tmp_path: Path) -> None:
    seva = {"chosen": "A", "reject": "B", "question": "Q?", "image_id": "1.jpg"}
    rows = [
        "[1, 2",  # starts like a list but is one bad JSONL line
        seva,
        {**seva, "chosen": ["A", "B"]},
        {k: v for k, v in seva.items() if k != "image_id"},
        _ours(5),  # a file's format is fixed by its first good row: this one lacks SeVa keys
        {**seva, "question": "<image>"},
        seva,
    ]
    path = _jsonl(tmp_path / "mixed.jsonl", rows)
    source = load_pairs(path, on_bad_row="skip")
    assert source.format == "seva"
    assert [p.id for p in source.pairs] == ["mixed:2", "mixed:7"]
    assert [line for line, _ in source.skipped] == [1, 3, 4, 5, 6]
    reasons = dict(source.skipped)
    assert "not valid JSON" in reasons[1] and "one-element list" in reasons[3]
    assert "missing 'image_id'" in reasons[4] and "'reject'" in reasons[5]
    assert "prompt is empty" in reasons[6]


def test_broken_json_list_always_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"chosen": "A",\n  oops\n]')
    with pytest.raises(ValueError, match=r"broken\.json: line 3 is not valid JSON"):
        load_pairs(path, on_bad_row="skip")
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "absent.jsonl")


def test_empty_file_gives_no_pairs(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert load_pairs(path).pairs == [] and load_pairs(path).format is None


def test_repeat_pairs() -> None:
    pairs = [Pair(str(i), f"{i}.jpg", "Q?", "A", "B", None) for i in range(3)]
    twice = repeat_pairs(pairs, 2)
    assert [p.id for p in twice] == ["0", "1", "2", "0", "1", "2"]
    assert repeat_pairs(pairs, 2) == twice and repeat_pairs(pairs, 1) == pairs
    with pytest.raises(ValueError, match="times must be >= 1"):
        repeat_pairs(pairs, 0)
