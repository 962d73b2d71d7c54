"""Diffusion-noise augmentation and device-side image preprocessing, checked against values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_aug_dpo.augment import DiffusionNoise, ImagePreprocessor, diffusion_schedule

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


# ---------------------------------------------------------------- diffusion_schedule


@pytest.mark.parametrize(("step", "signal", "noise"), [(500, 0.863, 0.505), (800, 0.467, 0.884)])
def test_schedule_published_values(step, signal, noise):
    sqrt_abar = float(diffusion_schedule()[step])
    assert round(sqrt_abar, 3) == signal
    assert round(math.sqrt(1 - sqrt_abar**2), 3) == noise
    aug = DiffusionNoise(noise_step=step)
    assert round(aug.signal_scale, 3) == signal
    assert round(aug.noise_scale, 3) == noise
    assert aug.signal_scale**2 + aug.noise_scale**2 == pytest.approx(1.0, abs=1e-12)


def test_schedule_matches_independent_formula():
    # betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5; abar = cumprod(1 - betas)
    x = np.linspace(-6.0, 6.0, 1000)
    betas = 1.0 / (1.0 + np.exp(-x)) * (5e-3 - 1e-5) + 1e-5
    abar = np.cumprod(1.0 - betas)
    got = diffusion_schedule(1000)
    assert got.shape == (1000,)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np.sqrt(abar), rtol=1e-12, atol=0)
    # monotonically decreasing from ~1
    assert got[0].item() == pytest.approx(math.sqrt(1 - betas[0]), abs=1e-15)
    assert torch.all(got[1:] < got[:-1])


# ---------------------------------------------------------------- DiffusionNoise


def _images(batch: int = 3, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 6, generator=torch.Generator().manual_seed(123)).to(dtype)


def _independent_noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("step", [0, 500, 800, 999])
def test_diffusion_noise_formula(step):
    aug = DiffusionNoise(noise_step=step)
    images = _images()
    seeds = [11, 2**40 + 3, 7]
    out = aug(images, seeds)[0]
    sqrt_abar = math.sqrt(
        np.cumprod(1 - (1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (5e-3 - 1e-5) + 1e-5))[step]
    )
    eps = torch.stack([_independent_noise(images.shape[1:], s) for s in seeds])
    expected = sqrt_abar * images + math.sqrt(1 - sqrt_abar**2) * eps
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_diffusion_noise_same_seeds_same_output():
    aug = DiffusionNoise(noise_step=500)
    images = _images()
    a = aug(images, [1, 2, 3])[0]
    b = aug(images.clone(), [1, 2, 3])[0]
    assert torch.equal(a, b)
    c = aug(images, [1, 2, 4])[0]
    assert torch.equal(a[:2], c[:2])
    assert not torch.equal(a[2], c[2])
    # noise is fresh per image even when the images are identical
    same = images[:1].expand(2, -1, -1, -1)
    d = aug(same, [5, 6])[0]
    assert not torch.equal(d[0], d[1])


def test_diffusion_noise_sample_independent_of_batch():
    aug = DiffusionNoise(noise_step=800)
    images = _images()
    seeds = [31, 32, 33]
    batch = aug(images, seeds)[0]
    for i, seed in enumerate(seeds):
        alone = aug(images[i : i + 1], [seed])[0]
        assert torch.equal(batch[i], alone[0])
    # and of the order of the batch
    reordered = aug(images.flip(0), seeds[::-1])[0]
    assert torch.equal(reordered.flip(0), batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_diffusion_noise_preserves_shape_and_dtype(dtype):
    aug = DiffusionNoise(noise_step=500)
    images = _images(2, dtype)
    out = aug(images, [0, 1])[0]
    assert out.shape == images.shape
    assert out.dtype == dtype
    expected = aug(images.float(), [0, 1])[0]
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(out.float(), expected, atol=tol * 4, rtol=tol)


def test_diffusion_noise_record():
    aug = DiffusionNoise(noise_step=800)
    _, records = aug(_images(1), [np.int64(42)])
    assert records == [
        {
            "preset": "diffusion",
            "noise_step": 800,
            "num_steps": 1000,
            "space": "normalized",
            "seed": 42,
            "params": {"noise_step": 800},
        }
    ]
    assert type(records[0]["seed"]) is int


@pytest.mark.parametrize("step", [-1, 1000, 5000])
def test_diffusion_noise_invalid_step(step):
    with pytest.raises(ValueError, match="noise_step"):
        DiffusionNoise(noise_step=step)


def test_diffusion_noise_custom_num_steps_bounds():
    DiffusionNoise(noise_step=99, num_steps=100)
    with pytest.raises(ValueError):
        DiffusionNoise(noise_step=100, num_steps=100)


@pytest.mark.parametrize("seeds", [[1, 2], [1, 2, 3, 4], []])
def test_diffusion_noise_wrong_number_of_seeds(seeds):
    with pytest.raises(ValueError, match="seeds"):
        DiffusionNoise()(_images(3), seeds)


# ---------------------------------------------------------------- ImagePreprocessor


def _random_uint8(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_preprocessor_fill_is_llava_background():
    pre = ImagePreprocessor(32, CLIP_MEAN, CLIP_STD)
    # LLaVA: tuple(int(x * 255) for x in image_processor.image_mean) for CLIP
    assert pre.fill == [122, 116, 104]


@pytest.mark.parametrize(("h", "w"), [(20, 40), (21, 40), (40, 21), (40, 19)])
def test_preprocessor_pads_to_square_centred(h, w):
    side = max(h, w)
    pre = ImagePreprocessor(side, CLIP_MEAN, CLIP_STD)  # size == padded side: no resize
    image = _random_uint8(h, w)
    out = pre([image])
    assert out.shape == (1, 3, side, side)
    assert out.dtype == torch.float32
    fill = [int(m * 255) for m in CLIP_MEAN]
    # expand2square pastes at ((side - w) // 2, (side - h) // 2)
    top, left = (side - h) // 2, (side - w) // 2
    expected = torch.empty(3, side, side, dtype=torch.uint8)
    for c in range(3):
        expected[c].fill_(fill[c])
    expected[:, top : top + h, left : left + w] = image
    torch.testing.assert_close(out[0], _normalise(expected), atol=1e-6, rtol=0)
    # the band itself, by hand: (fill / 255 - mean) / std
    band = torch.ones(side, side, dtype=torch.bool)
    band[top : top + h, left : left + w] = False
    for c in range(3):
        want = (fill[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        values = out[0, c][band]
        assert values.numel() == side * side - h * w
        assert torch.allclose(values, torch.full_like(values, want), atol=1e-6, rtol=0)


def test_preprocessor_square_passthrough():
    pre = ImagePreprocessor(24, CLIP_MEAN, CLIP_STD)
    image = _random_uint8(24, 24, seed=1)
    out = pre([image])
    torch.testing.assert_close(out[0], _normalise(image), atol=1e-6, rtol=0)
    no_pad = ImagePreprocessor(24, CLIP_MEAN, CLIP_STD, pad_to_square=False)
    torch.testing.assert_close(no_pad([image])[0], _normalise(image), atol=1e-6, rtol=0)


def test_preprocessor_mixed_sizes():
    pre = ImagePreprocessor(32, CLIP_MEAN, CLIP_STD)
    images = [
        _random_uint8(20, 40),
        _random_uint8(50, 30, 1),
        _random_uint8(32, 32, 2),
        _random_uint8(7, 9, 3),
    ]
    out = pre(images)
    assert out.shape == (4, 3, 32, 32)
    assert out.dtype == torch.float32
    lo = (0 - max(CLIP_MEAN)) / min(CLIP_STD)
    hi = (1 - min(CLIP_MEAN)) / min(CLIP_STD)
    assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5
    torch.testing.assert_close(out[2], _normalise(images[2]), atol=1e-6, rtol=0)


def test_preprocessor_without_padding_centre_crops_shortest_edge():
    pre = ImagePreprocessor(20, CLIP_MEAN, CLIP_STD, pad_to_square=False)
    wide = _random_uint8(20, 40, seed=4)
    tall = _random_uint8(41, 20, seed=5)
    out = pre([wide, tall])
    assert out.shape == (2, 3, 20, 20)
    # shortest edge already 20: no resize, crop at ((40 - 20) // 2, (41 - 20) // 2)
    torch.testing.assert_close(out[0], _normalise(wide[:, :, 10:30]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], _normalise(tall[:, 10:30, :]), atol=1e-6, rtol=0)


def test_preprocessor_without_padding_resizes():
    pre = ImagePreprocessor(10, CLIP_MEAN, CLIP_STD, pad_to_square=False)
    # a horizontal ramp: resizing by 1/2 keeps it a ramp, cropping keeps the middle
    ramp = torch.linspace(0, 255, 40).round().to(torch.uint8).view(1, 1, 40).expand(3, 20, 40)
    out = pre([ramp.contiguous()])
    assert out.shape == (1, 3, 10, 10)
    resized = (
        F.interpolate(
            ramp[None].float(), size=(10, 20), mode="bicubic", antialias=True, align_corners=False
        )[0]
        .round()
        .clamp(0, 255)
    )
    torch.testing.assert_close(out[0], _normalise(resized[:, :, 5:15]), atol=1e-6, rtol=0)
    # the middle of a 0..255 ramp: columns 10..29 of the original, so 255*10/39 .. 255*29/39
    pixels = out[0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    assert pixels.min().item() * 255 > 255 * 9 / 39
    assert pixels.max().item() * 255 < 255 * 30 / 39
    assert torch.all(pixels[:, 1:] >= pixels[:, :-1])


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(3, 8, 8, dtype=torch.float32),
        torch.zeros(3, 8, 8, dtype=torch.int64),
        torch.zeros(1, 8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
        torch.zeros(8, 8, dtype=torch.uint8),
    ],
)
def test_preprocessor_rejects_bad_input(image):
    with pytest.raises(ValueError, match="uint8"):
        ImagePreprocessor(8, CLIP_MEAN, CLIP_STD)([image])


def _hf_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )


def test_from_image_processor_reads_settings():
    processor = _hf_processor()
    pre = ImagePreprocessor.from_image_processor(processor)
    assert pre.size == 32
    assert pre.pad_to_square
    torch.testing.assert_close(pre.mean.flatten(), torch.tensor(processor.image_mean))
    torch.testing.assert_close(pre.std.flatten(), torch.tensor(processor.image_std))
    assert pre.fill == [int(m * 255) for m in processor.image_mean]
    assert not ImagePreprocessor.from_image_processor(processor, pad_to_square=False).pad_to_square


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth shading + hard-edged discs + sensor noise: what photos do to a resampler."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.zeros((h, w, 3))
    for c in range(3):
        image[..., c] = 127 + 60 * np.sin(x / (20 + 7 * c) + c) + 40 * np.cos(y / (33 + 5 * c))
    for _ in range(8):
        cx, cy, radius = rng.integers(0, w), rng.integers(0, h), rng.integers(5, max(h, w) // 6)
        image[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.integers(0, 256, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image.round(), 0, 255).astype(np.uint8)


def _expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's own ``expand2square`` (llava/mm_utils.py)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


# Measured: at most one grey level anywhere (1 / 255 / min(std) = 0.0150 in normalised units);
# the bound leaves no room for a second level.
PARITY_BOUND = 0.02


@pytest.mark.parametrize("hw", [(480, 640), (640, 427), (1024, 768), (200, 300), (90, 100)])
@pytest.mark.parametrize("pad_to_square", [True, False])
def test_parity_with_hf_llava15_processor_on_photo_like_images(hw, pad_to_square) -> None:
    """LLaVA-1.5: expand2square (mean colour) + CLIPImageProcessor 336 (bicubic, centre crop)."""
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
        resample=Image.Resampling.BICUBIC,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    pre = ImagePreprocessor.from_image_processor(processor, pad_to_square=pad_to_square)
    array = _photo_like(*hw, seed=sum(hw))
    image = Image.fromarray(array)
    if pad_to_square:
        image = _expand2square(image, tuple(int(m * 255) for m in processor.image_mean))
    hf = processor(images=image, return_tensors="pt")["pixel_values"]
    ours = pre([torch.from_numpy(array).permute(2, 0, 1).contiguous()])
    assert ours.shape == hf.shape == (1, 3, 336, 336)
    diff = (ours - hf.float()).abs()
    assert diff.max().item() < PARITY_BOUND
    assert diff.mean().item() < 1e-3  # off-by-one levels are rare, not systematic


@pytest.mark.parametrize("hw", [(302, 453), (453, 302), (49, 60), (333, 500), (64, 64)])
@pytest.mark.parametrize("size", [32, 336])
def test_resize_shape_matches_transformers(hw: tuple[int, int], size: int) -> None:
    from transformers.image_transforms import get_resize_output_image_size

    pre = ImagePreprocessor(size, [0.5] * 3, [0.5] * 3, pad_to_square=False)
    expected = get_resize_output_image_size(np.zeros((*hw, 3)), size, default_to_square=False)
    assert pre.resize_shape(*hw) == tuple(expected)
    assert pre([torch.zeros((3, *hw), dtype=torch.uint8)]).shape == (1, 3, size, size)


def test_identity_returns_the_image_and_replays_exactly():
    from lightning_aug_dpo import Identity, replay

    images = torch.randn(3, 3, 16, 16)
    out, records = Identity()(images, [1, 2, 3])
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()
    assert [r["preset"] for r in records] == ["identity"] * 3
    assert torch.equal(replay(records[1], images[1]), images[1])
