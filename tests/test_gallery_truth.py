"""The gallery's ground truth: a truth file (text or toy-world scene record per image), found
beside the data's image folder or named, shown beside the chosen and rejected answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger
from test_gallery import Pixels, synthetic_batch

from lightning_aug_dpo import AugPairDataModule, PairGalleryCallback
from lightning_aug_dpo.callbacks.gallery_truth import load_truth, truth_file
from lightning_aug_dpo.data.toy_world import ToyObject, ToyScene, write_toy_world
from lightning_aug_dpo.eval.toy_world import truth_text

SCENE = {  # a toy-world scene record: small red circle left, large blue square right
    "objects": [
        {"color": "red", "kind": "circle", "size": "small", "column": 0},
        {"color": "blue", "kind": "square", "size": "large", "column": 2},
    ],
    "cy": [20, 40], "cx_jitter": [0, 1], "noise_seed": 7,
}  # fmt: skip
EXPECTED = "small red circle (left), large blue square (right)"


def truths(page: str) -> list[str]:
    return re.findall(r'<dt>ground truth</dt><dd class="truth">([^<]*)</dd>', page)


def test_truth_text_lists_the_objects_left_to_right() -> None:
    scene = ToyScene(
        (ToyObject("green", "triangle", "large", 1), ToyObject("purple", "square", "small", 2)),
        (30, 30), (0, 0), 1,
    )  # fmt: skip
    assert truth_text(scene) == "large green triangle (middle), small purple square (right)"


def test_page_shows_the_truth_beside_both_answers(tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    # a scene record, a plain text, and a value that is neither (shown without a truth)
    truth.write_text(json.dumps({"shapes/a.png": SCENE, "b.png": "two apples", "c.png": 3}))
    batch = synthetic_batch(3)
    for row, image in zip(batch.meta["rows"], ("./shapes/a.png", "b.png", "c.png"), strict=True):
        row["image"] = image
    trainer = pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False)
    PairGalleryCallback(truth_from=str(truth)).log_pairs(trainer, Pixels(), batch, 1)
    page = (Path(trainer.log_dir) / "gallery.html").read_text(encoding="utf-8")
    assert truths(page) == [EXPECTED, "two apples"]  # c.png: none
    # between the prompt and the chosen answer, in the pair's own text
    first = page.split('<div class="pair">')[1]
    assert first.index("<dt>prompt</dt>") < first.index(EXPECTED) < first.index("<dt>chosen</dt>")
    assert first.index("<dt>chosen</dt>") < first.index("<dt>rejected</dt>")
    assert batch.meta["rows"][0].get("truth") is None  # the DataModule's rows are not changed

    # a row that carries its own truth keeps it; without a file the page has none
    batch.meta["rows"][0]["truth"] = "from the row"
    PairGalleryCallback(truth_from=str(truth)).log_pairs(trainer, Pixels(), batch, 2)
    page = (Path(trainer.log_dir) / "gallery.html").read_text(encoding="utf-8")
    assert truths(page)[0] == "from the row"
    batch.meta["rows"][0].pop("truth")
    PairGalleryCallback(truth_from=None).log_pairs(trainer, Pixels(), batch, 3)
    page = (Path(trainer.log_dir) / "gallery.html").read_text(encoding="utf-8")
    assert truths(page) == []


def test_auto_finds_the_toy_worlds_scenes_beside_the_image_folder(tmp_path: Path) -> None:
    world = write_toy_world(tmp_path / "world", {"pool": 2}, splits=("pool",))
    data = AugPairDataModule(data_path=str(world["pool"]), image_folder=str(world["images"]))
    trainer = SimpleNamespace(datamodule=data)
    assert truth_file("auto", trainer) == world["root"] / "scenes.json"
    records = json.loads((world["root"] / "scenes.json").read_text())
    shown = load_truth(truth_file("auto", trainer))
    assert set(shown) == {"pool/pool_00000.png", "pool/pool_00001.png"} == set(records)
    for image, record in records.items():  # every object, in its column, left to right
        sides = [("left", "middle", "right")[o["column"]] for o in record["objects"]]
        assert shown[image] == ", ".join(
            f"{o['size']} {o['color']} {o['kind']} ({side})"
            for o, side in zip(record["objects"], sides, strict=True)
        )
    # generic data: no scenes.json, no datamodule, or switched off: no truth, no error
    other = AugPairDataModule(data_path=str(world["pool"]), image_folder=str(tmp_path))
    assert truth_file("auto", SimpleNamespace(datamodule=other)) is None
    assert truth_file("auto", SimpleNamespace(datamodule=None)) is None
    assert truth_file(None, trainer) is None


def test_a_bad_truth_file_is_a_clear_error(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False)
    gallery = PairGalleryCallback(truth_from=str(tmp_path / "missing.json"))
    # at set-up, before the first training step
    with pytest.raises(FileNotFoundError, match=r"missing\.json: ground-truth file not found"):
        gallery.setup(trainer, Pixels(), "fit")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: a ground-truth file is a JSON object"):
        load_truth(tmp_path / "list.json")
    (tmp_path / "torn.json").write_text('{"a.png": ')
    with pytest.raises(ValueError, match=r"torn\.json: not a JSON ground-truth file"):
        load_truth(tmp_path / "torn.json")
