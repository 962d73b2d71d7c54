"""Write the embedded default's assets: a tiny LLaVA checkpoint and a generated dataset.

    python -m lightning_aug_dpo.demo [OUT_DIR]      # default: demo_assets/

Writes ``OUT_DIR/toy_world/`` (the toy world's unlabelled pool, validation and test splits: what
``configs/demo.yaml`` reads beside the committed toy base), ``OUT_DIR/tiny-llava/`` (a tiny random
Hugging Face checkpoint), ``OUT_DIR/data/llava/`` (LLaVA-665k-format data) and
``OUT_DIR/data/mmvet/`` (a toy MM-Vet-format benchmark), which ``configs/demo_mmvet.yaml``,
``configs/sft_demo.yaml`` and ``configs/demo_rollout.yaml`` read. Existing assets are kept
(delete the folder to rebuild).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_aug_dpo.data.synthetic import write_llava_dataset, write_mmvet_benchmark
from lightning_aug_dpo.data.toy_world import write_toy_world
from lightning_aug_dpo.models.tiny import write_tiny_llava


def prepare_demo_assets(
    out_dir: str | Path = "demo_assets", num_images: int = 96, toy_world: bool = True
) -> dict[str, Path]:
    """Write (or reuse) the demo's model and data; returns their paths."""
    out = Path(out_dir)
    paths = {
        "model": out / "tiny-llava",
        "prompts": out / "data" / "llava" / "llava_mix.json",
        "benchmark": out / "data" / "mmvet" / "mm-vet.json",
    }
    if not (paths["model"] / "config.json").exists():
        write_tiny_llava(paths["model"])
    if not paths["prompts"].exists():
        write_llava_dataset(paths["prompts"].parent, num_images=num_images, seed=0)
    if not paths["benchmark"].exists():
        write_mmvet_benchmark(paths["benchmark"].parent, num_questions=24, seed=1)
    if toy_world:
        paths["toy_world"] = out / "toy_world"
        if not (paths["toy_world"] / "world.json").exists():
            write_toy_world(paths["toy_world"], splits=("pool", "val", "test"))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo's tiny LLaVA and data.")
    parser.add_argument("out_dir", nargs="?", default="demo_assets")
    args = parser.parse_args(argv)
    for name, path in prepare_demo_assets(args.out_dir).items():
        print(f"{name:>9}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
