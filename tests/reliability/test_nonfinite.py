"""Non-finite loss or gradients: the step is skipped and counted (or the run stops), and no
adapter or checkpoint with NaN/Inf weights is ever written."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_batch
from torch.utils.data import DataLoader

from lightning_aug_dpo import SigmoidDPOLoss

QUESTIONS = ["What color is the circle?", "How many shapes?"]


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class FaultyLoss(SigmoidDPOLoss):
    """Sigmoid DPO whose loss (``bad="loss"``) or gradient (``bad="grad"``) is NaN on the
    calls listed in ``at``."""

    def __init__(self, bad: str, at: tuple[int, ...]) -> None:
        super().__init__(beta=0.1)
        self.bad, self.at, self.calls = bad, at, 0

    def pair_losses(self, inputs):
        losses = super().pair_losses(inputs)
        self.calls += 1
        if self.calls - 1 in self.at:
            losses = losses * float("nan") if self.bad == "loss" else _NaNGradient.apply(losses)
        return losses


def fit(make_module, tmp_path: Path, loss: FaultyLoss, steps: int = 3, **kwargs):
    module = make_module(loss=loss, **kwargs)
    batches = [make_batch(module, QUESTIONS, ["It is red.", "Two."], ["Blue.", "Three."])] * steps
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        default_root_dir=tmp_path,  # the adapter is written here at the end of fit
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-2)
    trainer.fit(module, train_dataloaders=loader)
    return module, trainer


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_nonfinite_step_is_skipped_and_counted(make_module, tmp_path, bad: str) -> None:
    module, trainer = fit(make_module, tmp_path / "faulty", FaultyLoss(bad, at=(1,)))
    assert module.nonfinite_steps == 1
    assert trainer.global_step == 3  # Lightning counts the step; no parameter moved in it
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in trainable)
    clean, _ = fit(make_module, tmp_path / "clean", FaultyLoss(bad, at=()), steps=2)
    # the skipped batch left no trace: the same weights as two good steps
    others = [p for p in clean.parameters() if p.requires_grad]
    for a, b in zip(trainable, others, strict=True):
        torch.testing.assert_close(a, b)


def test_on_nonfinite_error_stops_naming_the_step(make_module, tmp_path) -> None:
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at optimizer step 1"):
        fit(make_module, tmp_path, FaultyLoss("loss", at=(1,)), on_nonfinite="error")


def test_nan_weights_are_never_written(make_module, tmp_path) -> None:
    module = make_module()
    with torch.no_grad():
        next(p for p in module.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not writing the adapter"):
        module.save_adapter(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(FloatingPointError, match="not writing a checkpoint"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})


def test_a_step_without_update_repeats_no_earlier_values_in_the_log(make_module, tmp_path) -> None:
    """Lightning keeps a step's logged values until the epoch ends: a step without pairs must
    log a blank loss (not the previous step's), and a drop reason absent from a batch 0."""
    import csv
    import math

    from lightning.pytorch.loggers import CSVLogger

    from lightning_aug_dpo.types import PairStats, PreferenceBatch

    module = make_module()
    full = make_batch(module, QUESTIONS, ["It is red.", "Two."], ["Blue.", "Three."])
    full.meta["stats"] = PairStats(prompts=3, kept=2, identical=1, dropped={"identical": 1})
    empty = PreferenceBatch(
        pixel_values=full.pixel_values[:0],
        meta={"stats": PairStats(prompts=2, kept=0, identical=2, dropped={"identical": 2})},
        **module.tokenize_pairs([], [], []),
    )
    again = make_batch(module, QUESTIONS, ["It is red.", "Two."], ["Blue.", "Three."])
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader([full, empty, again], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f) if r.get("train/pairs/kept")}
    loss = [float(rows[s]["train/loss"]) for s in range(3)]
    assert math.isfinite(loss[0]) and math.isnan(loss[1]) and math.isfinite(loss[2])
    assert math.isnan(float(rows[1]["train/rewards/accuracies"]))
    assert [float(rows[s]["train/pairs/kept"]) for s in range(3)] == [2.0, 0.0, 2.0]
    assert [float(rows[s]["train/pairs/dropped/identical"]) for s in range(3)] == [1.0, 2.0, 0.0]
    assert float(rows[2]["train/pairs/empty_batches"]) == 1.0  # a run total: kept
