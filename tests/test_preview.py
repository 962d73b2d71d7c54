"""``lightning-aug-dpo preview``: a grid of a preset's augmentations, through the console entry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import random_images
from PIL import Image

from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.cli import main, spread_list_option
from lightning_aug_dpo.data.prompts import decode_image
from lightning_aug_dpo.preview import GAP, preview, tile_origin

SIZE = 48


@pytest.fixture
def image_files(tmp_path: Path) -> list[str]:
    """Two non-square images of different sizes and formats."""
    paths = []
    suffixes = [".png", ".bmp"]
    for i, (image, suffix) in enumerate(zip(random_images(2, seed=3), suffixes, strict=True)):
        path = tmp_path / f"img{i}{suffix}"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    return paths


def tiles(grid: np.ndarray, rows: int, cols: int) -> tuple[list[list[np.ndarray]], int]:
    """Cut the grid into its tiles; the caption band is what is left of each row's height."""
    caption = (grid.shape[0] - GAP) // rows - SIZE - GAP
    out = []
    for r in range(rows):
        row = []
        for c in range(cols):
            x, y = tile_origin(r, c, SIZE, caption)
            row.append(grid[y : y + SIZE, x : x + SIZE])
        out.append(row)
    return out, caption


def test_preview_command_writes_the_grid(image_files: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "preview.png"
    args = ["preview", "--preset", "moco", "--strength", "0.5", "--images", *image_files]
    main([*args, "--samples", "3", "--seed", "7", "--size", str(SIZE), "--output", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    samples, rows = 3, len(image_files)
    assert grid.shape[1] == GAP + (samples + 1) * (SIZE + GAP)
    cut, caption = tiles(grid, rows, samples + 1)
    assert caption > 0 and grid.shape[0] == GAP + rows * (SIZE + caption + GAP)

    # the first tile of each row is the preprocessed clean image, un-normalised
    pre = ImagePreprocessor(SIZE, CLIP_MEAN, CLIP_STD)
    clean = pre([decode_image(Path(p)) for p in image_files])
    mean, std = pre.mean[0], pre.std[0]
    for r in range(rows):
        expected = ((clean[r] * std + mean).clamp(0, 1) * 255).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(cut[r][0], expected, atol=1)
    # moco samples differ from the clean image and from one another (seeds 7, 8, 9)
    for r in range(rows):
        row = [tile.astype(np.int16) for tile in cut[r]]
        for a in range(len(row)):
            for b in range(a + 1, len(row)):
                assert np.abs(row[a] - row[b]).mean() > 1.0, (r, a, b)


def test_same_seed_same_tiles_and_list_syntax(image_files: list[str], tmp_path: Path) -> None:
    a = preview(image_files[:1], "moco", samples=2, seed=5, size=SIZE, output=f"{tmp_path}/a.png")
    main(["preview", "--preset=moco", "--samples=2", "--seed=5", f"--size={SIZE}",
          "--images", f"[{image_files[0]}]", "--output", str(tmp_path / "b.png")])  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(tmp_path / "b.png")))


def test_model_dir_sets_the_input_size(image_files: list[str], tiny_llava_dir, tmp_path) -> None:
    out = preview(image_files, "diffusion", samples=1, model=str(tiny_llava_dir),
                  output=str(tmp_path / "m.png"))  # fmt: skip
    width = Image.open(out).size[0]
    assert width == GAP + 2 * (64 + GAP)  # the tiny checkpoint's 64 px input, not --size


def test_missing_and_unreadable_files_are_named(image_files: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        preview([image_files[0], str(missing)], output=str(tmp_path / "x.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=re.escape(str(broken))):
        main(["preview", "--images", image_files[0], str(broken), "--output", str(tmp_path / "y")])
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y").exists()


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--strength", "--images", "--samples", "--seed", "--model"):
        assert option in text
    assert "SeVa's published setting" in text  # argument help comes from the docstring


def test_other_commands_still_go_to_lightning_cli(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "fit" in capsys.readouterr().out


def test_spread_list_option() -> None:
    assert spread_list_option(["--images", "a", "b", "--seed", "1"], "--images") == [
        '--images=["a", "b"]', "--seed", "1",
    ]  # fmt: skip
    assert spread_list_option(["--images", "[a, b]"], "--images") == ["--images", "[a, b]"]
    assert spread_list_option(["--images=a"], "--images") == ['--images=["a"]']
    assert spread_list_option(["--images=[a]"], "--images") == ["--images=[a]"]
