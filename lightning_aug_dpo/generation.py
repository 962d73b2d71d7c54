"""Answers from the module: batched rollouts, and their tokenisation as DPO responses.

:class:`RolloutMixin` is the half of :class:`~lightning_aug_dpo.module.AugDPOModule` that the
DataModule and the evaluation callbacks call: ``rollout`` / ``generate`` (ONE ``generate`` call
per batch: left padding, KV cache, EOS and stop strings, greedy or sampled) and
``tokenize_pairs``. It uses the module's model-specific hooks (``format_prompt``,
``expand_image_tokens``, ``format_response``, ``generation_kwargs``, ``vision_inputs``) and its
``tokenizer``, ``active_model``, ``reference_context``, ``compute_dtype`` and ``device``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from lightning_aug_dpo.types import Rollout, Sampling


@contextmanager
def eval_mode(module: nn.Module):
    """Temporarily switch off dropout (and gradient checkpointing) for generation."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def generated_lengths(
    new_tokens: torch.Tensor, eos_id: int, pad_id: int | None
) -> tuple[list[int], list[bool]]:
    """Per row of generated ids: tokens generated (through the first EOS) and whether EOS came.

    ``generate`` fills a row with pad after it finished (EOS or a stop string), so the length
    runs to the first EOS (included) or, failing that, the first pad.
    """
    width = new_tokens.shape[1]
    if width == 0:
        return [0] * new_tokens.shape[0], [False] * new_tokens.shape[0]
    is_eos = new_tokens == eos_id
    ends = is_eos | (new_tokens == pad_id) if pad_id is not None else is_eos
    positions = torch.arange(width, device=new_tokens.device).expand_as(new_tokens)
    first_end = torch.where(ends, positions, width).min(-1).values
    eos_at_end = is_eos.gather(1, first_end.clamp(max=width - 1)[:, None]).squeeze(1)
    eos_at_end &= first_end < width
    lengths = first_end + eos_at_end.long()
    return lengths.tolist(), eos_at_end.tolist()


def token_logps_sum(
    step_logits: tuple[torch.Tensor, ...], new_tokens: torch.Tensor, lengths: list[int]
) -> list[float]:
    """Summed log-probs of each row's first ``lengths[i]`` generated tokens, from the raw
    per-step logits ``generate(output_logits=True)`` returns (fp32 log-softmax, one step at a
    time so that no (rows, steps, vocab) float32 copy is made)."""
    total = torch.zeros(new_tokens.shape[0], dtype=torch.float32, device=new_tokens.device)
    limit = torch.tensor(lengths, device=new_tokens.device)
    for t, logits in enumerate(step_logits):
        token = new_tokens[:, t : t + 1]
        logp = logits.float().log_softmax(-1).gather(1, token).squeeze(1)
        total += torch.where(t < limit, logp, torch.zeros_like(logp))
    return total.tolist()


