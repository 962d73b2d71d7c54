"""SeVa's prompt recipe: sampling OCR-VQA and TextCaps prompts from a LLaVA-665k-format list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_aug_dpo.data.prompts import load_jsonl_prompts
from lightning_aug_dpo.data.seva_recipe import (
    SHORT_ANSWER_SUFFIX,
    main,
    sample_seva_prompts,
    write_prompt_list,
)

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
TEXTCAPS_PROMPT = "Provide a one-sentence caption for the provided image.\nReference OCR token: "
N_OCR, N_TEXTCAPS = 30, 25


def _conv(questions: list[str]) -> list[dict[str, str]]:
    turns = []
    for q in questions:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": "ANSWER-NEVER-READ"}]
    return turns


def _ocr_row(i: int) -> dict:
    # Four human turns, like LLaVA-665k's OCR-VQA rows; most with the short-answer suffix
    # (joined by a newline), one with a space, one without.
    questions = [
        f"<image>\nWho wrote book {i}?\n{SHORT_ANSWER_SUFFIX}",
        f"What is the title of book {i}? {SHORT_ANSWER_SUFFIX}",
        f"Is book {i} a novel?",
        f"What is the genre of book {i}?\n{SHORT_ANSWER_SUFFIX}",
    ]
    return {
        "id": f"ocr{i}",
        "image": f"ocr_vqa/images/{1000 + i}.jpg",
        "conversations": _conv(questions),
    }


def _textcaps_row(i: int) -> dict:
    question = f"<image>\n{TEXTCAPS_PROMPT}WORD{i}, SIGN"
    return {
        "id": f"tc{i}",
        "image": f"textvqa/train_images/{i:016x}.jpg",
        "conversations": _conv([question]),
    }


def _fixture_rows() -> list[dict]:
    rows: list[dict] = []
    for i in range(max(N_OCR, N_TEXTCAPS)):
        if i < N_OCR:
            rows.append(_ocr_row(i))
        if i < N_TEXTCAPS:
            rows.append(_textcaps_row(i))
        # Rows that must be ignored: COCO images and text-only ShareGPT conversations.
        rows.append(
            {
                "id": f"coco{i}",
                "image": f"coco/train2017/{i:012d}.jpg",
                "conversations": _conv(["<image>\nWhat is in the picture?"]),
            }
        )
        rows.append({"id": f"text{i}", "conversations": _conv(["Tell me a joke."])})
    return rows


@pytest.fixture
def llava_json(tmp_path: Path) -> Path:
    path = tmp_path / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(_fixture_rows()), encoding="utf-8")
    return path


def _sample(source, seed: int = 0, **kwargs):
    kwargs.setdefault("ocrvqa_images", 10)
    kwargs.setdefault("textcaps_images", 8)
    return sample_seva_prompts(source, seed=seed, **kwargs)


def test_counts_and_per_image_cap(llava_json: Path) -> None:
    prompts = _sample(llava_json)
    assert list(prompts) == ["ocrvqa", "textcaps"]
    ocr, textcaps = prompts["ocrvqa"], prompts["textcaps"]
    assert len(ocr) == 20 and len({r["image"] for r in ocr}) == 10
    assert len(textcaps) == 8 and len({r["image"] for r in textcaps}) == 8
    # At most two questions per image, and an image's questions are consecutive like SeVa's file.
    for k in range(0, len(ocr), 2):
        assert ocr[k]["image"] == ocr[k + 1]["image"]
    assert all(r["image"].startswith("ocr_vqa/images/") for r in ocr)
    assert all(r["image"].startswith("textvqa/train_images/") for r in textcaps)
    counts = prompts.available
    assert counts["ocrvqa"].images_available == N_OCR
    assert counts["ocrvqa"].questions_available == 4 * N_OCR
    assert counts["textcaps"].images_available == N_TEXTCAPS
    assert (counts["ocrvqa"].prompts, counts["textcaps"].images_sampled) == (20, 8)


def test_questions_are_cleaned(llava_json: Path) -> None:
    prompts = _sample(llava_json, ocrvqa_questions_per_image=4)
    texts = [r["text"] for rows in prompts.values() for r in rows]
    assert all("<image>" not in t and "single word" not in t for t in texts)
    assert all(t == t.strip() for t in texts)
    by_image: dict[str, list[str]] = {}
    for row in prompts["ocrvqa"]:
        by_image.setdefault(row["image"], []).append(row["text"])
    i = int(Path(next(iter(by_image))).stem) - 1000
    # Every human turn is used (not only the first), in conversation order.
    assert by_image[f"ocr_vqa/images/{1000 + i}.jpg"] == [
        f"Who wrote book {i}?",
        f"What is the title of book {i}?",
        f"Is book {i} a novel?",
        f"What is the genre of book {i}?",
    ]
    assert all(r["text"].startswith(TEXTCAPS_PROMPT) for r in prompts["textcaps"])
    assert not any(r["text"].startswith("What is in the") for r in prompts["ocrvqa"])


def test_suffix_can_be_kept(llava_json: Path) -> None:
    prompts = _sample(llava_json, strip_suffix=None, subsets=("ocrvqa",))
    assert list(prompts) == ["ocrvqa"]
    assert any(r["text"].endswith(SHORT_ANSWER_SUFFIX) for r in prompts["ocrvqa"])


def test_seeded_and_independent_of_row_order(llava_json: Path) -> None:
    rows = _fixture_rows()
    first = _sample(llava_json, seed=3)
    assert _sample(llava_json, seed=3) == first
    assert _sample(list(reversed(rows)), seed=3) == first  # the draw ignores the JSON's order
    other = _sample(rows, seed=4)
    assert {r["image"] for r in other["ocrvqa"]} != {r["image"] for r in first["ocrvqa"]}
    assert {r["image"] for r in other["textcaps"]} != {r["image"] for r in first["textcaps"]}
    # One subset's count does not change the other's selection.
    assert _sample(rows, seed=3, ocrvqa_images=5)["textcaps"] == first["textcaps"]


def test_random_question_order_still_caps(llava_json: Path) -> None:
    prompts = _sample(llava_json, question_order="random")
    assert len(prompts["ocrvqa"]) == 20
    assert _sample(llava_json, question_order="random") == prompts


def test_counts_are_capped_with_a_warning(llava_json: Path) -> None:
    with pytest.warns(UserWarning, match="only 30 available"):
        prompts = _sample(llava_json, ocrvqa_images=4000, textcaps_images=0)
    assert len(prompts["ocrvqa"]) == 2 * N_OCR and prompts["textcaps"] == []


def test_bad_arguments_and_rows(tmp_path: Path) -> None:
    rows = _fixture_rows()
    with pytest.raises(ValueError, match="unknown subsets"):
        _sample(rows, subsets=("coco",))
    with pytest.raises(ValueError, match="ocrvqa_questions_per_image"):
        _sample(rows, ocrvqa_questions_per_image=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([*rows, {"id": "x", "image": "ocr_vqa/images/9.jpg"}]))
    with pytest.raises(ValueError, match=r"bad\.json: row \d+ \(id 'x'\).*fix or remove"):
        _sample(bad)


def test_written_file_loads_as_prompts(llava_json: Path, tmp_path: Path) -> None:
    prompts = _sample(llava_json)
    path = write_prompt_list(prompts["ocrvqa"] + prompts["textcaps"], tmp_path / "p.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 28 and all(list(json.loads(x)) == ["image", "text"] for x in lines)
    loaded = load_jsonl_prompts(path).prompts
    assert [(p.image, p.question) for p in loaded] == [
        (r["image"], r["text"]) for r in prompts["ocrvqa"] + prompts["textcaps"]
    ]


def test_cli_writes_combined_and_subset_files(
    llava_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, ocr_out, tc_out = tmp_path / "out/all.jsonl", tmp_path / "o.jsonl", tmp_path / "t.jsonl"
    argv = [
        "--llava-json", str(llava_json), "--out", str(out), "--ocrvqa-images", "6",
        "--textcaps-images", "4", "--seed", "1", "--basename-only",
        "--ocrvqa-out", str(ocr_out), "--textcaps-out", str(tc_out),
    ]  # fmt: skip
    assert main(argv) == 0
    combined = [json.loads(x) for x in out.read_text().splitlines()]
    ocr = [json.loads(x) for x in ocr_out.read_text().splitlines()]
    textcaps = [json.loads(x) for x in tc_out.read_text().splitlines()]
    assert combined == ocr + textcaps and (len(ocr), len(textcaps)) == (12, 4)
    assert all("/" not in r["image"] for r in combined)
    printed = capsys.readouterr().out
    assert "ocrvqa: 12 prompts from 6 images (30 images, 120 questions available)" in printed
    assert f"wrote {out}: 16 prompts" in printed


def _reference_rows(name: str, n: int = 50) -> list[dict]:
    path = REFERENCE_DIR / "seva" / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with path.open(encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_basename_only_matches_reference_format(llava_json: Path, tmp_path: Path) -> None:
    ref_ocr = _reference_rows("ocrvqa_prompts_8k.jsonl")
    ref_tc = _reference_rows("textcaps_prompts_8k.jsonl")
    prompts = _sample(llava_json, basename_only=True)
    bare = re.compile(r"^[^/\\]+\.jpg$")
    for ours, ref in ((prompts["ocrvqa"], ref_ocr), (prompts["textcaps"], ref_tc)):
        assert {tuple(r) for r in ours} == {tuple(r) for r in ref} == {("image", "text")}
        assert all(bare.match(r["image"]) for r in ours + ref)
        assert all("<image>" not in r["text"] and "single word" not in r["text"] for r in ref)
    # Same shape as SeVa's files: OCR-VQA images come in consecutive pairs of questions.
    assert [r["image"] for r in ref_ocr[::2]] == [r["image"] for r in ref_ocr[1::2]]
    assert all(r["text"].startswith(TEXTCAPS_PROMPT) for r in ref_tc + prompts["textcaps"])
    # Byte-level layout of a written line matches the reference file's.
    path = write_prompt_list(ref_tc[:3], tmp_path / "tc.jsonl")
    with (REFERENCE_DIR / "seva" / "textcaps_prompts_8k.jsonl").open(encoding="utf-8") as f:
        assert path.read_text(encoding="utf-8").splitlines() == [
            next(f).rstrip("\n") for _ in "abc"
        ]
