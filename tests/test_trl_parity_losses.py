"""Our losses against TRL's own loss code on random tensors (skipped where TRL is absent).

TRL 1.x has no standalone ``DPOTrainer.dpo_loss``: the loss is computed inside
``DPOTrainer._compute_loss(model, inputs, return_outputs)`` from the per-token log-probs that a
model patched by ``add_fused_lm_head`` returns for ``model(..., labels=..., fused_lm_head=True)``.
So these tests run that method unchanged on a trainer built without ``__init__``: a stub model
returns random per-token log-probs, reference log-probs come through TRL's precomputed-reference
path (``ref_chosen_logps`` / ``ref_rejected_logps`` inputs), and TRL's loss is compared with
ours fed the same sums and token counts. SimPO and cDPO are checked against
``CPOTrainer.cpo_loss`` (``trl.experimental.cpo``), which is a plain function of log-probs.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lightning_aug_dpo.losses import (
    CombinedLoss,
    HingeLoss,
    IPOLoss,
    PreferenceLoss,
    RobustDPOLoss,
    RPOLoss,
    SFTLoss,
    SigmoidDPOLoss,
    SimPOLoss,
)

dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")

BATCH, LENGTH = 6, 12


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(t: torch.Tensor) -> torch.Tensor:
        return t

    gather_for_metrics = gather


def _trl_dpo_loss(
    loss_types: list[str],
    loss_weights: list[float],
    beta: float,
    label_smoothing: float,
    per_token_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """TRL's DPOTrainer loss for a batch ``[chosen; rejected]`` of per-token log-probs."""
    trainer = dpo_trainer.DPOTrainer.__new__(dpo_trainer.DPOTrainer)
    trainer.__dict__.update(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    rows, width = per_token_logps.shape

    def model(**kwargs) -> SimpleNamespace:
        # What the fused LM head returns: per-token log-probs of the shifted labels (0 where the
        # label is -100) and the statistics TRL logs.
        return SimpleNamespace(
            log_probs=per_token_logps,
            entropy=torch.zeros(rows, width),
            mean_logits=torch.zeros(rows, width),
            is_top1=torch.zeros(rows, width, dtype=torch.bool),
        )

    inputs = {
        "input_ids": torch.zeros(rows, width + 1, dtype=torch.long),
        "attention_mask": torch.ones(rows, width + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer._compute_loss(model, inputs, return_outputs=False)


def _random_batch(seed: int) -> dict[str, torch.Tensor]:
    """Random per-token log-probs and completion masks of random lengths (some very short)."""
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * BATCH
    prompt = torch.randint(1, 4, (rows,), generator=gen)
    lengths = torch.randint(1, LENGTH - 4, (rows,), generator=gen)
    positions = torch.arange(LENGTH)
    mask = (positions >= prompt[:, None]) & (positions < (prompt + lengths)[:, None])
    per_token = -torch.rand(rows, LENGTH - 1, generator=gen, dtype=torch.float64) * 3
    per_token = per_token * mask[:, 1:]  # the fused head scores only completion tokens
    logps = per_token.sum(1)
    ref = logps + torch.randn(rows, generator=gen, dtype=torch.float64) * 2
    return {
        "per_token": per_token,
        "mask": mask.long(),
        "policy_chosen": logps[:BATCH],
        "policy_rejected": logps[BATCH:],
        "ref_chosen": ref[:BATCH],
        "ref_rejected": ref[BATCH:],
        "chosen_lengths": mask[:BATCH].sum(1),
        "rejected_lengths": mask[BATCH:].sum(1),
    }


def _ours(loss: PreferenceLoss, b: dict[str, torch.Tensor]) -> torch.Tensor:
    out = loss(
        b["policy_chosen"],
        b["policy_rejected"],
        b["ref_chosen"],
        b["ref_rejected"],
        chosen_lengths=b["chosen_lengths"],
        rejected_lengths=b["rejected_lengths"],
    )
    return out.loss


def _trl(b: dict[str, torch.Tensor], types, weights, beta, label_smoothing=0.0) -> torch.Tensor:
    return _trl_dpo_loss(
        types,
        weights,
        beta,
        label_smoothing,
        b["per_token"],
        b["mask"],
        b["ref_chosen"],
        b["ref_rejected"],
    )


CASES = [
    (lambda: SigmoidDPOLoss(beta=0.1), ["sigmoid"], [1.0], 0.0),
    (lambda: SigmoidDPOLoss(beta=0.7), ["sigmoid"], [1.0], 0.0),
    (lambda: IPOLoss(beta=0.1), ["ipo"], [1.0], 0.0),
    (lambda: IPOLoss(beta=1.3), ["ipo"], [1.0], 0.0),
    (lambda: HingeLoss(beta=0.1), ["hinge"], [1.0], 0.0),
    (lambda: HingeLoss(beta=0.9), ["hinge"], [1.0], 0.0),
    (lambda: RobustDPOLoss(beta=0.1, label_smoothing=0.0), ["robust"], [1.0], 0.0),
    (lambda: RobustDPOLoss(beta=0.3, label_smoothing=0.2), ["robust"], [1.0], 0.2),
    (lambda: SFTLoss(), ["sft"], [1.0], 0.0),
    (lambda: RPOLoss(beta=0.1, alpha=1.0), ["sigmoid", "sft"], [1.0, 1.0], 0.0),
    (lambda: RPOLoss(beta=0.2, alpha=0.3), ["sigmoid", "sft"], [1.0, 0.3], 0.0),
    (
        lambda: CombinedLoss([SigmoidDPOLoss(0.1), HingeLoss(0.1), IPOLoss(0.1)], [1.0, 0.5, 0.2]),
        ["sigmoid", "hinge", "ipo"],
        [1.0, 0.5, 0.2],
        0.0,
    ),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("build", "types", "weights", "label_smoothing"), CASES)
def test_matches_trl_dpo_trainer(build, types, weights, label_smoothing, seed):
    batch = _random_batch(seed)
    loss = build()
    beta = loss.beta
    want = _trl(batch, types, weights, beta, label_smoothing)
    got = _ours(loss, batch)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_trl_sigmoid_is_not_cdpo_in_this_version():
    # Document the TRL version boundary: TRL 1.x "sigmoid" ignores label_smoothing (cDPO was
    # dropped); our SigmoidDPOLoss keeps cDPO, checked against CPOTrainer below.
    batch = _random_batch(3)
    plain = _trl(batch, ["sigmoid"], [1.0], 0.1, label_smoothing=0.0)
    smoothed = _trl(batch, ["sigmoid"], [1.0], 0.1, label_smoothing=0.2)
    torch.testing.assert_close(plain, smoothed)


# ---------------------------------------------------------------- CPOTrainer: SimPO and cDPO


def _cpo(loss_type: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5):
    cpo = pytest.importorskip("trl.experimental.cpo")
    trainer = cpo.CPOTrainer.__new__(cpo.CPOTrainer)
    trainer.__dict__.update(
        accelerator=_Accelerator(),
        alpha=0.0,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
    )
    return trainer


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 1.0), (2.5, 1.4), (0.1, 0.5)])
def test_simpo_matches_trl_cpo_trainer(beta, gamma, seed):
    b = _random_batch(seed)
    # CPOTrainer averages log-probs over tokens for "simpo" before calling cpo_loss.
    avg_chosen = b["policy_chosen"] / b["chosen_lengths"]
    avg_rejected = b["policy_rejected"] / b["rejected_lengths"]
    losses, chosen_rewards, rejected_rewards = _cpo("simpo", beta, gamma=gamma).cpo_loss(
        avg_chosen, avg_rejected
    )
    out = SimPOLoss(beta=beta, gamma=gamma)(
        b["policy_chosen"],
        b["policy_rejected"],
        chosen_lengths=b["chosen_lengths"],
        rejected_lengths=b["rejected_lengths"],
    )
    torch.testing.assert_close(out.losses, losses, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, rejected_rewards, atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_cdpo_matches_trl_cpo_sigmoid_on_log_ratios(label_smoothing):
    # CPO's sigmoid loss is cDPO of its inputs' margin; fed the log-RATIOS it is DPO's cDPO.
    b = _random_batch(4)
    chosen_ratio = b["policy_chosen"] - b["ref_chosen"]
    rejected_ratio = b["policy_rejected"] - b["ref_rejected"]
    losses, _, _ = _cpo("sigmoid", 0.1, label_smoothing).cpo_loss(chosen_ratio, rejected_ratio)
    out = SigmoidDPOLoss(beta=0.1, label_smoothing=label_smoothing)(
        b["policy_chosen"], b["policy_rejected"], b["ref_chosen"], b["ref_rejected"]
    )
    torch.testing.assert_close(out.losses, losses, atol=1e-6, rtol=0)
