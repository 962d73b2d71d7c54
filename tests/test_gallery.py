"""PairGalleryCallback: the grid image, the TensorBoard summary and the self-contained HTML page."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import make_batch, random_images
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_aug_dpo import PairGalleryCallback
from lightning_aug_dpo.augment import ImagePreprocessor, Preset
from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD
from lightning_aug_dpo.callbacks.gallery import PAD, render_pair_grid, to_uint8, wrap_text
from lightning_aug_dpo.types import PairStats, PreferenceBatch

QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Is there a square?"]
CHOSEN = ["The circle is <b>red</b> & round.", "There are three shapes.", "Yes, on the left."]
REJECTED = ["It is <b>&blue", "There are two shapes.", "No."]
IMG_TAG = '<img src="data:image/png;base64,'


def with_pairs(batch: PreferenceBatch, preset: str = "moco") -> PreferenceBatch:
    """Add what the DataModule adds: the augmented image and one row per pair."""
    n = len(batch)
    aug = Preset(preset, 0.5)
    augmented, records = aug(batch.pixel_values, list(range(100, 100 + n)))
    batch.aug_pixel_values = augmented
    batch.meta["rows"] = [
        {"id": f"p{i}", "image": f"coco/{i}.png", "prompt": QUESTIONS[i], "chosen": CHOSEN[i],
         "rejected": REJECTED[i], "augmentation": records[i]}
        for i in range(n)
    ]  # fmt: skip
    return batch


class Pixels(pl.LightningModule):
    """Just what the callback reads from the module: the preprocessor's mean and std."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocessor = ImagePreprocessor(32, CLIP_MEAN, CLIP_STD)


def synthetic_batch(n: int = 3) -> PreferenceBatch:
    """A PreferenceBatch without a model: real preprocessed pixels, dummy tokens."""
    pixels = ImagePreprocessor(32, CLIP_MEAN, CLIP_STD)(random_images(n))
    tokens = torch.zeros(n, 4, dtype=torch.long)
    batch = PreferenceBatch(
        pixel_values=pixels,
        prompt_input_ids=tokens, prompt_attention_mask=tokens,
        chosen_input_ids=tokens, chosen_attention_mask=tokens,
        rejected_input_ids=tokens, rejected_attention_mask=tokens,
        meta={"stats": PairStats(prompts=n, kept=n, identical=0)},
    )  # fmt: skip
    return with_pairs(batch)


def embedded_images(page: str) -> list[np.ndarray]:
    """Decode every data-URI PNG of the page, in order, as (H, W, 3) uint8 arrays."""
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def unnormalised(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) float in [0, 255], with CLIP's mean/std."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels * std + mean).clamp(0, 1) * 255).permute(1, 2, 0).numpy()


