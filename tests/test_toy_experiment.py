"""The toy experiment's parts: the committed base, its configs, before -> after, the aggregation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lightning_aug_dpo import LlavaDPOModule, ToyWorldCallback
from lightning_aug_dpo.cli import cli_main
from lightning_aug_dpo.data.toy_world import write_toy_world
from lightning_aug_dpo.eval.generate import generate_answers
from lightning_aug_dpo.eval.toy_world import load_toy_benchmark, score_descriptions
from lightning_aug_dpo.toy_base import SHA256, TOY_BASE_DIR, TOY_SPEC, file_sha256

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import toy_world as experiment  # noqa: E402

CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "world"
    write_toy_world(root, {"train": 16, "pool": 16, "val": 8, "test": 24})
    return root


def test_the_committed_base_is_the_recorded_build() -> None:
    weights = TOY_BASE_DIR / "model.safetensors"
    assert weights.stat().st_size < 5 * 2**20
    assert file_sha256(weights) == SHA256  # what `python -m lightning_aug_dpo.toy_base` rebuilds
    config = json.loads((TOY_BASE_DIR / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == TOY_SPEC["hidden_size"]
    assert config["vision_config"]["patch_size"] == TOY_SPEC["patch_size"]


def test_the_base_is_trained_but_imperfect(world: Path) -> None:
    """The base sees: it names most objects of held-out scenes (a random model names none),
    with the scene records as the judge; and it still hallucinates some."""
    torch.manual_seed(0)
    module = LlavaDPOModule(str(TOY_BASE_DIR))
    module.configure_model()
    bench = load_toy_benchmark(world / "test", world / "images", pope=False)
    answers = generate_answers(
        module.eval(), bench.questions, bench.images, max_new_tokens=64, batch_size=24
    )
    metrics = score_descriptions(bench.scenes, answers)
    assert metrics["coverage"] > 0.5 and metrics["count_errors"] < 0.3
    assert 0.0 < metrics["chair_s"] < 0.8


@pytest.mark.parametrize(
    ("base", "overlay"),
    [
        ("seva_toy.yaml", "toy/length_control.yaml"),
        ("seva_toy.yaml", "toy/audit_pairs.yaml"),
        ("sft_toy.yaml", "toy/sft_continued.yaml"),
    ],
)
def test_toy_overlays_compose(base: str, overlay: str) -> None:
    folder = ROOT / "configs"
    configs = ["--config", str(folder / base), "--config", str(folder / overlay)]
    cli = cli_main([*configs, *CPU], run=False)
    hp = cli.model.hparams
    if overlay.endswith("length_control.yaml"):
        assert type(cli.model.loss).__name__ == "RPOLoss" and hp.modules_to_save is None
        assert type(cli.datamodule.filters[-1]).__name__ == "LengthMatchFilter"
    if overlay.endswith("sft_continued.yaml"):
        assert hp.finetune == "lora" and not hp.train_vision_tower
        assert Path(hp.model_name_or_path).name == TOY_BASE_DIR.name
        assert cli.trainer.max_steps == 64
    if overlay.endswith("audit_pairs.yaml"):
        assert cli.datamodule.hparams.drop_identical is False


def test_before_and_after_with_a_zero_learning_rate_are_equal(world: Path, tmp_path: Path):
    """The demo's before -> after table: with lr 0 training changes nothing, so the two rows
    must be equal (the same questions, the same greedy answers)."""
    run = tmp_path / "runs"
    callback = {
        "class_path": "lightning_aug_dpo.ToyWorldCallback",
        "init_args": {"split_dir": str(world / "test"), "limit": 6, "before": True,
                      "max_new_tokens": 48, "batch_size": 64},
    }  # fmt: skip
    cli = cli_main([
        "fit", "--config", str(ROOT / "configs" / "seva_toy.yaml"), *CPU,
        "--model.init_args.model_name_or_path", str(TOY_BASE_DIR),
        "--model.init_args.optimizer.init_args.lr", "0.0",
        "--data.init_args.data_path", str(world / "pool.jsonl"),
        "--data.init_args.image_folder", str(world / "images"),
        "--data.init_args.num_prompts", "16", "--data.init_args.max_new_tokens", "16",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run),
        "--trainer.logger.init_args.save_dir", str(run),
        "--trainer.callbacks", json.dumps([callback]),
    ])  # fmt: skip
    assert any(isinstance(c, ToyWorldCallback) for c in cli.trainer.callbacks)
    root = Path(cli.trainer.log_dir) / "eval" / "toy"
    rows = json.loads((root / "before_after.json").read_text())
    assert rows["unit"] == "percent" and rows["descriptions"] == 6 and rows["probes"] == 36
    assert rows["before"]["toy/coverage"] > 30.0  # percent, not a fraction
    assert rows["after"] == pytest.approx(rows["before"], abs=0)
    assert set(rows["change"].values()) == {0.0} and set(rows["verdict"].values()) == {"same"}
    # 6 images x 3 samplings x (one yes, one no): answering yes scores F1 2/3, accuracy 1/2
    assert rows["baselines"]["always yes"]["toy/pope/mean/f1"] == pytest.approx(66.6667)
    assert rows["baselines"]["always yes"]["toy/pope/mean/accuracy"] == 50.0
    assert (root / "before" / "answers.jsonl").read_text() == (
        root / "epoch=0" / "answers.jsonl"
    ).read_text()
    table = (root / "before_after.md").read_text()
    assert "before" in table and "always yes" in table and "verdict" in table


def test_experiment_aggregates_mean_and_population_std() -> None:
    runs = [{"toy/chair_i": 0.2}, {"toy/chair_i": 0.3}, {"toy/chair_i": 0.4}]
    agg = experiment.aggregate(runs)["toy/chair_i"]
    assert agg["mean"] == pytest.approx(0.3)
    assert agg["std"] == pytest.approx(math.sqrt(((0.1**2) * 2) / 3))
    metrics = {k: 0.5 for k in experiment.HEADLINE}
    table = experiment.format_rows({"base": [metrics], "seva": [metrics, metrics]})
    assert "| base | 1 | 50.0 |" in table and "| seva | 2 | 50.0 ± 0.0 |" in table


def test_negated_mentions_name_nothing_and_counts_above_three_parse() -> None:
    from lightning_aug_dpo.eval.toy_world import parse_count, parse_mentions

    text = "No, there is no small blue square here. There is a large red circle on the left."
    assert [m.name for m in parse_mentions(text)] == ["red circle"]
    assert parse_mentions("There is not a red circle.") == []
    assert parse_count("There are four shapes.") == 4 and parse_count("two shapes") == 2


class _Raises:
    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) on a resumed run")


def test_before_is_kept_across_a_resume_and_never_rescored(world: Path) -> None:
    from types import SimpleNamespace

    cb = ToyWorldCallback(split_dir=str(world / "test"), before=True)
    cb.before_metrics = {"toy/chair_i": 0.25}
    again = ToyWorldCallback(split_dir=str(world / "test"), before=True)
    again.load_state_dict(cb.state_dict())
    assert again.before_metrics == {"toy/chair_i": 0.25}
    resumed = ToyWorldCallback(split_dir=str(world / "test"), before=True)
    resumed.on_train_start(SimpleNamespace(global_step=5), _Raises())  # checkpoint without them
    assert resumed.before_metrics is None
    trainer = SimpleNamespace(current_epoch=1, max_epochs=10, max_steps=20, global_step=20)
    assert ToyWorldCallback._last(trainer)  # max_steps ends the run before max_epochs
