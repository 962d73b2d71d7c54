"""Tests for the synthetic LLaVA-format dataset and MM-Vet-format benchmark writers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lightning_aug_dpo.data import synthetic as syn

PREFIXES = ("coco/train2017/", "ocr_vqa/images/", "textvqa/train_images/")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _nearest_color(pixel: tuple[int, int, int]) -> str:
    def dist(name: str) -> int:
        return sum((a - b) ** 2 for a, b in zip(syn.COLORS[name], pixel, strict=True))

    return min(syn.COLORS, key=dist)


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    json_path = syn.write_llava_dataset(tmp_path_factory.mktemp("llava"), num_images=24, seed=0)
    return json_path, json.loads(json_path.read_text(encoding="utf-8"))


def test_llava_rows_schema(llava: tuple[Path, list[dict]]) -> None:
    json_path, rows = llava
    assert json_path.name == "llava_mix.json"
    assert isinstance(rows, list) and len(rows) == 24
    assert len({r["id"] for r in rows}) == 24
    for row in rows:
        assert set(row) == {"id", "image", "conversations"}
        assert isinstance(row["id"], str) and row["image"].endswith(".png")
        conv = row["conversations"]
        assert len(conv) >= 2 and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert all(set(t) == {"from", "value"} and t["value"].strip() for t in conv)
        assert conv[0]["value"].startswith("<image>\n")
        # Only the first human turn carries the image token, as in LLaVA-1.5's mix.
        assert sum("<image>" in t["value"] for t in conv) == 1


def test_llava_images_exist_rgb_non_square(llava: tuple[Path, list[dict]]) -> None:
    json_path, rows = llava
    for row in rows:
        path = json_path.parent / "images" / row["image"]
        assert path.is_file(), path
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            w, h = img.size
        assert w != h and 48 <= w <= 128 and 48 <= h <= 128


def test_llava_prefix_mix(llava: tuple[Path, list[dict]]) -> None:
    _, rows = llava
    counts = {p: sum(r["image"].startswith(p) for r in rows) for p in PREFIXES}
    assert counts == {"coco/train2017/": 12, "ocr_vqa/images/": 6, "textvqa/train_images/": 6}


def test_ocr_vqa_and_textvqa_rows(llava: tuple[Path, list[dict]]) -> None:
    _, rows = llava
    for row in rows:
        human = [t["value"] for t in row["conversations"][::2]]
        gpt = [t["value"] for t in row["conversations"][1::2]]
        if row["image"].startswith("ocr_vqa/"):
            assert len(human) == 2
            assert all(
                q.endswith("\nAnswer the question using a single word or phrase.") for q in human
            )
            asked = {q.removeprefix("<image>\n").split("\n")[0] for q in human}
            assert asked == {"Who is the author of this book?", "What is the title of this book?"}
            assert all(a.isupper() for a in gpt)
        elif row["image"].startswith("textvqa/"):
            assert len(human) == 1
            m = re.fullmatch(
                r"<image>\nProvide a one-sentence caption for the provided image\.\n"
                r"Reference OCR token: ([A-Z]+(?:, [A-Z]+)*)",
                human[0],
            )
            assert m, human[0]
            assert all(f'"{w}"' in gpt[0] for w in m.group(1).split(", "))


def test_answers_match_rendered_pixels(llava: tuple[Path, list[dict]]) -> None:
    json_path, rows = llava
    samples = syn.build_llava_samples(num_images=24, seed=0)
    assert [s.record for s in samples] == rows  # the in-memory record is what was written
    checked = 0
    for sample in samples:
        with Image.open(json_path.parent / "images" / sample.image_path) as img:
            img = img.convert("RGB")
        for shape in sample.scene.shapes:  # every shape has its named colour at its centre
            assert _nearest_color(img.getpixel((shape.cx, shape.cy))) == shape.color
        conv = sample.record["conversations"]
        for q, a in zip(conv[::2], conv[1::2], strict=True):
            m = re.search(r"What color is the (\w+)\?", q["value"])
            if m:
                (shape,) = [s for s in sample.scene.shapes if s.kind == m.group(1)]
                assert _nearest_color(img.getpixel((shape.cx, shape.cy))) == a["value"]
                checked += 1
            m = re.search(r"Is the (\w+) to the left of the (\w+)\?", q["value"])
            if m:
                (left,) = [s for s in sample.scene.shapes if s.kind == m.group(1)]
                (right,) = [s for s in sample.scene.shapes if s.kind == m.group(2)]
                assert a["value"] == ("Yes" if left.cx < right.cx else "No")
            if q["value"].endswith("How many shapes are there?"):
                assert a["value"] == str(len(sample.scene.shapes))
    assert checked > 0


def test_llava_deterministic(tmp_path: Path) -> None:
    a = syn.write_llava_dataset(tmp_path / "a", num_images=8, seed=5)
    b = syn.write_llava_dataset(tmp_path / "b", num_images=8, seed=5)
    c = syn.write_llava_dataset(tmp_path / "c", num_images=8, seed=6)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = json.loads(a.read_text(encoding="utf-8"))
    for row in rows[:4]:
        rel = Path("images") / row["image"]
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    # Rewriting into an existing folder overwrites cleanly with the same bytes.
    again = syn.write_llava_dataset(tmp_path / "a", num_images=8, seed=5)
    assert again.read_bytes() == b.read_bytes()


def test_mmvet_benchmark(tmp_path: Path) -> None:
    json_path = syn.write_mmvet_benchmark(tmp_path, num_questions=14, seed=1)
    assert json_path == tmp_path / "mm-vet.json"
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert list(data) == [f"v1_{i}" for i in range(14)]
    for key, item in data.items():
        assert set(item) == {"imagename", "question", "answer", "capability"}
        assert item["imagename"] == f"{key}.png"
        assert item["question"].strip() and item["answer"].strip()
        assert item["capability"] and set(item["capability"]) <= set(syn.MMVET_CAPABILITIES)
        with Image.open(tmp_path / "images" / item["imagename"]) as img:
            assert img.mode == "RGB" and img.width != img.height
        if item["question"].startswith("How many"):
            number, word = item["answer"].split("<OR>")
            assert syn.NUMBER_WORDS[int(number)] == word
    answers = [item["answer"] for item in data.values()]
    assert any("<AND>" in a for a in answers) and any("<OR>" in a for a in answers)
    caps = {c for item in data.values() for c in item["capability"]}
    assert caps == set(syn.MMVET_CAPABILITIES)


def test_mmvet_answers_match_scenes() -> None:
    for sample in syn.build_mmvet_samples(num_questions=14, seed=3):
        rec, shapes = sample.record, sample.scene.shapes
        if rec["question"] == "Which shape is on the left?":
            assert rec["answer"] == min(shapes, key=lambda s: s.cx).kind
        elif rec["question"] == "What shapes are in the image?":
            assert set(rec["answer"].split("<AND>")) == {s.kind for s in shapes}
        elif rec["question"].startswith("How many "):
            kind = rec["question"].split()[2].rstrip("s")
            assert rec["answer"].split("<OR>")[0] == str(sample.scene.count(kind))
        elif rec["question"] == "What word is written?":
            assert [t[0] for t in sample.scene.texts] == [rec["answer"]]


def test_mmvet_deterministic(tmp_path: Path) -> None:
    a = syn.write_mmvet_benchmark(tmp_path / "a", num_questions=7, seed=2)
    b = syn.write_mmvet_benchmark(tmp_path / "b", num_questions=7, seed=2)
    c = syn.write_mmvet_benchmark(tmp_path / "c", num_questions=7, seed=9)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    for i in range(3):
        name = f"images/v1_{i}.png"
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path), "--num-images", "8", "--num-questions", "5", "--seed", "3"]
    assert syn.main(argv) == 0
    out = capsys.readouterr().out
    llava_json, mmvet_json = (
        tmp_path / "llava" / "llava_mix.json",
        tmp_path / "mmvet" / "mm-vet.json",
    )
    assert str(llava_json) in out and str(mmvet_json) in out
    assert len(json.loads(llava_json.read_text(encoding="utf-8"))) == 8
    assert len(json.loads(mmvet_json.read_text(encoding="utf-8"))) == 5
    assert (tmp_path / "llava" / "images").is_dir() and (tmp_path / "mmvet" / "images").is_dir()


def test_cli_module_entry_point(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "lightning_aug_dpo.data.synthetic",
        str(tmp_path),
        "--num-images",
        "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "llava" / "llava_mix.json").is_file()
    assert len(json.loads((tmp_path / "mmvet" / "mm-vet.json").read_text(encoding="utf-8"))) == 24
