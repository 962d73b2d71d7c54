"""Sequence log-probabilities for preference losses. Pure PyTorch: no Lightning, no transformers.

Conventions (those of TRL's DPOTrainer): a sequence is ``prompt + response``; its log-probability
is the SUM over response tokens of ``log p(token_t | tokens_<t)``. Padding and prompt positions are
excluded through a loss mask aligned with ``input_ids``.
"""

from __future__ import annotations

import torch


def concat_prompt_response(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Join each row's real prompt tokens with its real response tokens, right-padded.

    Padding may sit on either side of the inputs; only masked-in tokens are kept, so the result
    does not depend on how the batch was padded (positions start at 0 in every row).

    Returns ``(input_ids, attention_mask, loss_mask)``, each ``(B, L)``; ``loss_mask`` is 1 on
    response tokens only.
    """
    rows = []
    for p, pm, r, rm in zip(prompt_ids, prompt_mask, response_ids, response_mask, strict=True):
        prompt, response = p[pm.bool()], r[rm.bool()]
        rows.append((prompt, response))
    length = max(len(p) + len(r) for p, r in rows)
    batch = len(rows)
    input_ids = prompt_ids.new_full((batch, length), pad_id)
    attention_mask = prompt_mask.new_zeros((batch, length))
    loss_mask = prompt_mask.new_zeros((batch, length))
    for i, (prompt, response) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(response)
        input_ids[i, :n_p] = prompt
        input_ids[i, n_p:n] = response
        attention_mask[i, :n] = 1
        loss_mask[i, n_p:n] = 1
    return input_ids, attention_mask, loss_mask


def response_logits_to_keep(loss_mask: torch.Tensor) -> int:
    """How many trailing positions' logits :func:`sequence_logprobs` needs: from the position
    that predicts the batch's first response token to the end (``logits_to_keep`` of a
    transformers causal LM). Image and prompt positions before it need no LM head."""
    scored = loss_mask[:, 1:].any(0).nonzero()
    first_predicting = int(scored[0]) if len(scored) else 0  # position t-1 predicts token t
    return loss_mask.shape[1] - first_predicting


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and mean response logits per row.

    ``logits`` is ``(B, K, V)``: a causal LM's logits for the LAST ``K`` positions of
    ``input_ids`` ``(B, L)`` (``K = L`` for a plain forward; fewer with ``logits_to_keep``, see
    :func:`response_logits_to_keep`); token t is predicted by position t-1, so

        logp[b] = sum_{t >= 1} loss_mask[b, t] * log_softmax(logits[b, t-1])[input_ids[b, t]]

    The log-softmax is taken in float32 whatever the logits' dtype. Returns ``(logp, mean_logit)``,
    both ``(B,)``; ``mean_logit`` is the mean over response positions and the vocabulary (TRL's
    ``logits/chosen`` statistic).
    """
    # Only positions that predict a response token matter: skip the image and prompt positions
    # shared by every row before up-casting, so the float32 copy is response-sized.
    length = input_ids.shape[1]
    offset = length - logits.shape[1]  # position of logits[:, 0]
    start = length - response_logits_to_keep(loss_mask)
    if start < offset:
        raise ValueError(
            f"logits cover positions {offset}..{length - 1} but position {start} predicts a "
            "response token; keep at least response_logits_to_keep(loss_mask) positions"
        )
    logits = logits[:, start - offset : length - 1 - offset].float()
    targets = input_ids[:, start + 1 :]
    mask = loss_mask[:, start + 1 :].to(logits.dtype)
    # gather(logit) - logsumexp avoids materialising a second (B, L, V) log-softmax tensor.
    token_logits = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1)
    token_logps = token_logits - torch.logsumexp(logits, dim=-1)
    logp = (token_logps * mask).sum(-1)
    n_tokens = mask.sum(-1).clamp(min=1)
    mean_logit = (logits.mean(-1) * mask).sum(-1) / n_tokens
    return logp, mean_logit