def test_fit_writes_gallery_and_tensorboard_image(make_module, tmp_path: Path) -> None:
    module = make_module()
    batch = with_pairs(make_batch(module, QUESTIONS, CHOSEN, REJECTED))
    gallery = PairGalleryCallback(every_n_steps=50, max_pairs=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[gallery], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    # batch_size=None: the loader hands out the prepared PreferenceBatch objects as they are
    trainer.fit(module, DataLoader([batch, batch], batch_size=None, collate_fn=lambda b: b))
    run = Path(trainer.log_dir)
    assert run == tmp_path / "tb" / "version_0"

    page = (run / "gallery.html").read_text(encoding="utf-8")
    assert page.count(IMG_TAG) == 2 * 2  # max_pairs pairs, original + augmented each
    assert page.count("<section") == 1  # step 1 only (the first step always logs)
    assert "step 1<" in page
    assert "The circle is &lt;b&gt;red&lt;/b&gt; &amp; round." in page
    assert "It is &lt;b&gt;&amp;blue" in page
    assert "<b>red" not in page and "<b>&" not in page
    assert "moco, strength 0.5, seed 100" in page and "<details>" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing external

    images = embedded_images(page)
    side = batch.pixel_values.shape[-1]
    assert images[0].shape == (side, side, 3)  # tiny model input (64 px): not shrunk
    np.testing.assert_allclose(images[0], unnormalised(batch.pixel_values[0]), atol=1)
    np.testing.assert_allclose(images[1], unnormalised(batch.aug_pixel_values[0]), atol=1)
    assert not np.array_equal(images[0], images[1])

    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert "train/pairs" in events.Tags()["images"]
    (logged,) = events.Images("train/pairs")
    assert logged.step == 1
    grid = np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB"))
    tile = grid[PAD : PAD + side, PAD : PAD + side]  # row 1, left: the original image
    np.testing.assert_allclose(tile, unnormalised(batch.pixel_values[0]), atol=1)


def test_grid_rows_hold_original_then_augmented() -> None:
    batch = synthetic_batch(3)
    clean = to_uint8(batch.pixel_values, CLIP_MEAN, CLIP_STD)
    augmented = to_uint8(batch.aug_pixel_values, CLIP_MEAN, CLIP_STD)
    grid = np.asarray(render_pair_grid(clean, augmented, batch.meta["rows"]))
    side = clean.shape[-1]
    left = grid[PAD : PAD + side, PAD : PAD + side]
    right = grid[PAD : PAD + side, 2 * PAD + side : 2 * PAD + 2 * side]
    np.testing.assert_array_equal(left, clean[0].permute(1, 2, 0))
    np.testing.assert_array_equal(right, augmented[0].permute(1, 2, 0))
    np.testing.assert_allclose(left, unnormalised(batch.pixel_values[0]), atol=1)
    assert grid.shape[0] > 3 * side  # three rows


def test_csv_logger_gets_page_only_and_steps_are_bounded(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=CSVLogger(tmp_path, name="csv"), enable_progress_bar=False)
    gallery = PairGalleryCallback(every_n_steps=5, max_pairs=8, max_sections=3)
    batch = synthetic_batch(3)
    gallery.on_train_batch_end(trainer, Pixels(), None, batch, 0)  # first step: always
    gallery.on_train_batch_end(trainer, Pixels(), None, batch, 1)  # same step: once only
    page_path = Path(trainer.log_dir) / "gallery.html"
    page = page_path.read_text(encoding="utf-8")
    assert page.count(IMG_TAG) == 2 * 3 and page.count("<section") == 1

    assert [s for s in range(1, 21) if gallery.should_log(s)] == [5, 10, 15, 20]
    for step in (5, 10, 15, 20):
        gallery.log_pairs(trainer, Pixels(), batch, step)
    page = page_path.read_text(encoding="utf-8")
    steps = [int(s) for s in re.findall(r'<section id="step-(\d+)"', page)]
    assert steps == [20, 15, 10]  # newest first, bounded
    assert not list(page_path.parent.glob(".gallery.html.*"))  # no temp files left behind


def test_loggers_with_log_image_get_the_grid(tmp_path: Path) -> None:
    class ImageLogger(CSVLogger):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls: list[tuple[str, list, int]] = []

        def log_image(self, key: str, images: list, step: int | None = None) -> None:
            self.calls.append((key, images, step))

    logger = ImageLogger(tmp_path)
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False)
    grid = PairGalleryCallback(max_pairs=2).log_pairs(trainer, Pixels(), synthetic_batch(3), 7)
    ((key, images, step),) = logger.calls
    assert (key, step) == ("train/pairs", 7) and images[0] is grid

    trainer = pl.Trainer(logger=ImageLogger(tmp_path / "off"), enable_progress_bar=False)
    PairGalleryCallback(log_images=False).log_pairs(trainer, Pixels(), synthetic_batch(1), 1)
    assert trainer.logger.calls == []


def test_offline_pairs_and_thumbnails(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False)
    batch = synthetic_batch(2)
    batch.aug_pixel_values = None  # offline pairs carry no augmented image
    batch.meta["rows"][0]["rejected"] = "control\x10char"  # what an untrained model may say
    PairGalleryCallback(thumbnail_size=16).log_pairs(trainer, Pixels(), batch, 3)
    page = (Path(trainer.log_dir) / "gallery.html").read_text(encoding="utf-8")
    assert page.count(IMG_TAG) == 2 and "no augmented image" in page
    assert "control\ufffdchar" in page and "\x10" not in page
    assert [image.shape for image in embedded_images(page)] == [(16, 16, 3)] * 2


def test_wrap_text_breaks_long_words_and_cuts() -> None:
    from lightning_aug_dpo.callbacks.gallery import load_font

    font = load_font()
    lines = wrap_text("short words " + "x" * 300, font, 100)
    assert len(lines) > 2 and all(font.getlength(line) <= 100 for line in lines)
    cut = wrap_text("word " * 200, font, 100, max_lines=3)
    assert len(cut) == 3 and cut[-1].endswith("...")


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        PairGalleryCallback(every_n_steps=0)
