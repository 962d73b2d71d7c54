"""Prefix sharing: several responses to one prompt scored in ONE row. Pure PyTorch.

In SeVa every pair's chosen and rejected answers follow the same long prompt (576 image tokens
and the question). Scoring them as two rows ``[prompt | chosen]`` and ``[prompt | rejected]``
computes the prompt twice; packing them as one row

    [ prompt | response 1 | response 2 | ... | pad ]

computes it once. Two things keep every response's log-probs those of its own plain row:

* **a block attention mask**: a prompt token sees the prompt before it (causal); a token of
  response k sees the whole prompt and the tokens of response k before it, never another
  response; padding sees nothing but itself;
* **positions that restart after the prompt**: response k's tokens take the positions they have
  in ``[prompt | response k]``. :func:`pack_shared_prompt` gives, per token, how far its position
  lies before its index in the packed row (``position_shift``), so that a family's own position
  rule (1-D for Llama, M-RoPE's 3-D ids for Qwen2-VL: responses are text, numbered on from the
  prompt) is applied to the packed row and then shifted back.

The first token of every response is predicted by the prompt's last position; any other token by
the position before it. :func:`shared_prompt_logprobs` gathers those predictions, so the sums
equal :func:`~lightning_aug_dpo.losses.logprobs.sequence_logprobs` over the plain rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PROMPT, PADDING = 0, -1


@dataclass(frozen=True)
class PackedRows:
    """Rows ``[prompt | response 1 | ... | response K | pad]``, flush-left, right-padded.

    Attributes (all ``(R, L)``):
        input_ids: the tokens, ``pad_id`` after the row's end.
        segment: ``0`` on prompt tokens, ``k`` on tokens of response ``k`` (1-based), ``-1`` on
            padding.
        position_shift: how far a token's position lies before its index in the row: 0 on the
            prompt and on response 1, the summed lengths of responses ``1..k-1`` on response k.
        predictor: the index of the position whose logits predict this token (``-1`` where the
            token is not scored: prompt and padding).
    """

    input_ids: torch.Tensor
    segment: torch.Tensor
    position_shift: torch.Tensor
    predictor: torch.Tensor
    num_responses: int

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(R, L)``, 1 on real tokens: the 2-D padding mask (the model gets
        :meth:`attention_bias`)."""
        return (self.segment != PADDING).long()

    def visible(self) -> torch.Tensor:
        """``(R, L, L)`` bool: query ``q`` may see key ``k`` (``k <= q`` and ``k`` in the prompt
        or in ``q``'s own response); a padding query sees only itself (no row is all-masked)."""
        length = self.input_ids.shape[1]
        index = torch.arange(length, device=self.segment.device)
        causal = index[None, :] <= index[:, None]  # (q, k)
        seg_q, seg_k = self.segment[:, :, None], self.segment[:, None, :]
        same_block = (
            ((seg_k == PROMPT) | (seg_k == seg_q)) & (seg_k != PADDING) & (seg_q != PADDING)
        )
        return (causal & same_block) | torch.eye(length, dtype=torch.bool, device=index.device)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`visible` as the additive ``(R, 1, L, L)`` mask a transformers model takes."""
        return additive_mask(self.visible(), dtype)

    @property
    def logits_to_keep(self) -> int:
        """Trailing positions whose logits :func:`shared_prompt_logprobs` needs: from the
        earliest prompt end on (``logits_to_keep`` of a transformers causal LM)."""
        scored = self.predictor[self.predictor >= 0]
        first = int(scored.min()) if len(scored) else 0
        return self.input_ids.shape[1] - first


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``(R, L, L)`` bool "may see" mask as an additive ``(R, 1, L, L)`` one in ``dtype``: 0
    where visible, the dtype's most negative value elsewhere."""
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return bias.masked_fill_(~visible, torch.finfo(dtype).min).unsqueeze(1)


