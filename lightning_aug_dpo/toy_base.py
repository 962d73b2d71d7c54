"""The toy base: a tiny LLaVA SFT-trained on the toy world, committed so the demo starts from it.

    python -m lightning_aug_dpo.toy_base                  # rebuild (about 15 min, one CPU thread)
    python -m lightning_aug_dpo.toy_base --check          # rebuild in a temp dir, compare bytes

Steps: write the random initial model (:data:`TOY_SPEC`, seed 0) and the toy world's train split
into ``--work`` (default ``runs/toy_base``), then run ``lightning-aug-dpo fit --config
configs/sft_toy.yaml`` (full fine-tuning, 2,000 steps of batch 32, seed 0) with one torch thread,
and copy its ``merged/`` export to :data:`TOY_BASE_DIR`. On CPU with one thread every step is
deterministic, so the rebuilt ``model.safetensors`` has the recorded SHA-256 (``SHA256`` below)
for the versions it was recorded with (``RECORDED_WITH``): float kernels and code paths move
between releases, so ``--check`` prints those versions beside the running ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

TOY_BASE_DIR = Path(__file__).resolve().parent / "assets" / "toy-llava-sft"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sft_toy.yaml"
# text 128 wide x 2 layers, vision 64 wide x 2 layers, 64 px images in 8 px patches (64 image
# tokens: with 16 px patches a model this small never learns from pixels), vocab 512
TOY_SPEC = {"hidden_size": 128, "intermediate_size": 256, "patch_size": 8, "seed": 0}
SHA256 = "fef225e4870deb465c4a09868d18f459f1f2d46c819084e6469054be2c2be76d"  # model.safetensors
# what SHA256 was recorded with, one CPU thread: a byte-identical rebuild holds for these
RECORDED_WITH = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "lightning": "2.6.6"}


def versions_note() -> str:
    """The recorded versions, and the running ones that differ from them."""
    recorded = ", ".join(f"{name} {version}" for name, version in RECORDED_WITH.items())
    differ = [
        f"{name} {metadata.version(name)}"
        for name, version in RECORDED_WITH.items()
        if metadata.version(name) != version
    ]
    running = f"this run differs: {', '.join(differ)}" if differ else "this run has the same"
    return f"recorded with {recorded}; {running}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare(work: Path) -> dict[str, Path]:
    """The random initial model and the world's train split under ``work``."""
    from lightning_aug_dpo.data.toy_world import write_toy_world
    from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava

    init = work / "init"
    if not (init / "config.json").is_file():
        write_tiny_llava(init, TinyLlavaSpec(**TOY_SPEC))
    world = work / "world"
    if not (world / "train.json").is_file():
        write_toy_world(world, splits=("train",))
    return {"init": init, "world": world}


def build(work: Path, out: Path) -> Path:
    """Train the base from ``work`` and copy the merged model to ``out``; returns ``out``."""
    import torch

    from lightning_aug_dpo.cli import cli_main

    torch.set_num_threads(1)  # determinism, and speed on a busy 2-core machine
    paths = prepare(work)
    runs = work / "runs"
    cli_main([
        "fit", "--config", str(CONFIG),
        "--model.init_args.model_name_or_path", str(paths["init"]),
        "--data.init_args.data_path", str(paths["world"] / "train.json"),
        "--data.init_args.image_folder", str(paths["world"] / "images"),
        "--trainer.default_root_dir", str(runs), "--trainer.logger.init_args.save_dir", str(runs),
    ])  # fmt: skip
    merged = max(runs.glob("sft_toy/version_*/merged"), key=lambda p: p.stat().st_mtime)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(merged, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/toy_base"), help="work folder")
    parser.add_argument("--out", type=Path, default=TOY_BASE_DIR, help="where the base goes")
    parser.add_argument("--prepare-only", action="store_true", help="write init + data only")
    parser.add_argument("--check", action="store_true",
                        help="rebuild in a temporary folder and compare with the committed base")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.prepare_only:
        for name, path in prepare(args.work).items():
            print(f"{name}: {path}")
        return 0
    if args.check:  # from nothing: a fresh work folder too
        print(f"toy base check: SHA-256 {SHA256[:12]}... {versions_note()}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            built = build(Path(tmp) / "work", Path(tmp) / "base")
            got = file_sha256(built / "model.safetensors")
    else:
        built = build(args.work, args.out)
        got = file_sha256(built / "model.safetensors")
    same = got == SHA256
    verdict = "matches the recorded build" if same else f"differs from the recorded {SHA256}"
    print(f"model.safetensors sha256 {got} ({verdict}; {versions_note()})")
    return 0 if same or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
