"""Two-process CPU DDP (gloo) on the demo, through the real CLI in subprocesses.

Lightning's DDP launcher re-runs the command line for rank 1, so these tests start
``python -m lightning_aug_dpo`` rather than calling the CLI in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_mmvet.yaml"
SMALL = ["--data.init_args.num_prompts=16", "--data.init_args.num_val_prompts=4"]


@pytest.fixture
def demo_cwd(demo_assets, tmp_path: Path) -> Path:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    return tmp_path


def run_cli(cwd: Path, command: str, *args: str, devices: int) -> None:
    """``lightning-aug-dpo COMMAND --config demo_mmvet.yaml ... ARGS`` (overrides after it)."""
    strategy = "ddp" if devices > 1 else "auto"
    cmd = [sys.executable, "-m", "lightning_aug_dpo", command, "--config", str(CONFIG), *SMALL,
           f"--trainer.devices={devices}", f"--trainer.strategy={strategy}", *args]  # fmt: skip
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_fit_completes_with_rank0_callbacks(demo_cwd: Path) -> None:
    """Rank-0-only callbacks (gallery, summary, adapter export) must not reach a collective
    alone, and a rank whose pairs are all filtered out must still join the step."""
    run_cli(demo_cwd, "fit", "--trainer.max_epochs=1", devices=2)
    run = demo_cwd / "runs" / "demo" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["prompt_visits"] == 16  # both ranks' shards, counted once each
    assert summary["prompts"] == 16
    assert summary["pairs_kept"] + summary["pairs_identical"] == 16
    assert (run / "gallery.html").is_file() and (run / "adapter" / "adapter_config.json").is_file()


def test_ddp_predict_gives_the_pairs_of_one_process(demo_cwd: Path) -> None:
    def predict(devices: int) -> dict[str, tuple]:
        out = demo_cwd / f"pairs{devices}.jsonl"
        writer = {"class_path": "lightning_aug_dpo.PairsWriter",
                  "init_args": {"output_path": str(out)}}  # fmt: skip
        run_cli(demo_cwd, "predict", f"--trainer.callbacks+={json.dumps(writer)}", devices=devices)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        ids = [row["id"] for row in rows]
        assert len(ids) == len(set(ids)), "the merged file has duplicate ids"
        return {row["id"]: (row["chosen"], row["rejected"], row["augmentation"]) for row in rows}

    single, double = predict(1), predict(2)
    assert single and single == double
    assert not list(demo_cwd.glob("pairs2.rank*.jsonl"))  # shards merged and removed
    # the summary sums both ranks' pair statistics: the same counts as one process
    one, two = (json.loads((demo_cwd / f"pairs{n}.jsonl.summary.json").read_text()) for n in (1, 2))
    keys = ["prompts", "candidate_pairs", "pairs_kept", "pairs_identical", "pairs_dropped"]
    assert {k: two[k] for k in keys} == {k: one[k] for k in keys}
    assert one["pairs_kept"] == two["pairs_in_file"] == len(double)