def pack_shared_prompt(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    responses: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pad_id: int,
) -> PackedRows:
    """One row per prompt: its real (mask-selected) tokens, then each response's real tokens.

    ``prompt_ids``/``prompt_mask`` are ``(R, Lp)``; ``responses`` is K pairs of ``(R, Lk)`` ids
    and masks. Padding may sit on either side of the inputs. A response whose mask is all zero
    in a row is empty there (scores 0), so rows may carry different numbers of responses.
    """
    rows = []
    for i in range(len(prompt_ids)):
        prompt = prompt_ids[i][prompt_mask[i].bool()]
        answers = [ids[i][mask[i].bool()] for ids, mask in responses]
        rows.append((prompt, answers))
    length = max(len(p) + sum(len(a) for a in answers) for p, answers in rows)
    shape = (len(rows), length)
    input_ids = prompt_ids.new_full(shape, pad_id)
    segment = torch.full(shape, PADDING, dtype=torch.long, device=prompt_ids.device)
    position_shift = torch.zeros(shape, dtype=torch.long, device=prompt_ids.device)
    predictor = torch.full(shape, -1, dtype=torch.long, device=prompt_ids.device)
    for i, (prompt, answers) in enumerate(rows):
        end = len(prompt)
        input_ids[i, :end] = prompt
        segment[i, :end] = PROMPT
        start = end
        for k, answer in enumerate(answers, start=1):
            stop = start + len(answer)
            input_ids[i, start:stop] = answer
            segment[i, start:stop] = k
            position_shift[i, start:stop] = start - end
            # token t is predicted by t - 1, the first one by the prompt's last position
            predictor[i, start:stop] = torch.arange(start - 1, stop - 1)
            if stop > start:
                predictor[i, start] = end - 1
            start = stop
    return PackedRows(input_ids, segment, position_shift, predictor, len(responses))


def shared_prompt_logprobs(
    logits: torch.Tensor, packed: PackedRows
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and mean logits of every response of every packed row.

    ``logits`` is ``(R, K, V)``: the logits of the LAST ``K`` positions of ``packed.input_ids``
    (``K >= packed.logits_to_keep``). For response k of row r, with ``pred(t)`` its predictor,

        logp[r, k] = sum_{t in response k} log_softmax(logits[r, pred(t)])[input_ids[r, t]]

    in float32 whatever the logits' dtype, and ``mean_logit[r, k]`` the mean of
    ``logits[r, pred(t)]`` over those tokens and the vocabulary (TRL's ``logits/chosen``).
    Both are ``(R, num_responses)``; an empty response gives 0 and 0.
    """
    rows, cols = (packed.segment > PROMPT).nonzero(as_tuple=True)
    offset = packed.input_ids.shape[1] - logits.shape[1]  # position of logits[:, 0]
    predicting = packed.predictor[rows, cols] - offset
    if len(predicting) and int(predicting.min()) < 0:
        raise ValueError(
            f"logits start at position {offset} but position {int(predicting.min()) + offset} "
            "predicts a response token; keep at least packed.logits_to_keep positions"
        )
    selected = logits[rows, predicting].float()  # (N, V): one row per scored token
    targets = packed.input_ids[rows, cols]
    token_logps = selected.gather(1, targets[:, None]).squeeze(1) - selected.logsumexp(-1)
    slot = rows * packed.num_responses + packed.segment[rows, cols] - 1
    size = len(packed.input_ids) * packed.num_responses
    logp = token_logps.new_zeros(size).index_add(0, slot, token_logps)
    logit_sums = token_logps.new_zeros(size).index_add(0, slot, selected.mean(-1))
    counts = token_logps.new_zeros(size).index_add(0, slot, torch.ones_like(token_logps))
    mean_logit = logit_sums / counts.clamp(min=1)
    shape = (len(packed.input_ids), packed.num_responses)
    return logp.view(shape), mean_logit.view(shape)
