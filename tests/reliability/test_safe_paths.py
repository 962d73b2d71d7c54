"""Image paths in data files that leave the image folder are refused unless
``data.allow_outside_paths: true``: a prompt or pairs file cannot make a run read any file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_aug_dpo import AugPairDataModule
from lightning_aug_dpo.data.prompts import escapes_folder


@pytest.mark.parametrize(
    ("image", "escapes"),
    [
        ("ocr_vqa/images/1.jpg", False),
        ("./a/../b.png", False),
        ("..hidden/x.png", False),  # a name starting with dots, not a parent folder
        ("../secret.png", True),
        ("a/../../secret.png", True),
        ("/etc/passwd", True),
        ("C:\\\\Windows\\\\x.png", True),
    ],
)
def test_escapes_folder(image: str, escapes: bool) -> None:
    assert escapes_folder(image) is escapes


def write_prompts(tmp_path: Path) -> Path:
    rows = [
        {"image": "ok.png", "text": "What is this?"},
        {"image": "../outside.png", "text": "And this?"},
        {"image": "/etc/hostname", "text": "And this?"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_error_names_file_line_and_fix(tmp_path: Path) -> None:
    dm = AugPairDataModule(data_path=str(write_prompts(tmp_path)), image_folder=str(tmp_path))
    with pytest.raises(ValueError, match=r"prompts.jsonl: line 2: image path '../outside.png' "
                       r"leaves data.image_folder .*allow_outside_paths: true"):  # fmt: skip
        dm.setup("fit")


def test_skip_counts_them_and_allow_keeps_them(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path)
    dm = AugPairDataModule(
        data_path=str(prompts), image_folder=str(tmp_path), on_bad_image="skip"
    )
    dm.setup("fit")
    assert [p.image for p in dm.train_prompts] == ["ok.png"]
    assert [n for n, _ in dm.bad_rows] == [2, 3]
    trusted = AugPairDataModule(
        data_path=str(prompts), image_folder=str(tmp_path), allow_outside_paths=True
    )
    trusted.setup("fit")
    assert len(trusted.train_prompts) == 3


def test_pairs_files_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    row = {"id": "a", "image": "/etc/hostname", "prompt": "q", "chosen": "x", "rejected": "y"}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl: line 1: image path '/etc/hostname'"):
        AugPairDataModule(pairs_path=str(path), image_folder=str(tmp_path)).setup("fit")
