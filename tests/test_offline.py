"""Offline pairs: ``predict`` with configs/demo_rollout.yaml writes a pairs file that a rerun
resumes, and ``fit`` trains from such a file (and from SeVa's and TRL's), with x2 repetition."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_aug_dpo import AugPairDataModule, PairsWriter
from lightning_aug_dpo.callbacks.pairs_writer import read_done, summary_path
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.pairs import PairBatch
from lightning_aug_dpo.types import PairStats

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROLLOUT = ["--config", str(CONFIGS / "demo_rollout.yaml"), "--data.init_args.num_prompts=24"]
ROWS = {"id", "image", "prompt", "chosen", "rejected", "augmentation", "chosen_finished",
        "rejected_finished"}  # fmt: skip


@pytest.fixture
def demo_cwd(demo_assets, tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "demo_assets").symlink_to(demo_assets["model"].parent)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def predict(*args: str) -> AugPairDataModule:
    return cli_main(["predict", *ROLLOUT, *args]).datamodule


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_resumes_and_gives_the_same_pairs(demo_cwd: Path) -> None:
    out = demo_cwd / "runs" / "demo_rollout" / "pairs.jsonl"
    predict("--trainer.limit_predict_batches=1")  # an interrupted run: 1 batch of 3
    first = rows_of(out)
    assert len(read_done(out)) == 8 and 0 < len(first) <= 8
    assert all(set(row) == ROWS for row in first)
    summary = json.loads(summary_path(out).read_text())
    assert (summary["prompts"], summary["prompts_resumed"], summary["candidate_pairs"]) == (8, 0, 8)
    assert summary["pairs_kept"] == summary["pairs_in_file"] == len(first)
    assert summary["pairs_kept"] + sum(summary["pairs_dropped"].values()) == 8
    assert summary["identical_rate"] == summary["pairs_identical"] / 8
    assert 0.0 <= summary["rollout_eos_rate"] <= 1.0 and summary["rollout_tokens_per_s"] > 0

    data = predict()  # the rerun skips the 8 prompts already done
    assert len(data.skip_prompt_ids) == 8
    resumed = rows_of(out)
    assert resumed[: len(first)] == first and len(read_done(out)) == 24
    summary = json.loads(summary_path(out).read_text())  # this run's pairs, the whole file's rows
    counts = (summary["prompts"], summary["prompts_resumed"], summary["candidate_pairs"])
    assert counts == (16, 8, 16)
    assert summary["pairs_kept"] == len(resumed) - len(first)
    assert summary["pairs_in_file"] == len(resumed)

    fresh = demo_cwd / "fresh.jsonl"
    writer = {"class_path": "lightning_aug_dpo.PairsWriter",
              "init_args": {"output_path": str(fresh), "resume": False}}  # fmt: skip
    predict("--trainer.callbacks=[]", f"--trainer.callbacks+={json.dumps(writer)}")
    key = {row["id"]: row for row in rows_of(fresh)}
    assert {row["id"]: row for row in resumed} == key  # same seed, same pairs
    assert len(resumed) == len(key)  # no duplicates

    # the rerun with nothing left to do leaves the file as it is
    predict()
    assert rows_of(out) == resumed
    summary = json.loads(summary_path(out).read_text())
    assert (summary["prompts"], summary["prompts_resumed"], summary["pairs_kept"]) == (0, 24, 0)
    assert summary["pairs_in_file"] == len(resumed)


def test_pairs_writer_summary_sums_batches_and_drop_reasons(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n')
    writer = PairsWriter(str(out))
    writer.resumed_prompts = 3
    writer.count(
        PairStats(
            prompts=4,
            kept=1,
            identical=2,
            dropped={"identical": 2, "long": 1},
            chosen_tokens=10,
            rejected_tokens=6,
            finished=4,
            rollout_seconds=2.0,
        )
    )
    writer.count(PairStats(prompts=2, kept=1, identical=0, dropped={"long": 1}))
    writer.on_predict_end(SimpleNamespace(world_size=1, is_global_zero=True), None)
    assert json.loads(summary_path(out).read_text()) == {
        "pairs_path": str(out),
        "prompts": 6,
        "prompts_resumed": 3,
        "candidate_pairs": 6,
        "pairs_kept": 2,
        "pairs_identical": 2,
        "identical_rate": 2 / 6,
        "rollout_eos_rate": 4 / (2 * 6),
        "rollout_tokens_per_s": 16 / 2.0,
        "pairs_dropped": {"identical": 2, "long": 2},
        "pairs_in_file": 2,
    }
    printed = capsys.readouterr().out
    assert "predict summary" in printed
    assert "pairs dropped: long" in printed and "prompts resumed" in printed


def test_fit_trains_from_a_predicted_pairs_file_with_repetition(demo_cwd: Path) -> None:
    out = demo_cwd / "runs" / "demo_rollout" / "pairs.jsonl"
    predict()
    pairs = rows_of(out)
    args = ["fit", "--config", str(CONFIGS / "demo_mmvet.yaml"), "--data.init_args.data_path=null",
            f"--data.init_args.pairs_path={out}", "--data.init_args.pairs_repeat=2",
            "--data.init_args.num_prompts=null", "--data.init_args.num_val_prompts=0",
            "--trainer.max_epochs=1", "--trainer.callbacks=[]"]  # fmt: skip
    cli = cli_main(args)
    data = cli.datamodule
    assert len(data.train_prompts) == 2 * len(pairs)
    assert sorted(p.id for p in data.train_prompts) == sorted([r["id"] for r in pairs] * 2)
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        steps = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert len(steps) == -(-2 * len(pairs) // 8)  # every pair twice, batch 8
    assert all(r["train/pairs/identical_rate"] == "0.0" for r in steps)  # no rollouts
    assert "train/rollout/eos_rate" not in steps[0] or not steps[0]["train/rollout/eos_rate"]


def test_pairs_from_file_replay_the_augmented_image(make_module, demo_assets, tmp_path) -> None:
    """A pair written by predict becomes the same PreferenceBatch when read back (the
    augmented image replayed from its record); SeVa rows have no augmented image."""
    from test_datamodule import datamodule, prompt_batch

    module = make_module()
    online = datamodule(demo_assets, augmentation="diffusion").make_pairs(prompt_batch(4), module)
    rows = online.meta["rows"]
    assert rows
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = prompt_batch(4).images
    keep = [int(r["id"][1:]) for r in rows]
    offline_data = AugPairDataModule(pairs_path=str(path), image_folder=str(tmp_path))
    batch = PairBatch(
        ids=[r["id"] for r in rows],
        indices=list(range(len(rows))),
        image_paths=[r["image"] for r in rows],
        images=[images[i] for i in keep],
        questions=[r["prompt"] for r in rows],
        chosen=[r["chosen"] for r in rows],
        rejected=[r["rejected"] for r in rows],
        augmentations=[r["augmentation"] for r in rows],
        chosen_finished=[r["chosen_finished"] for r in rows],
        rejected_finished=[r["rejected_finished"] for r in rows],
    )
    offline = offline_data.pairs_from_file(batch, module)
    assert torch.equal(offline.pixel_values, online.pixel_values)
    assert torch.equal(offline.aug_pixel_values, online.aug_pixel_values)
    # answers cut by max_new_tokens stay without EOS when read back
    assert not all(r["chosen_finished"] and r["rejected_finished"] for r in rows)
    for name in ("prompt", "chosen", "rejected"):
        assert torch.equal(
            getattr(offline, f"{name}_input_ids"), getattr(online, f"{name}_input_ids")
        )
    seva = PairBatch(**{**batch.__dict__, "augmentations": [None] * len(rows)})
    assert offline_data.pairs_from_file(seva, module).aug_pixel_values is None


def test_datamodule_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match=r"exactly one of data\.data_path"):
        AugPairDataModule(image_folder=".")
    with pytest.raises(ValueError, match=r"exactly one of data\.data_path"):
        AugPairDataModule(data_path="a.json", pairs_path="p.jsonl")
    with pytest.raises(ValueError, match="pairs_repeat must be >= 1"):
        AugPairDataModule(pairs_path="p.jsonl", pairs_repeat=0)