def cut_at_stop(text: str, stop_strings: list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class RolloutMixin:
    """Generation and response tokenisation for :class:`AugDPOModule` (see module docstring)."""

    def prompt_texts(self, questions: list[str]) -> list[str]:
        return [self.expand_image_tokens(self.format_prompt(q)) for q in questions]

    @torch.no_grad()
    def rollout(
        self,
        pixel_values: torch.Tensor,
        questions: list[str],
        max_new_tokens: int = 64,
        use_reference: bool = True,
        sampling: Sampling | None = None,
        return_logps: bool = False,
    ) -> list[Rollout]:
        """Answers to ``questions`` about ``pixel_values`` (normalised, on device), ONE
        ``generate`` call for the whole batch: left padding, KV cache, EOS and stop strings.

        ``use_reference`` generates with adapters disabled (the initial model, as SeVa's
        pairs); otherwise with the current policy. ``sampling`` (default: greedy, one answer)
        may ask for ``num_samples`` answers per row, returned row by row: ``[q0 s0, q0 s1, ...,
        q1 s0, ...]``. Random draws come from torch's global generator: seed it around the
        call for reproducible samples. ``no_grad`` rather than ``inference_mode``: the outputs
        are trained on later. ``Rollout.finished`` tells whether the answer ended by itself
        (EOS or a stop string): a cut-off answer must not be taught to end there.
        """
        if not questions:
            return []
        sampling = sampling or Sampling()
        tok = self.tokenizer
        enc = tok(
            self.prompt_texts(questions), return_tensors="pt", padding=True, padding_side="left"
        ).to(self.device)
        kwargs = self.generation_kwargs(max_new_tokens)
        if sampling.do_sample:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.num_samples > 1:
            kwargs["num_return_sequences"] = sampling.num_samples
        if sampling.stop_strings:
            kwargs.update(stop_strings=list(sampling.stop_strings), tokenizer=tok)
        if return_logps:  # raw logits of every step (before temperature or suppression)
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        context = self.reference_context() if use_reference else nullcontext()
        with context, eval_mode(self.active_model):
            out = self.active_model.generate(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                **self.vision_inputs(pixel_values, enc.input_ids),
                **kwargs,
            )
        sequences = out.sequences if return_logps else out
        new_tokens = sequences[:, enc.input_ids.shape[1] :]
        texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
        lengths, ended = generated_lengths(new_tokens, tok.eos_token_id, tok.pad_token_id)
        logps = token_logps_sum(out.logits, new_tokens, lengths) if return_logps else None
        rollouts = []
        for i, (text, length, eos) in enumerate(zip(texts, lengths, ended, strict=True)):
            text, stopped = cut_at_stop(text, sampling.stop_strings)
            ids = tuple(new_tokens[i, :length].tolist())
            logp = logps[i] if logps is not None else None
            rollouts.append(Rollout(text.strip(), eos or stopped, length, ids, logp))
        return rollouts

    def generate(
        self,
        pixel_values: torch.Tensor,
        questions: list[str],
        max_new_tokens: int = 64,
        use_reference: bool = True,
        sampling: Sampling | None = None,
    ) -> list[str]:
        """The answer texts of :meth:`rollout`."""
        rollouts = self.rollout(pixel_values, questions, max_new_tokens, use_reference, sampling)
        return [r.text for r in rollouts]

    def tokenize_pairs(
        self,
        questions: list[str],
        chosen: list[str],
        rejected: list[str],
        chosen_finished: list[bool] | None = None,
        rejected_finished: list[bool] | None = None,
        chosen_ids: list[tuple[int, ...]] | None = None,
        rejected_ids: list[tuple[int, ...]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token tensors of :class:`PreferenceBatch` (right-padded, on this module's device).

        A response is tokenised together with its prompt and split at the prompt's length (as
        TRL does), so SentencePiece tokenizers see the same word boundaries as in generation.
        EOS is appended to finished answers only (default: all finished, e.g. offline pairs).
        ``chosen_ids`` / ``rejected_ids``: the generated token ids (EOS included when
        generated) to use instead of tokenising the texts: DPO then scores exactly the tokens
        the rollout produced. Responses are cut to ``max_length`` with the prompt either way.
        """
        tok, max_len = self.tokenizer, self.hparams.max_length
        prompt_texts = self.prompt_texts(questions)
        prompts = [tok(p).input_ids for p in prompt_texts]

        def responses(
            texts: list[str], finished: list[bool] | None, given: list[tuple[int, ...]] | None
        ) -> list[list[int]]:
            if given is not None:
                pairs = zip(prompts, given, strict=True)
                return [list(ids)[: max(1, max_len - len(p))] for p, ids in pairs]
            finished = finished if finished is not None else [True] * len(texts)
            rows = []
            for prompt_text, prompt, text, done in zip(
                prompt_texts, prompts, texts, finished, strict=True
            ):
                response = self.format_response(text)
                full = tok(prompt_text + response).input_ids
                if full[: len(prompt)] == prompt:
                    ids = full[len(prompt) :]
                else:  # a merge across the boundary: fall back to the response on its own
                    ids = tok(response, add_special_tokens=False).input_ids
                ids = [*ids, tok.eos_token_id] if done else ids
                rows.append(ids[: max(1, max_len - len(prompt))])
            return rows

        out = {}
        for name, rows in (
            ("prompt", prompts),
            ("chosen", responses(chosen, chosen_finished, chosen_ids)),
            ("rejected", responses(rejected, rejected_finished, rejected_ids)),
        ):
            ids, mask = right_pad(rows, tok.pad_token_id)
            out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = ids, mask
        return {k: v.to(self.device) for k, v in out.items()}
