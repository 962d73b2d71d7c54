"""Bad images and malformed prompt rows: ``on_bad_image: skip`` drops and reports, ``error`` stops.

``write_bad_images`` writes one file of each bad kind (and of each odd-but-convertible kind) into
a folder; the tests decode them one by one, through the dataset and collate, and through a whole
``fit`` on the demo config.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_aug_dpo import AugPairDataModule
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.images import BadImageError, load_image, to_rgb_array
from lightning_aug_dpo.data.prompts import (
    BadItem,
    Prompt,
    PromptBatchWithSkips,
    PromptDataset,
    collate_prompts,
    load_jsonl_prompts,
    load_llava_prompts,
    load_prompts,
)

BOMB_SIDE = 10_000  # 1e8 pixels: above the default limit (89_478_485), below 2x PIL's own


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` 1-bit pixels (never decodable)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_bad_images(folder: Path) -> dict[str, str]:
    """One file of each kind in ``folder``: name -> the start of the expected ``reason``, or
    ``"ok"`` for files that are odd but must decode. ``missing.jpg`` is deliberately absent."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {"missing.jpg": "missing"}

    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty file"

    Image.fromarray(_noise(64, 64)).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated"

    (folder / "not_an_image.jpg").write_text("these are not the pixels you are looking for\n")
    expected["not_an_image.jpg"] = "not an image"

    (folder / "bomb.png").write_bytes(bomb_png(BOMB_SIDE, BOMB_SIDE))
    expected["bomb.png"] = "too large"

    (folder / "a_directory.jpg").mkdir()
    expected["a_directory.jpg"] = "is a directory"

    # --- odd but convertible
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # red
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # 0: black (transparent), 1: blue
    palette.paste(1, (0, 0, 4, 8))
    palette.save(folder / "palette_transparent.png", transparency=0)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black ...
    rgba[:, :4] = (255, 0, 0, 255)  # ... left half opaque red
    rgba[0, 7] = (0, 0, 0, 128)  # one half-transparent black pixel
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    wide = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(folder / "gray16.png")
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).save(folder / "gray.png")
    Image.new("1", (5, 3), 1).save(folder / "bilevel.png")
    sideways = np.zeros((20, 40, 3), dtype=np.uint8)  # H 20, W 40
    sideways[:, :20] = (255, 0, 0)  # left half red, right half blue
    sideways[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(sideways).save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    for name in (
        "cmyk.jpg",
        "palette_transparent.png",
        "rgba.png",
        "gray16.png",
        "gray.png",
        "bilevel.png",
        "exif_rotated.jpg",
    ):
        expected[name] = "ok"
    return expected


@pytest.fixture
def bad_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "bad_images"
    return folder, write_bad_images(folder)


BAD_NAMES = [
    "missing.jpg",
    "empty.jpg",
    "truncated.jpg",
    "not_an_image.jpg",
    "bomb.png",
    "a_directory.jpg",
]


# ---------------------------------------------------------------- load_image


@pytest.mark.parametrize("name", BAD_NAMES)
def test_each_bad_kind_has_its_reason(bad_folder, name: str) -> None:
    folder, expected = bad_folder
    with pytest.raises(BadImageError) as info:
        load_image(folder / name)
    assert info.value.reason.startswith(expected[name]), info.value.reason
    assert info.value.path == str(folder / name)
    assert str(folder / name) in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_every_ok_kind_decodes_to_uint8_rgb(bad_folder) -> None:
    folder, expected = bad_folder
    for name in [n for n, reason in expected.items() if reason == "ok"]:
        image = load_image(folder / name)
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, name
        assert image.is_contiguous(), name


def test_bomb_is_rejected_from_its_header(bad_folder) -> None:
    folder, _ = bad_folder
    with pytest.raises(BadImageError, match=r"too large \(10000x10000 = 100000000 pixels > limit"):
        load_image(folder / "bomb.png")
    # a lower limit makes an ordinary image "too large"; PIL's own check still applies with None
    with pytest.raises(BadImageError, match="too large"):
        load_image(folder / "gray.png", max_pixels=11)
    assert load_image(folder / "gray.png", max_pixels=12).shape == (3, 3, 4)
    huge = folder / "huge.png"
    huge.write_bytes(bomb_png(20_000, 20_000))
    with pytest.raises(BadImageError, match="too large"):
        load_image(huge, max_pixels=None)


def test_sixteen_bit_gray_is_scaled_not_clipped(bad_folder) -> None:
    folder, _ = bad_folder
    image = load_image(folder / "gray16.png")
    assert image.shape == (3, 1, 4)
    for channel in image:
        assert channel.flatten().tolist() == [0, 1, 128, 255]
    # "I" (32-bit) as older Pillow opens 16-bit PNGs: the same 16-bit scale
    as_int = Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.int32))
    assert as_int.mode == "I"
    assert to_rgb_array(as_int)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied(bad_folder) -> None:
    folder, _ = bad_folder
    image = load_image(folder / "exif_rotated.jpg")
    assert image.shape == (3, 40, 20)  # H and W swapped
    # turned clockwise: the stored left (red) half is now on top, the right (blue) below
    top, bottom = image[:, 10, 10].tolist(), image[:, 30, 10].tolist()
    assert top[0] > 200 and top[2] < 50, top
    assert bottom[2] > 200 and bottom[0] < 50, bottom


