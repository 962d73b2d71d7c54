"""Shared fixtures: a tiny LLaVA checkpoint and generated data, written once per session.

No test downloads anything: the checkpoint comes from ``models/tiny.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_aug_dpo.models.tiny import write_tiny_llava

    return write_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lightning_aug_dpo.demo import prepare_demo_assets

    out = tmp_path_factory.mktemp("demo_assets")
    return prepare_demo_assets(out, num_images=32, toy_world=False)


@pytest.fixture
def make_module(tiny_llava_dir: Path):
    """Build and configure a ``LlavaDPOModule`` on the tiny checkpoint (float32, CPU)."""
    from lightning_aug_dpo import LlavaDPOModule

    def build(**kwargs) -> LlavaDPOModule:
        kwargs.setdefault("lora_r", 8)
        kwargs.setdefault("lora_alpha", 16)
        torch.manual_seed(0)
        module = LlavaDPOModule(model_name_or_path=str(tiny_llava_dir), **kwargs)
        module.configure_model()
        return module

    return build


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_aug_dpo.models.tiny_qwen2_vl import write_tiny_qwen2_vl

    return write_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture
def make_qwen(tiny_qwen2_vl_dir: Path):
    """Build and configure a ``Qwen2VLDPOModule`` on the tiny checkpoint (float32, CPU)."""
    from lightning_aug_dpo import Qwen2VLDPOModule

    def build(**kwargs) -> Qwen2VLDPOModule:
        kwargs.setdefault("lora_r", 8)
        kwargs.setdefault("lora_alpha", 16)
        torch.manual_seed(0)
        module = Qwen2VLDPOModule(model_name_or_path=str(tiny_qwen2_vl_dir), **kwargs)
        module.configure_model()
        return module

    return build


def random_images(n: int, seed: int = 0) -> list[torch.Tensor]:
    """Non-square uint8 RGB images of varying size."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(40, 60), (72, 48), (64, 64), (30, 90)]
    return [
        torch.randint(0, 256, (3, *sizes[i % len(sizes)]), generator=g, dtype=torch.uint8)
        for i in range(n)
    ]


def make_batch(module, questions: list[str], chosen: list[str], rejected: list[str]):
    """A ``PreferenceBatch`` built by the module's own preprocessing and tokenisation."""
    from lightning_aug_dpo.types import PairStats, PreferenceBatch

    pixels = module.preprocess_images(random_images(len(questions)))
    n = len(questions)
    return PreferenceBatch(
        pixel_values=pixels,
        meta={"stats": PairStats(prompts=n, kept=n, identical=0)},
        **module.tokenize_pairs(questions, chosen, rejected),
    )
