"""Pair making on the device: preprocessing, augmentation, rollouts, identical-pair dropping."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import random_images

from lightning_aug_dpo import AugPairDataModule, DiffusionNoise, Preset, replay
from lightning_aug_dpo.data import sample_seed
from lightning_aug_dpo.types import PromptBatch


def no_augmentation() -> Preset:
    """Strength 0 hflip flips with p = 0: every pair is identical under greedy decoding."""
    return Preset("hflip", strength=0.0)


def prompt_batch(n: int) -> PromptBatch:
    return PromptBatch(
        ids=[f"p{i}" for i in range(n)],
        indices=list(range(n)),
        image_paths=[f"img{i}.png" for i in range(n)],
        images=random_images(n),
        questions=["What color is the circle?", "How many shapes?", "Describe it.", "Why?"][:n],
    )


def datamodule(demo_assets: dict[str, Path], **kwargs) -> AugPairDataModule:
    return AugPairDataModule(
        data_path=str(demo_assets["prompts"]),
        image_folder=str(demo_assets["prompts"].parent / "images"),
        max_new_tokens=8,
        **kwargs,
    )


def test_make_pairs_builds_a_preference_batch(make_module, demo_assets) -> None:
    module = make_module()
    dm = datamodule(demo_assets, augmentation=DiffusionNoise(noise_step=800))
    batch = dm.make_pairs(prompt_batch(4), module, epoch=0)
    stats = batch.meta["stats"]
    assert stats.prompts == 4 and stats.kept + stats.identical == 4
    assert len(batch) == stats.kept == len(batch.meta["rows"])
    assert batch.pixel_values.shape == (stats.kept, 3, 64, 64)
    for row in batch.meta["rows"]:
        assert row["chosen"] != row["rejected"]
        assert row["augmentation"]["preset"] == "diffusion"
        assert row["augmentation"]["noise_step"] == 800
        assert row["augmentation"]["seed"] == sample_seed(42, 0, int(row["id"][1:]))
    # the chosen answer is the reference model's greedy answer on the clean image
    clean = module.preprocess_images(random_images(4))
    expected = module.generate(clean, prompt_batch(4).questions, 8, use_reference=True)
    kept = [int(r["id"][1:]) for r in batch.meta["rows"]]
    assert [r["chosen"] for r in batch.meta["rows"]] == [expected[i] for i in kept]
    # the rejected image is reproducible from its record
    aug, _ = DiffusionNoise(800)(clean, [sample_seed(42, 0, i) for i in range(4)])
    assert torch.equal(batch.aug_pixel_values, aug[kept])
    for row, clean_row, aug_row in zip(
        batch.meta["rows"], batch.pixel_values, batch.aug_pixel_values, strict=True
    ):
        assert torch.equal(replay(row["augmentation"], clean_row), aug_row)


def test_identical_pairs_are_dropped_and_counted(make_module, demo_assets) -> None:
    module = make_module()
    dm = datamodule(demo_assets, augmentation=no_augmentation())
    batch = dm.make_pairs(prompt_batch(3), module)
    stats = batch.meta["stats"]
    assert (stats.prompts, stats.kept, stats.identical) == (3, 0, 3)
    assert stats.identical_rate == 1.0
    assert len(batch) == 0
    assert module.training_step(batch, 0) is None  # nothing to learn from: no optimizer step


def test_keeping_identical_pairs_when_asked(make_module, demo_assets) -> None:
    module = make_module()
    dm = datamodule(demo_assets, augmentation=no_augmentation(), drop_identical=False)
    batch = dm.make_pairs(prompt_batch(3), module)
    stats = batch.meta["stats"]
    # identical answers are still counted (the identical rate is a measurement), not dropped
    assert len(batch) == 3 and stats.identical == 3 and stats.kept == 3 and not stats.dropped


def test_setup_splits_prompts_reproducibly(demo_assets) -> None:
    a = datamodule(demo_assets, num_prompts=10, num_val_prompts=4, seed=3)
    b = datamodule(demo_assets, num_prompts=10, num_val_prompts=4, seed=3)
    a.setup("fit")
    b.setup("fit")
    assert a.train_prompts == b.train_prompts and len(a.train_prompts) == 10
    assert not {p.id for p in a.train_prompts} & {p.id for p in a.val_prompts}
    batch = next(iter(a.train_dataloader()))
    assert isinstance(batch, PromptBatch) and len(batch) == 8
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 for img in batch.images)
    assert all("<image>" not in q for q in batch.questions)