def test_cmyk_becomes_rgb(bad_folder) -> None:
    folder, _ = bad_folder
    image = load_image(folder / "cmyk.jpg")
    assert image.shape == (3, 12, 16)
    red = image[:, 6, 8].tolist()
    assert red[0] > 240 and red[1] < 15 and red[2] < 15, red


def test_transparency_is_composited_on_white(bad_folder) -> None:
    folder, _ = bad_folder
    palette = load_image(folder / "palette_transparent.png")
    assert palette[:, 4, 1].tolist() == [0, 0, 255]  # opaque blue kept
    assert palette[:, 4, 6].tolist() == [255, 255, 255]  # transparent -> white, not black
    rgba = load_image(folder / "rgba.png")
    assert rgba[:, 4, 1].tolist() == [255, 0, 0]
    assert rgba[:, 4, 6].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in rgba[:, 0, 7].tolist())  # half black on white


def test_grayscale_and_bilevel_become_rgb(bad_folder) -> None:
    folder, _ = bad_folder
    gray = load_image(folder / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert gray[0].tolist() == (np.arange(12).reshape(3, 4) * 20).tolist()
    assert load_image(folder / "bilevel.png").unique().tolist() == [255]


# ---------------------------------------------------------------- dataset and collate


def _prompts(names: list[str]) -> list[Prompt]:
    return [
        Prompt(f"p{i}", name, f"q{i}", location=f"line {i + 1}") for i, name in enumerate(names)
    ]


def test_skip_drops_bad_items_and_lists_them(bad_folder) -> None:
    folder, expected = bad_folder
    names = sorted(expected)
    dataset = PromptDataset(_prompts(names), folder, on_bad_image="skip")
    items = [dataset[i] for i in range(len(dataset))]
    bad = [item for item in items if isinstance(item, BadItem)]
    assert sorted(Path(b.path).name for b in bad) == sorted(BAD_NAMES)
    batch = collate_prompts(items)
    assert isinstance(batch, PromptBatchWithSkips)
    assert batch.image_paths == [n for n in names if expected[n] == "ok"]
    assert len(batch) == len(batch.images) == len(batch.indices) == len(names) - len(BAD_NAMES)
    assert {Path(path).name: reason.split(" (")[0] for path, reason in batch.skipped} == {
        n: expected[n] for n in BAD_NAMES
    }


def test_all_bad_batch_collates_empty(bad_folder) -> None:
    folder, _ = bad_folder
    dataset = PromptDataset(_prompts(BAD_NAMES), folder, on_bad_image="skip")
    batch = collate_prompts([dataset[i] for i in range(len(dataset))])
    assert len(batch) == 0 and batch.images == [] and len(batch.skipped) == len(BAD_NAMES)


def test_skip_works_across_worker_processes(bad_folder) -> None:
    folder, _ = bad_folder
    names = ["gray.png", "truncated.jpg", "rgba.png", "empty.jpg"]
    dataset = PromptDataset(_prompts(names), folder, on_bad_image="skip")
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_prompts)
    (batch,) = list(loader)
    assert batch.image_paths == ["gray.png", "rgba.png"]
    assert sorted(reason for _, reason in batch.skipped) == ["empty file", "truncated"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_error_names_file_prompt_row_reason_and_fix(bad_folder, name: str) -> None:
    folder, expected = bad_folder
    dataset = PromptDataset(_prompts(["gray.png", name]), folder)  # "error" is the default
    assert dataset[0][2].shape == (3, 3, 4)
    with pytest.raises(ValueError) as info:
        dataset[1]
    message = str(info.value)
    assert str(folder / name) in message
    assert "'p1'" in message and "line 2" in message
    assert expected[name] in message
    assert "on_bad_image: skip" in message


def test_invalid_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_image must be 'skip' or 'error'"):
        PromptDataset([], tmp_path, on_bad_image="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------- malformed prompt rows


def _jsonl(path: Path) -> Path:
    lines = [
        json.dumps({"image": "a.jpg", "text": "<image>\nfirst"}),
        '{"image": "b.jpg", "text": ',  # line 2: cut off
        json.dumps({"image": "c.jpg"}),  # line 3: no text
        "",
        json.dumps({"image": "d.jpg", "text": "fourth"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_skip_counts_bad_lines_with_numbers(tmp_path: Path) -> None:
    source = load_jsonl_prompts(_jsonl(tmp_path / "p.jsonl"), on_bad_row="skip")
    assert [p.image for p in source.prompts] == ["a.jpg", "d.jpg"]
    assert [p.location for p in source.prompts] == ["line 1", "line 5"]
    assert [n for n, _ in source.bad_rows] == [2, 3]
    assert "not valid JSON" in source.bad_rows[0][1]
    assert "'image' and 'text'" in source.bad_rows[1][1]


def test_jsonl_error_names_the_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"line 2 not valid JSON.*on_bad_image: skip") as info:
        load_prompts(path)
    assert str(path) in str(info.value)


def test_llava_skip_counts_bad_rows(tmp_path: Path) -> None:
    good = {"id": "g", "image": "a.jpg", "conversations": [{"from": "human", "value": "q"}]}
    rows = [good, "not an object", {"id": "t", "conversations": []}, {**good, "image": ""}]
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    source = load_llava_prompts(path, on_bad_row="skip")
    assert [p.id for p in source.prompts] == ["g"] and source.prompts[0].location == "row 0"
    assert source.skipped_text_only == 1
    assert [n for n, _ in source.bad_rows] == [1, 3]
    with pytest.raises(ValueError, match=r"row 1 \(id None\).*on_bad_image: skip"):
        load_llava_prompts(path)


# ---------------------------------------------------------------- the DataModule


def test_empty_batch_makes_an_empty_preference_batch(bad_folder, make_module, caplog) -> None:
    folder, _ = bad_folder
    module = make_module()
    dm = AugPairDataModule(str(folder / "unused.json"), str(folder), on_bad_image="skip")
    dataset = PromptDataset(_prompts(BAD_NAMES), folder, on_bad_image="skip")
    batch = collate_prompts([dataset[i] for i in range(len(dataset))])
    with caplog.at_level(logging.WARNING, logger="lightning_aug_dpo.data.datamodule"):
        pairs = dm.make_pairs(batch, module)
        dm.make_pairs(batch, module)  # the same files again: no second warning
    assert len(pairs) == 0 and pairs.meta["bad_images"] == len(BAD_NAMES)
    assert pairs.meta["stats"].prompts == 0 and pairs.meta["rows"] == []
    assert pairs.pixel_values.shape[0] == 0 and pairs.pixel_values.ndim == 4
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(warned) == len(BAD_NAMES)
    summary = dm.bad_image_summary()
    assert summary is not None
    assert summary.startswith(f"skipped {len(BAD_NAMES)} unreadable images this epoch: ")
    assert all(name in summary for name in BAD_NAMES)
    assert dm.bad_image_summary() is None  # forgotten once reported


# ---------------------------------------------------------------- end to end on the demo


@pytest.fixture
def bad_demo(demo_assets, tmp_path: Path, monkeypatch) -> tuple[Path, dict[str, str]]:
    """The demo run folder plus a JSONL prompt list over a few demo images and every fixture
    (and one malformed line), all in one image folder."""
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images"
    expected = write_bad_images(folder)
    demo_images = sorted(p for p in (demo_assets["prompts"].parent / "images").rglob("*.*"))[:1]
    names = [f"demo_{i}{image.suffix}" for i, image in enumerate(demo_images)]
    for name, image in zip(names, demo_images, strict=True):
        (folder / name).symlink_to(image)
    names += sorted(expected)
    lines = [json.dumps({"image": n, "text": f"What is in {n}?"}) for n in names]
    lines.insert(2, "{not json")  # line 3
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path, expected


def _fit_args(run_dir: Path, mode: str) -> list[str]:
    config = Path(__file__).resolve().parents[1] / "configs" / "demo_mmvet.yaml"
    return [
        "fit",
        "--config",
        str(config),
        f"--data.init_args.data_path={run_dir / 'prompts.jsonl'}",
        f"--data.init_args.image_folder={run_dir / 'images'}",
        f"--data.init_args.on_bad_image={mode}",
        "--data.init_args.max_bad_fraction=null",  # 6 of 14 bad: on purpose, train anyway
        "--data.init_args.num_prompts=null",
        "--data.init_args.num_val_prompts=0",
        "--data.init_args.batch_size=8",
        "--data.init_args.max_new_tokens=4",
        "--trainer.max_epochs=1",
        # only what this test looks at: no MM-Vet evaluation, gallery or checkpoints
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ]


def test_fit_with_skip_completes_and_reports_each_bad_file(bad_demo, caplog) -> None:
    run_dir, expected = bad_demo
    with caplog.at_level(logging.WARNING, logger="lightning_aug_dpo.data.datamodule"):
        cli = cli_main(_fit_args(run_dir, "skip"))
    assert cli.trainer.state.finished
    assert cli.datamodule.bad_rows and cli.datamodule.bad_rows[0][0] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 malformed lines" in m and "3: not valid JSON" in m for m in messages)
    for name in BAD_NAMES:
        warned = [m for m in messages if m.startswith("skipping unreadable image") and name in m]
        assert len(warned) == 1, (name, warned)
        assert expected[name] in warned[0]
    (summary,) = [m for m in messages if "unreadable images this epoch" in m]
    assert summary.startswith(f"epoch 0: skipped {len(BAD_NAMES)} unreadable images this epoch")
    assert all(f"{name} ({expected[name]}" in summary for name in BAD_NAMES)
    for name, reason in expected.items():
        if reason == "ok":
            assert name not in summary


def test_fit_with_error_stops_at_the_first_bad_file(bad_demo, monkeypatch) -> None:
    run_dir, expected = bad_demo
    # the malformed JSON line comes first: it stops the run before any image is read
    with pytest.raises(ValueError, match=r"line 3 not valid JSON"):
        cli_main(_fit_args(run_dir, "error"))
    prompts = run_dir / "prompts.jsonl"
    lines = prompts.read_text(encoding="utf-8").splitlines()
    prompts.write_text("\n".join(line for line in lines if line != "{not json") + "\n")

    # the first bad image in the (seeded) training order is the one named: replay the order
    # with one prompt per batch (the order does not depend on the batch size)
    dm = AugPairDataModule(
        str(prompts), str(run_dir / "images"), batch_size=1, seed=42, on_bad_image="skip"
    )
    dm.setup("fit")
    skipped = [batch.skipped[0][0] for batch in dm.train_dataloader() if batch.skipped]
    first = Path(skipped[0]).name
    # up front, before the model loads: every bad image of the sampled rows (here all of them)
    with pytest.raises(ValueError) as info:
        cli_main(_fit_args(run_dir, "error"))
    message = str(info.value)
    assert "no model was loaded" in message and "data.image_folder=" in message
    assert all(f"images/{name} ({expected[name]}" in message for name in BAD_NAMES), message
    # at run time (a file the up-front sample did not see): the first in training order
    monkeypatch.setattr("lightning_aug_dpo.cli.run_problems", lambda config: [])
    with pytest.raises(ValueError) as info:
        cli_main(_fit_args(run_dir, "error"))
    message = str(info.value)
    assert str(run_dir / "images" / first) in message, (first, message)
    assert expected[first] in message and "on_bad_image: skip" in message
    others = [n for n in BAD_NAMES if n != first]
    assert not any(f"images/{n}" in message for n in others)
