"""SeVa's prompt recipe: sampling OCR-VQA and TextCaps prompts from a LLaVA-665k-format list."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


# ----------------------------------------------------------------- --check: the images
OCR_OK, TC_OK = ("ocr_vqa/images/1.jpg", "ocr_vqa/images/2.jpg"), "textvqa/train_images/00aa.jpg"


def _image_folder(tmp_path: Path) -> tuple[Path, Path]:
    """An image folder in LLaVA's layout: OCR-VQA covers 1 and 2 present, 3 missing (used by
    two prompts); TextVQA image 00aa fine, 00bb cut short mid-data, 00cc a text file. Returns
    (folder, prompt list)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for name in (*OCR_OK, TC_OK, "textvqa/train_images/00bb.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise).save(folder / name, quality=95)
    cut = folder / "textvqa/train_images/00bb.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])  # the header survives
    (folder / "textvqa/train_images/00cc.jpg").write_text("<html>404</html>")
    images = [*OCR_OK, "ocr_vqa/images/3.jpg", "ocr_vqa/images/3.jpg", TC_OK]
    images += ["textvqa/train_images/00bb.jpg", "textvqa/train_images/00cc.jpg"]
    prompts = tmp_path / "prompts.jsonl"
    write_prompt_list([{"image": i, "text": f"q {k}"} for k, i in enumerate(images)], prompts)
    return folder, prompts


def test_check_lists_missing_and_unreadable_images(tmp_path: Path) -> None:
    folder, prompts = _image_folder(tmp_path)
    command = [
        sys.executable,
        "-m",
        "lightning_aug_dpo.data.seva_recipe",
        "--check",
        "--image-folder",
        str(folder),
        "--prompts",
        str(prompts),
        "--workers",
        "2",
    ]
    root = str(Path(__file__).resolve().parents[1])  # the checkout, installed or not
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        rf"checked 6 images for 7 prompts under {re.escape(str(folder))} in [\d.]+ s: "
        r"3 missing or unreadable",
        lines[0],
    )
    assert lines[1:4] == [
        "  ocrvqa (ocr_vqa/images/): 3 images, 1 missing, 0 unreadable",
        "  textcaps (textvqa/train_images/): 3 images, 0 missing, 2 unreadable",
        "first 3 of 3:",
    ]
    assert lines[4] == f"  {folder / 'ocr_vqa/images/3.jpg'}: missing (2 prompts)"
    assert lines[5].startswith(f"  {folder / 'textvqa/train_images/00bb.jpg'}: truncated")
    assert lines[6] == f"  {folder / 'textvqa/train_images/00cc.jpg'}: not an image"
    fixes = " ".join(" ".join(lines[7:]).split())
    assert lines[7] == "fix:" and "OCR-VQA download script" in fixes
    assert "textvqa.org" in fixes and "train_val_images.zip" in fixes
    assert "data.on_bad_image: skip" in fixes


def test_check_passes_a_complete_folder_and_headers_only_misses_truncation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = _image_folder(tmp_path)
    rows = [{"image": i, "text": "q"} for i in (*OCR_OK, TC_OK)]
    good = write_prompt_list(rows, tmp_path / "good.jsonl")
    args = ["--check", "--image-folder", str(folder), "--show", "1"]
    assert main([*args, "--prompts", str(good)]) == 0
    out = capsys.readouterr().out
    assert "3 images for 3 prompts" in out and "all images present and readable" in out
    # Headers only: the file cut short mid-data passes, the text file does not.
    cut = write_prompt_list(
        [{"image": i, "text": "q"} for i in ("textvqa/train_images/00bb.jpg", "x/1.png")],
        tmp_path / "c.jsonl",
    )
    assert main([*args, "--prompts", str(cut), "--headers-only"]) == 1
    out = capsys.readouterr().out
    assert "  textcaps (textvqa/train_images/): 1 images, 0 missing, 0 unreadable" in out
    assert "  other (other paths): 1 images, 1 missing, 0 unreadable" in out
    assert "first 1 of 1:" in out and "fix the image paths in the prompt file" in out
    # Progress goes to stderr for long lists (here: every 2 images).
    import lightning_aug_dpo.data.recipe_images as recipe_images
    import lightning_aug_dpo.data.seva_recipe as seva_recipe

    monkeypatch.setattr(recipe_images, "PROGRESS_EVERY", 2)
    monkeypatch.setattr(seva_recipe, "PROGRESS_EVERY", 2)
    assert main([*args, "--prompts", str(good)]) == 0
    assert "checked 2/3 images (0 problems so far)" in capsys.readouterr().err


def test_check_of_the_recipe_sampled_from_the_llava_json(
    llava_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--llava-json", str(llava_json), "--ocrvqa-images", "3", "--textcaps-images", "2"]
    assert main([*argv, "--check", "--image-folder", str(empty)]) == 1
    out = capsys.readouterr().out
    assert "checked 5 images for 8 prompts" in out  # 3 covers x 2 questions + 2 captions
    assert "  ocrvqa (ocr_vqa/images/): 3 images, 3 missing, 0 unreadable" in out
    flat = " ".join(out.split())  # the fixes are wrapped at 100 columns
    assert f"textcaps ({empty / 'textvqa/train_images'} does not exist): TextVQA" in flat
    # Writing with --image-folder checks what was written, after writing it.
    out_file = tmp_path / "p.jsonl"
    assert main([*argv, "--out", str(out_file), "--image-folder", str(empty)]) == 1
    assert len(out_file.read_text().splitlines()) == 8
    assert "5 missing or unreadable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--check", "--prompts", "p.jsonl"], "--check needs --image-folder"),
        (["--check", "--image-folder", "."], "one of --prompts / --llava-json"),
        (["--check", "--image-folder", "nowhere", "--prompts", "p"], "nowhere is not a folder"),
        (["--check", "--image-folder", ".", "--prompts", "none.jsonl"], "none.jsonl: prompt file"),
        (["--out", "x.jsonl"], "--llava-json and --out are required"),
    ],
)
def test_check_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_subsets_of_image_paths() -> None:
    from lightning_aug_dpo.data.recipe_images import subset_of

    # LLaVA's folders, and SeVa's bare names: ISBN / ASIN covers, 16-hex TextVQA ids.
    assert [subset_of(p) for p in ("ocr_vqa/images/9.jpg", "textvqa/train_images/a.jpg")] == [
        "ocrvqa", "textcaps",
    ]  # fmt: skip
    assert [subset_of(p) for p in ("962850500.jpg", "037575945X.jpg", "B014EFLPGE.jpg")] == [
        "ocrvqa"
    ] * 3
    assert subset_of("d9eaf28c4d3f65b1.jpg") == "textcaps"
    assert [subset_of(p) for p in ("coco/train2017/1.jpg", "photo.jpg")] == ["other", "other"]
