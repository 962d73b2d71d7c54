"""SeVa's augmentation presets: shape, dtype, range, determinism, replay, strength."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_aug_dpo.augment import (
    PRESET_NAMES,
    KorniaAugmentation,
    Preset,
    build_augmentation,
    replay,
)
from lightning_aug_dpo.augment.base import CLIP_MEAN, CLIP_STD

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
# Presets with no randomness at strength 0.5 (SeVa applies them always, with fixed parameters).
DETERMINISTIC = {
    "pad", "center_crop", "hflip", "grayscale", "invert", "posterize", "solarize", "equalize",
    "sharpness", "autocontrast",
}  # fmt: skip


def clean_batch(n: int = 3, side: int = 96) -> torch.Tensor:
    """Normalised images of smooth colour fields with a bright square: real structure."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    images = []
    for _ in range(n):
        a, b, c = torch.rand(3, generator=g)
        img = torch.stack([a * x + (1 - a) * y, b * (1 - x), c * y * x])
        lo = int(torch.randint(0, side // 2, (), generator=g))
        img[:, lo : lo + side // 4, lo : lo + side // 4] = 0.95
        images.append((img * 255).round() / 255)
    return (torch.stack(images) - MEAN) / STD


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_shape_dtype_range(name: str) -> None:
    clean = clean_batch()
    out, records = Preset(name)(clean, [1, 2, 3])
    assert out.shape == clean.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if name != "diffusion":  # pixel-space presets give valid images
        pixels = out * STD + MEAN
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert len(records) == 3
    for record, seed in zip(records, [1, 2, 3], strict=True):
        assert record["preset"] == name and record["strength"] == 0.5 and record["seed"] == seed
        assert "params" in record
    assert not torch.equal(out, clean), f"{name} at strength 0.5 changed nothing"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_keeps_model_dtype(name: str) -> None:
    clean = clean_batch(2).to(torch.bfloat16)
    out, _ = Preset(name)(clean, [4, 5])
    assert out.dtype == torch.bfloat16 and out.shape == clean.shape


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_deterministic_under_seed(name: str) -> None:
    clean = clean_batch(side=336)  # LLaVA-1.5's size: SeVa's blur is sub-pixel on tiny images
    a, rec_a = Preset(name)(clean, [10, 11, 12])
    b, rec_b = Preset(name)(clean.clone(), [10, 11, 12])  # a fresh object: as in another run
    assert torch.equal(a, b) and rec_a == rec_b
    if name not in DETERMINISTIC:
        c, _ = Preset(name)(clean, [10, 11, 99])
        assert torch.equal(a[:2], c[:2]) and not torch.equal(a[2], c[2])


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_independent_of_batch_size_and_global_rng(name: str) -> None:
    clean = clean_batch(4)
    seeds = [7, 8, 9, 10]
    torch.manual_seed(0)
    batch, _ = Preset(name)(clean, seeds)
    torch.manual_seed(123)  # the global RNG state must not matter
    first, _ = Preset(name)(clean[:1], seeds[:1])
    rest, _ = Preset(name)(clean[1:], seeds[1:])
    halves = torch.cat([first, rest])
    assert torch.equal(batch, halves)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_replay_rebuilds_exactly_from_json_record(name: str) -> None:
    import json

    clean = clean_batch()
    out, records = Preset(name, strength=0.7)(clean, [21, 22, 23])
    for i, record in enumerate(records):
        record = json.loads(json.dumps(record))  # as read back from a pairs file
        assert torch.equal(replay(record, clean[i]), out[i])


def test_replay_detects_changed_parameters() -> None:
    clean = clean_batch(1)
    _, (record,) = Preset("rotation")(clean, [5])
    tampered = copy.deepcopy(record)
    tampered["params"]["inner"][0] = {"tampered": True}
    with pytest.raises(ValueError, match="differ from the recorded"):
        replay(tampered, clean[0])
    replay(tampered, clean[0], check_params=False)  # opt-out for records of other versions


def test_replay_uses_the_recorded_normalisation() -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    aug = Preset("solarize")
    aug.set_normalization(mean, std)
    clean = clean_batch(1)
    out, (record,) = aug(clean, [0])
    assert record["mean"] == list(mean) and record["std"] == list(std)
    assert torch.equal(replay(record, clean[0]), out[0])


def test_strength_zero_is_identity_for_all_or_nothing_presets() -> None:
    clean = clean_batch()
    for name in ("hflip", "grayscale", "invert", "equalize", "autocontrast", "autoaugment"):
        out, _ = Preset(name, strength=0.0)(clean, [1, 2, 3])
        torch.testing.assert_close(out, clean, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize(
    "name", ["diffusion", "pad", "center_crop", "posterize", "solarize", "gaussian_blur", "moco"]
)
def test_corruption_grows_with_strength(name: str) -> None:
    clean = clean_batch(6)
    seeds = list(range(6))
    change = [
        (Preset(name, strength=s)(clean, seeds)[0] - clean).abs().mean().item()
        for s in (0.1, 0.5, 1.0)
    ]
    assert change[0] < change[1] < change[2], change


def test_strength_validation_and_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        Preset("moco", strength=1.5)
    with pytest.raises(ValueError, match="choose one of"):
        Preset("mocov3")  # type: ignore[arg-type]
    aug = Preset("moco")
    aug.strength = 0.9
    _, (record,) = aug(clean_batch(1), [0])
    assert record["strength"] == 0.9


def test_diffusion_preset_matches_published_steps() -> None:
    assert Preset("diffusion", 0.5)._inner_for(96).noise_step == 500
    assert Preset("diffusion", 0.8)._inner_for(96).noise_step == 800


def test_any_kornia_augmentation_by_class_path() -> None:
    aug = KorniaAugmentation(
        "kornia.augmentation.RandomGaussianBlur",
        {"kernel_size": 5, "sigma": [0.5, 2.0], "p": 1.0},
    )
    clean = clean_batch()
    out, records = aug(clean, [1, 2, 3])
    assert records[0]["transform"] == "kornia.augmentation.RandomGaussianBlur"
    assert not torch.equal(out, clean)
    assert torch.equal(replay(records[1], clean[1]), out[1])
    assert isinstance(build_augmentation(records[0]), KorniaAugmentation)


def test_kornia_object_records_need_the_augmentation_to_replay() -> None:
    import kornia.augmentation as K

    aug = KorniaAugmentation(K.RandomRotation(degrees=45.0, p=1.0))
    clean = clean_batch(1)
    out, (record,) = aug(clean, [3])
    assert record["transform"] == "kornia.augmentation._2d.geometric.rotation.RandomRotation"
    with pytest.raises(ValueError, match="pass that augmentation"):
        replay(record, clean[0])
    assert torch.equal(replay(record, clean[0], augmentation=aug), out[0])


def test_bad_kornia_class_path_is_explained() -> None:
    with pytest.raises(ValueError, match=r"cannot import 'kornia\.augmentation\.NoSuchThing'"):
        KorniaAugmentation("kornia.augmentation.NoSuchThing")
    with pytest.raises(ValueError, match=r"bad kwargs for kornia\.augmentation\.RandomInvert"):
        KorniaAugmentation("kornia.augmentation.RandomInvert", {"nonsense": 1})


def test_diffusion_noise_step_range_draws_per_image_and_replays() -> None:
    from lightning_aug_dpo import DiffusionNoise

    aug = DiffusionNoise(noise_step=(300, 900))
    clean = clean_batch(8, side=16)
    out, records = aug(clean, list(range(8)))
    steps = [r["params"]["noise_step"] for r in records]
    assert all(300 <= s <= 900 for s in steps) and len(set(steps)) > 1
    assert records[0]["noise_step"] == [300, 900]
    for i, record in enumerate(records):
        assert torch.equal(replay(record, clean[i]), out[i])
        signal = float(aug.sqrt_abar[steps[i]])
        noise = (out[i] - signal * clean[i]) / (1 - signal**2) ** 0.5
        assert abs(noise.std().item() - 1.0) < 0.15  # the remainder is the unit Gaussian noise
    assert aug.strength == pytest.approx(0.6)
    aug.strength = 0.2  # moves the range, keeping its width
    assert aug.noise_step == (0, 600)


def test_diffusion_noise_in_pixel_space_gives_valid_images() -> None:
    from lightning_aug_dpo import DiffusionNoise

    clean = clean_batch(2, side=16)
    out, (record, _) = DiffusionNoise(noise_step=500, space="pixel")(clean, [1, 2])
    pixels = out * STD + MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert record["space"] == "pixel" and record["mean"] == pytest.approx(list(CLIP_MEAN))
    assert torch.equal(replay(record, clean[0]), out[0])
    with pytest.raises(ValueError, match="space"):
        DiffusionNoise(space="latent")  # type: ignore[arg-type]
