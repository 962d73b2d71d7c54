"""Pair filters: which (chosen, rejected) rollouts are worth a DPO step.

SeVa keeps a pair only when the two answers differ as strings. Finer filters drop pairs that
differ only in whitespace, case or punctuation, answers that are too short or too long, or pairs
a similarity measure finds too alike. Each filter is a small callable returning the reason it
drops a pair (``None`` keeps it); the DataModule applies them in order and counts each reason.
New filters are classes with the same ``__call__`` named by ``class_path`` in YAML.

The shortcuts the pair audit finds (``lightning-aug-dpo audit``) have their remedies here:
equal-length pairs (``LengthMatchFilter``), no yes/no flips (``OpeningFlipFilter``), no flagged
words in the rejected answer (``FlaggedWordsFilter``).
"""

from __future__ import annotations

import difflib
import string
import unicodedata
from typing import Protocol

from lightning_aug_dpo.audit_stats import count_phrases, opening_of, phrase_words, words
from lightning_aug_dpo.types import Rollout

_PUNCTUATION = str.maketrans("", "", string.punctuation)


class PairFilter(Protocol):
    """``filter(chosen, rejected) -> reason | None``: the reason to drop the pair, or keep it."""

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None: ...


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, single spaces, Unicode NFKC: what "the same answer" means."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(text.split())


class IdenticalFilter:
    """SeVa's filter: drop pairs whose answers are the same string (no preference signal).

    Args:
        normalize: compare after :func:`normalize_answer` (``"Red."`` equals ``"red"``).
    """

    def __init__(self, normalize: bool = False) -> None:
        self.normalize = normalize

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        a, b = chosen.text, rejected.text
        if self.normalize:
            a, b = normalize_answer(a), normalize_answer(b)
        if a == b:
            return "identical_normalized" if self.normalize else "identical"
        return None


class LengthFilter:
    """Drop pairs where either answer has fewer than ``min_words`` or more than ``max_words``.

    Words (whitespace-separated) rather than tokens, so that the filter means the same for every
    tokenizer and is cheap on the CPU.

    Args:
        min_words: shortest answer kept (0: no minimum; 1 drops empty answers).
        max_words: longest answer kept (``None``: no maximum).
    """

    def __init__(self, min_words: int = 1, max_words: int | None = None) -> None:
        if min_words < 0 or (max_words is not None and max_words < min_words):
            raise ValueError(f"need 0 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words = min_words
        self.max_words = max_words

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        for rollout in (chosen, rejected):
            words = len(rollout.text.split())
            if words < self.min_words:
                return "too_short"
            if self.max_words is not None and words > self.max_words:
                return "too_long"
        return None


class LengthMatchFilter:
    """Drop pairs whose answers differ in length by more than ``max_word_diff`` words.

    Length control for long answers: an augmentation biases the rejected answer's length (noise
    makes a model see more objects, a crop fewer), and DPO then learns the length ("mention
    fewer objects") instead of the content. Keeping pairs of (nearly) equal length leaves the
    content difference as the signal. Label-free: only the two answers are compared.

    Args:
        max_word_diff: largest difference in whitespace-separated words kept (0: equal length).
    """

    def __init__(self, max_word_diff: int = 0) -> None:
        if max_word_diff < 0:
            raise ValueError(f"max_word_diff must be >= 0, got {max_word_diff}")
        self.max_word_diff = max_word_diff

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        diff = abs(len(chosen.text.split()) - len(rejected.text.split()))
        return "length_mismatch" if diff > self.max_word_diff else None


class SimilarityFilter:
    """Drop pairs whose answers are more alike than ``max_similarity``.

    Similarity is ``difflib.SequenceMatcher`` ratio on normalised text (1.0 = equal), a
    dependency-free stand-in for embedding similarity; subclass and override :meth:`similarity`
    for another measure (e.g. a sentence-embedding cosine).

    Args:
        max_similarity: pairs with similarity above this are dropped.
    """

    def __init__(self, max_similarity: float = 0.9) -> None:
        if not 0.0 <= max_similarity <= 1.0:
            raise ValueError(f"max_similarity must be in [0, 1], got {max_similarity}")
        self.max_similarity = max_similarity

    def similarity(self, a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, normalize_answer(a), normalize_answer(b)).ratio()

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        if self.similarity(chosen.text, rejected.text) > self.max_similarity:
            return "too_similar"
        return None


class OpeningFlipFilter:
    """Drop pairs whose answers open with different members of a fixed set of openings.

    A yes/no question answered "Yes, there is ..." on the clean image and "No, there is no ..."
    on the noised one teaches DPO the opening ("say no"), not the image: on the toy world the
    yes-ratio went to 97% at chance-level accuracy. The pair audit (``lightning-aug-dpo audit``)
    shows such flips; this filter removes them. Label-free: only the two answers are compared.
    An answer opens with a member when its first words (lower case, punctuation ignored) are
    the member's words (``"Yes, there is"`` opens with ``"yes"``).

    Args:
        openings: the members of the family, e.g. ``["yes", "no"]`` or ``["there is", "there
            are"]``.
        only_opening: drop only pairs that are the same after the opening (a bare flip); by
            default any flip is dropped, since the rest of a yes/no answer follows from it.
    """

    def __init__(self, openings: list[str] | None = None, only_opening: bool = False) -> None:
        self.openings = list(openings if openings is not None else ["yes", "no"])
        if len(self.openings) < 2:
            raise ValueError(f"OpeningFlipFilter: give two or more openings, got {self.openings}")
        self._members = [phrase_words(member) for member in self.openings]
        self.only_opening = only_opening

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        a, b = words(chosen.text), words(rejected.text)
        i, j = opening_of(a, self._members), opening_of(b, self._members)
        if i is None or j is None or i == j:
            return None
        if self.only_opening and a[len(self._members[i]) :] != b[len(self._members[j]) :]:
            return None
        return "opening_flip"


class FlaggedWordsFilter:
    """Drop pairs whose rejected answer contains a flagged word or phrase.

    When the rejected answers carry a few words the chosen ones lack ("white", "blurry": what
    a model says about a noised image whatever it shows), DPO learns to avoid the words. The pair
    audit lists the words most over-represented in rejected answers; flag them here. Words are
    matched whole, in lower case, punctuation ignored (``"white triangle"`` matches "a White
    triangle.").

    Args:
        words: the flagged words or phrases.
        unless_in_chosen: keep the pair when the chosen answer has the word too (then the word
            does not tell the two apart).
    """

    def __init__(self, words: list[str], unless_in_chosen: bool = False) -> None:
        if not words:
            raise ValueError("FlaggedWordsFilter: give one or more words")
        self.words = list(words)
        self._phrases = [phrase_words(word) for word in self.words]
        self.unless_in_chosen = unless_in_chosen

    def __call__(self, chosen: Rollout, rejected: Rollout) -> str | None:
        answer = words(rejected.text)
        for phrase in self._phrases:
            if count_phrases(answer, [phrase]) == 0:
                continue
            if self.unless_in_chosen and count_phrases(words(chosen.text), [phrase]) > 0:
                continue
            return "flagged_word"
        return None


def first_reason(filters: list[PairFilter], chosen: Rollout, rejected: Rollout) -> str | None:
    """The first filter's reason to drop the pair, or ``None`` when every filter keeps it."""
    for keep_or_reason in (f(chosen, rejected) for f in filters):
        if keep_or_reason is not None:
            return keep_or_reason
    return None
