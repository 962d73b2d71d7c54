"""Token-level negative log-likelihood for supervised fine-tuning. Pure PyTorch, no Lightning.

Labels follow the transformers convention: aligned with ``input_ids`` (the shift is done here),
``IGNORE_INDEX`` (-100) on every position that is not trained on (prompt, user turns, role
headers, image tokens, padding).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over the labelled tokens of the whole batch, and their count.

    ``logits`` is ``(B, K, V)``: a causal LM's logits for the LAST ``K`` positions of a
    ``(B, L)`` sequence (``K = L`` for a plain forward, fewer with ``logits_to_keep``); token
    ``t`` is predicted by position ``t - 1``. With ``m[b, t] = labels[b, t] != -100``:

        loss = - sum_{b, t >= 1} m[b, t] * log_softmax(logits[b, t - 1])[labels[b, t]]
               / sum_{b, t >= 1} m[b, t]

    a token mean over the batch (a long answer weighs by its tokens, as in LLaVA's and TRL's
    SFT), in float32 whatever the logits' dtype. ``loss`` is 0 (still attached to the graph)
    when no token is labelled. Every labelled token must be predicted by a position that
    ``logits`` covers (``ValueError`` otherwise; see ``response_logits_to_keep``).
    """
    length = labels.shape[1]
    offset = length - logits.shape[1]  # position of logits[:, 0]
    mask = labels != IGNORE_INDEX
    mask[:, 0] = False  # nothing predicts the first token
    scored = mask.any(0).nonzero()
    if len(scored) and int(scored[0]) - 1 < offset:
        raise ValueError(
            f"logits cover positions {offset}..{length - 1} but position {int(scored[0]) - 1} "
            "predicts a labelled token; keep more logits (logits_to_keep)"
        )
    logits = logits[:, : logits.shape[1] - 1].float()  # position L-1 predicts nothing
    targets = labels[:, offset + 1 :]
    mask = mask[:, offset + 1 :]
    safe = targets.masked_fill(~mask, 0)
    # gather(logit) - logsumexp: no second (B, K, V) float32 tensor for a log-softmax.
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1)
    nll = (torch.logsumexp(logits, dim=-1) - picked) * mask
    count = mask.sum()
    return nll.sum() / count.clamp(min=1), count
