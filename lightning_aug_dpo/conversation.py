"""Conversations as token sequences for supervised fine-tuning, from the family's own hooks.

:class:`ConversationMixin` is the half of :class:`~lightning_aug_dpo.module.AugDPOModule` that
turns ``(role, text)`` turns into ``input_ids`` and ``labels``. It needs nothing per family: the
segments come from the processor's chat template, rendered prefix by prefix, the answers from
``format_response``, the end of each answer is the tokenizer's EOS (as in the DPO path), the
image placeholder is expanded by ``expand_image_tokens``. So a new family gets multi-turn SFT
with the hooks it already has, and a single-turn conversation is token for token the DPO
path's ``format_prompt(question)`` + ``format_response(answer)`` + EOS.

The text is tokenised in one pass (offsets assign tokens to segments: ~6 ms for a 10-round,
2k-token row on one core, where tokenising every prefix took 30 ms); the prefix split of the
DPO path is the fallback where a token straddles a segment boundary.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch

from lightning_aug_dpo.generation import right_pad
from lightning_aug_dpo.losses import IGNORE_INDEX
from lightning_aug_dpo.types import Turns
from lightning_aug_dpo.validation import PROMPT_TOO_LONG

#: A sequence was cut at ``max_length`` inside or before a later answer (counted, kept).
TRUNCATED = "truncated"


class ConversationMixin:
    """Conversation formatting and tokenisation for :class:`AugDPOModule` (module docstring)."""

    def chat_messages(self, turns: Turns) -> list[dict[str, Any]]:
        """Chat-template messages of ``turns``: the first user turn carries the image, as in
        :meth:`format_prompt` (a family overriding that overrides this too)."""
        messages = []
        for i, (role, text) in enumerate(turns):
            content: list[dict[str, str]] = [{"type": "text", "text": text}]
            if i == 0:
                content.insert(0, {"type": "image"})
            messages.append({"role": role, "content": content})
        return messages

    def format_conversation(self, turns: Turns) -> list[tuple[str, bool]]:
        """``(text, trained)`` segments of a conversation; their concatenation is the sequence.

        Built from the chat template by rendering prefixes: before assistant turn ``k`` the
        untrained segment is what the template adds up to its generation prompt (system text,
        the user turn, role headers; the first one holds the image placeholder); then the
        answer as :meth:`format_response` writes it and the EOS token, both trained. What the
        template puts after an answer (besides an EOS of its own: ``\\n`` in ChatML, a space in
        llava-hf's) opens the next untrained segment. ``ValueError`` for a template that does
        not render conversations as growing prefixes: override this hook for such a family.
        """
        render = self.processor.apply_chat_template
        messages = self.chat_messages(turns)
        eos = self.tokenizer.eos_token
        segments: list[tuple[str, bool]] = []
        rendered, carry = "", ""  # template text accounted for; untrained text owed
        for k, (role, text) in enumerate(turns):
            if role != "assistant":
                continue
            prompt = render(messages[:k], add_generation_prompt=True)
            full = render(messages[: k + 1])
            response = self.format_response(text)
            if not prompt.startswith(rendered) or not full[len(prompt) :].startswith(response):
                raise ValueError(
                    f"{type(self).__name__}: the chat template does not render turn {k} as a "
                    f"continuation of the earlier turns followed by format_response(answer) "
                    f"({response!r}); rendered {full!r}. Override format_conversation for "
                    "this family"
                )
            segments.append((carry + prompt[len(rendered) :], False))
            segments += [(response, True), (eos, True)]
            tail = full[len(prompt) + len(response) :]
            carry = tail[len(eos) :] if tail.startswith(eos) else tail
            rendered = full
        return segments

    def conversation_tokens(self, turns: Turns) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation and, per token, whether it is trained on.

        The whole text is tokenised once and each token goes to the segment its first
        character is in (the tokens the model sees for the full conversation). Where a token
        straddles two segments, or an EOS segment is not the EOS token, the row falls back to
        :meth:`prefix_tokens`.
        """
        tok = self.tokenizer
        segments = self.format_conversation(turns)
        texts = [text for text, _ in segments]
        texts[0] = self.expand_image_tokens(texts[0])  # the first user turn holds the image
        enc = tok("".join(texts), return_offsets_mapping=True)
        ends = list(accumulate(len(t) for t in texts))
        eos = {i: [] for i, (text, train) in enumerate(segments) if train and text == tok.eos_token}
        ids, trained, segment = list(enc.input_ids), [], 0
        for token, (first, last) in zip(ids, enc.offset_mapping, strict=True):
            while segment < len(ends) - 1 and first >= ends[segment]:
                segment += 1
            if last > ends[segment]:  # a merge across a boundary
                return self.prefix_tokens(segments, texts)
            trained.append(segments[segment][1])
            if segment in eos:
                eos[segment].append(token)
        if any(tokens != [tok.eos_token_id] for tokens in eos.values()):
            return self.prefix_tokens(segments, texts)  # e.g. special tokens split as text
        return ids, trained

    def prefix_tokens(
        self, segments: list[tuple[str, bool]], texts: list[str]
    ) -> tuple[list[int], list[bool]]:
        """The tokens of :meth:`conversation_tokens` where one pass cannot split them: each
        segment tokenised with everything before it and split at the previous length (as
        :meth:`tokenize_pairs` does for responses), or on its own where a merge crosses the
        boundary; EOS segments are the EOS id. All prefixes go to the tokenizer in ONE call.
        """
        tok = self.tokenizer
        joint = tok(list(accumulate(texts))).input_ids
        ids: list[int] = []
        trained: list[bool] = []
        for (_, train), text, full in zip(segments, texts, joint, strict=True):
            if text == tok.eos_token and train:
                new = [tok.eos_token_id]
            elif full[: len(ids)] == ids:
                new = full[len(ids) :]
            else:
                new = tok(text, add_special_tokens=False).input_ids
            ids += new
            trained += [train] * len(new)
        return ids, trained

    def tokenize_conversations(
        self, conversations: list[Turns]
    ) -> tuple[dict[str, torch.Tensor], list[str | None]]:
        """``input_ids``, ``attention_mask`` and ``labels`` of :class:`SFTBatch` (right-padded,
        on this module's device), and per row ``None``, ``"truncated"`` or a reason to refuse.

        ``max_length`` holds the prompt with its image tokens and at least one answer token, or
        the row is refused (``prompt_exceeds_max_length``: cutting it would cut the question or
        the image tokens, which all precede the first answer). Otherwise the sequence is cut at
        ``max_length`` (later answers shortened or dropped: ``truncated``) and any untrained
        tail after its last answer token is dropped. A refused row stays in the tensors (the
        caller selects the rows it keeps).
        """
        max_len = self.hparams.max_length
        rows, masks, status = [], [], []
        for turns in conversations:
            ids, trained = self.conversation_tokens(turns)
            first = trained.index(True)
            state: str | None = None
            if first >= max_len:  # refused: kept short and untrained until dropped
                state, ids = PROMPT_TOO_LONG, ids[:max_len]
                trained = [False] * len(ids)
            elif len(ids) > max_len:
                ids, trained, state = ids[:max_len], trained[:max_len], TRUNCATED
            last = len(trained) - trained[::-1].index(True) if any(trained) else len(trained)
            rows.append(ids[:last])
            masks.append(trained[:last])
            status.append(state)
        input_ids, attention_mask = right_pad(rows, self.tokenizer.pad_token_id)
        trained_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, mask in enumerate(masks):
            trained_mask[i, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
        labels = input_ids.masked_fill(~trained_mask, IGNORE_INDEX)
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return {k: v.to(self.device) for k, v in tokens.items()}, status
