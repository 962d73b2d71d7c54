"""Pair making from rollouts: one batched ``generate`` for both images, then the filters.

The clean and the augmented image of every prompt go through ONE ``generate`` call (a batch of
``2B`` rows with the same prompts, hence the same left padding): prefill and decode kernels see
twice the batch, which is what makes rollouts cheap on a GPU. With ``num_samples = k`` each row
returns ``k`` answers; answer ``s`` on the clean image is paired with answer ``s`` on the
augmented one.

Sampled rollouts draw from a generator seeded per batch (``seed``), so a rerun with the same
seed gives the same pairs; greedy rollouts do not depend on it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from lightning_aug_dpo.data.filters import PairFilter, first_reason
from lightning_aug_dpo.types import PairStats, Rollout, Sampling


@dataclass(frozen=True)
class Rollouts:
    """Answers of one batch, ``k = num_samples`` per prompt, listed prompt by prompt.

    ``chosen[i * k + s]`` is sample ``s`` on prompt ``i``'s clean image, ``rejected[i * k + s]``
    the same on its augmented image.
    """

    chosen: list[Rollout]
    rejected: list[Rollout]
    num_samples: int
    seconds: float

    def prompt_of(self, pair: int) -> int:
        return pair // self.num_samples


def roll_out(
    module: Any,
    clean: torch.Tensor,
    augmented: torch.Tensor,
    questions: list[str],
    max_new_tokens: int,
    use_reference: bool,
    sampling: Sampling,
    seed: int,
    return_logps: bool = False,
) -> Rollouts:
    """Answers on the clean and the augmented images from one ``module.rollout`` call.

    ``seed`` seeds the sampling draws (on a forked RNG: the caller's random state is left as
    it was); ``seconds`` is the wall time of the call, CUDA synchronised. ``return_logps`` asks
    for each answer's log-prob under the rollout model (``Rollout.logp``).
    """
    n, k = len(questions), sampling.num_samples
    devices = [clean.device] if clean.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        _synchronize(clean.device)
        start = time.perf_counter()
        answers = module.rollout(
            torch.cat([clean, augmented]),
            questions + questions,
            max_new_tokens,
            use_reference,
            sampling,
            return_logps=return_logps,
        )
        _synchronize(clean.device)
        seconds = time.perf_counter() - start
    return Rollouts(answers[: n * k], answers[n * k :], k, seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def select_pairs(
    rollouts: Rollouts, filters: list[PairFilter], prompts: int
) -> tuple[list[int], PairStats]:
    """Indices of the pairs that pass every filter (in order), and the step's statistics."""
    keep: list[int] = []
    dropped: Counter[str] = Counter()
    for index, (chosen, rejected) in enumerate(
        zip(rollouts.chosen, rollouts.rejected, strict=True)
    ):
        reason = first_reason(filters, chosen, rejected)
        if reason is None:
            keep.append(index)
        else:
            dropped[reason] += 1
    pairs = list(zip(rollouts.chosen, rollouts.rejected, strict=True))
    stats = PairStats(
        prompts=prompts,
        kept=len(keep),
        identical=sum(c.text == r.text for c, r in pairs),
        candidates=len(pairs),
        dropped=dict(dropped),
        chosen_tokens=sum(c.num_tokens for c in rollouts.chosen),
        rejected_tokens=sum(r.num_tokens for r in rollouts.rejected),
        finished=sum(c.finished + r.finished for c, r in pairs),
        rollout_seconds=rollouts.seconds,
    )
    return keep, stats


def pair_id(prompt_id: str, sample: int, num_samples: int) -> str:
    """A pair's id: the prompt's, with ``#s`` for sample ``s`` when there are several."""
    return prompt_id if num_samples == 1 else f"{prompt_id}#{sample}"


def prompt_id_of(row: dict[str, Any]) -> str:
    """The prompt id a written pair row came from (inverse of :func:`pair_id`)."""
    row_id = str(row["id"])
    return row_id.rsplit("#", 1)[0] if "sample" in row else row_id
