"""Reading LLaVA-665k-format prompts, splitting them, decoding images, per-sample seeds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_aug_dpo.data.datamodule import sample_seed
from lightning_aug_dpo.data.prompts import (
    Prompt,
    PromptDataset,
    collate_prompts,
    load_llava_prompts,
    split_prompts,
)
from lightning_aug_dpo.types import PromptBatch


def _row(row_id, image="coco/train2017/000000033471.jpg", question="<image>\nWhat is this?"):
    return {
        "id": row_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": "An answer that must never be read."},
        ],
    }


def _write(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- load_llava_prompts


def test_load_first_human_turn(tmp_path):
    rows = [
        _row("000000033471", question="<image>\nWhat are the colors of the bus in the image?"),
        _row(12345, image="gqa/images/2354786.jpg", question="  Is the sky blue?\n<image>  "),
        {
            "id": "sharegpt-1",
            "conversations": [
                {"from": "human", "value": "Write a poem."},
                {"from": "gpt", "value": "..."},
            ],
        },
        _row("ocr-7", image="ocr_vqa/images/1.jpg", question="What is the title?<image>"),
    ]
    rows[0]["conversations"] += [
        {"from": "human", "value": "A second question that is not used"},
        {"from": "gpt", "value": "..."},
    ]
    source = load_llava_prompts(_write(tmp_path / "mix.json", rows))
    assert source.skipped_text_only == 1
    assert source.prompts == [
        Prompt(
            "000000033471",
            "coco/train2017/000000033471.jpg",
            "What are the colors of the bus in the image?",
        ),
        Prompt("12345", "gqa/images/2354786.jpg", "Is the sky blue?"),
        Prompt("ocr-7", "ocr_vqa/images/1.jpg", "What is the title?"),
    ]
    assert all(isinstance(p.id, str) for p in source.prompts)


def test_load_accepts_str_path_and_empty_list(tmp_path):
    path = _write(tmp_path / "empty.json", [])
    source = load_llava_prompts(str(path))
    assert source.prompts == [] and source.skipped_text_only == 0


def test_load_only_text_rows(tmp_path):
    rows = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "hi"}]} for i in range(3)]
    source = load_llava_prompts(_write(tmp_path / "text.json", rows))
    assert source.prompts == [] and source.skipped_text_only == 3


_BROKEN_ROWS = {
    "missing conversations": {"id": "bad-id", "image": "a.jpg"},
    "empty conversations": {"id": "bad-id", "image": "a.jpg", "conversations": []},
    "first turn from gpt": {
        "id": "bad-id",
        "image": "a.jpg",
        "conversations": [{"from": "gpt", "value": "<image>\nhello"}],
    },
    "first turn without value": {
        "id": "bad-id",
        "image": "a.jpg",
        "conversations": [{"from": "human"}],
    },
    "empty question": _row("bad-id", question="<image>\n   "),
}


@pytest.mark.parametrize("case", sorted(_BROKEN_ROWS))
def test_load_broken_row_names_path_row_and_id(tmp_path, case):
    path = _write(tmp_path / "broken.json", [_row("good"), _BROKEN_ROWS[case]])
    with pytest.raises(ValueError) as info:
        load_llava_prompts(path)
    message = str(info.value)
    assert str(path) in message
    assert "row 1" in message
    assert "bad-id" in message


def test_load_non_object_row(tmp_path):
    path = _write(tmp_path / "broken.json", [_row("good"), "not an object"])
    with pytest.raises(ValueError) as info:
        load_llava_prompts(path)
    assert str(path) in str(info.value) and "row 1" in str(info.value)


def test_load_invalid_json(tmp_path):
    path = tmp_path / "invalid.json"
    path.write_text('[{"id": "x", "image": ', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_llava_prompts(path)
    assert str(path) in str(info.value)


def test_load_not_a_list(tmp_path):
    path = _write(tmp_path / "object.json", {"id": "x", "image": "a.jpg"})
    with pytest.raises(ValueError) as info:
        load_llava_prompts(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError) as info:
        load_llava_prompts(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- split_prompts


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(str(i), f"{i}.jpg", f"question {i}") for i in range(n)]


def test_split_deterministic_disjoint_counts():
    prompts = _prompts(20)
    train, val = split_prompts(prompts, 5, 3, seed=0)
    train2, val2 = split_prompts(prompts, 5, 3, seed=0)
    assert (train, val) == (train2, val2)
    assert len(train) == 5 and len(val) == 3
    ids_train, ids_val = {p.id for p in train}, {p.id for p in val}
    assert len(ids_train) == 5 and len(ids_val) == 3
    assert not ids_train & ids_val
    assert ids_train | ids_val <= {p.id for p in prompts}
    # independent of the seeded shuffle: same order as random.Random(seed).shuffle
    order = list(prompts)
    random.Random(0).shuffle(order)
    assert val == order[:3] and train == order[3:8]
    # the input list is not modified
    assert prompts == _prompts(20)


def test_split_seed_changes_selection():
    prompts = _prompts(50)
    splits = {tuple(p.id for p in split_prompts(prompts, 10, 5, seed=s)[0]) for s in range(5)}
    assert len(splits) == 5


def test_split_all_and_up_to():
    prompts = _prompts(20)
    train, val = split_prompts(prompts, None, 4, seed=1)
    assert len(train) == 16 and len(val) == 4
    assert sorted(p.id for p in train + val) == sorted(p.id for p in prompts)
    # asking for more training prompts than are left gives what is left
    train, val = split_prompts(prompts, 100, 4, seed=1)
    assert len(train) == 16
    train, val = split_prompts(prompts, 7, 0, seed=1)
    assert len(train) == 7 and val == []


@pytest.mark.parametrize(
    ("num_train", "num_val", "n"),
    [(5, 20, 20), (None, 20, 20), (None, 25, 20), (0, 2, 20), (5, -1, 20), (None, 0, 0)],
)
def test_split_impossible_requests(num_train, num_val, n):
    with pytest.raises(ValueError):
        split_prompts(_prompts(n), num_train, num_val, seed=0)


# ---------------------------------------------------------------- PromptDataset


def test_dataset_decodes_png(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(array, mode="RGB").save(tmp_path / "imgs" / "a.png")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "imgs" / "g.png")
    prompts = [Prompt("p0", "imgs/a.png", "q0"), Prompt("p1", "imgs/g.png", "q1")]
    dataset = PromptDataset(prompts, str(tmp_path))
    assert len(dataset) == 2

    prompt, index, image = dataset[0]
    assert prompt == prompts[0] and index == 0
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 7)
    assert image.is_contiguous()
    for c in range(3):
        for y in range(5):
            for x in range(7):
                assert image[c, y, x].item() == array[y, x, c]

    _, index, image = dataset[1]
    assert index == 1
    assert image.shape == (3, 3, 4)
    for c in range(3):
        assert image[c].tolist() == gray.tolist()


@pytest.mark.parametrize("content", [b"not a png at all", None])
def test_dataset_unreadable_image(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    dataset = PromptDataset([Prompt("prompt-42", "broken.png", "q")], tmp_path)
    with pytest.raises(ValueError) as info:
        dataset[0]
    assert str(path) in str(info.value)
    assert "prompt-42" in str(info.value)


def test_collate_prompts():
    images = [torch.zeros(3, 2, 3, dtype=torch.uint8), torch.ones(3, 4, 4, dtype=torch.uint8)]
    items = [
        (Prompt("a", "x/a.jpg", "qa"), 7, images[0]),
        (Prompt("b", "x/b.jpg", "qb"), 3, images[1]),
    ]
    batch = collate_prompts(items)
    assert isinstance(batch, PromptBatch)
    assert len(batch) == 2
    assert batch.ids == ["a", "b"]
    assert batch.indices == [7, 3]
    assert batch.image_paths == ["x/a.jpg", "x/b.jpg"]
    assert batch.questions == ["qa", "qb"]
    assert batch.images[0] is images[0] and batch.images[1] is images[1]


# ---------------------------------------------------------------- sample_seed


def test_sample_seed():
    assert sample_seed(0, 0, 0) == sample_seed(0, 0, 0)
    assert sample_seed(42, 3, 17) == sample_seed(42, 3, 17)
    seeds = [sample_seed(s, e, i) for s in (0, 1) for e in range(3) for i in range(100)]
    assert all(isinstance(x, int) for x in seeds)
    assert all(0 <= x < 2**63 for x in seeds)
    assert len(set(seeds)) == len(seeds)
    assert sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
    assert sample_seed(1, 0, 0) != sample_seed(0, 0, 1)
    # usable as a torch seed
    torch.Generator().manual_seed(max(seeds))


@pytest.mark.parametrize("image", [None, "", ["a.png", "b.png"]])
def test_non_path_image_field_is_rejected_with_row(tmp_path: Path, image) -> None:
    path = tmp_path / "mix.json"
    row = {"id": "bad", "image": image, "conversations": [{"from": "human", "value": "q"}]}
    path.write_text(json.dumps([row]))
    with pytest.raises(ValueError, match=r"row 0 \(id 'bad'\).*'image' must be a path"):
        load_llava_prompts(path)
