"""The statistics of the pair audit (:mod:`lightning_aug_dpo.audit`), defined here exactly.

DPO learns whatever tells the chosen answer from the rejected one most simply. When the rejected
answers are longer, name more objects, or open with "yes" where the chosen ones say "no", DPO
can satisfy the pairs without looking at the image. Nothing here imports Lightning or torch.
Notation: ``n`` is the number of pairs whose answers differ as strings (identical pairs carry no
preference and enter only the identical rates); ``f`` is a feature of one answer.

Rule accuracy of a feature (:func:`fit_rule`). With ``d_i = f(rejected_i) - f(chosen_i)``, the
rule "prefer the answer with the lower f, when the two differ by more than a margin m, else flip
a fair coin" is right on pair i with probability ``[d_i > m] + 1/2 [|d_i| <= m]``::

    acc(lower, m)  = (1/n) sum_i ( [d_i > m]  + 1/2 [|d_i| <= m] )
    acc(higher, m) = (1/n) sum_i ( [d_i < -m] + 1/2 [|d_i| <= m] ) = 1 - acc(lower, m)
    accuracy(f)    = max over direction in {lower, higher} and m in {0} U {|d_i|}   (>= 1/2)

``m = 0`` is the plain rule ("prefer the shorter answer", ties a coin flip); a larger margin
leaves small differences to the coin and pays off where they point the wrong way. For length,
``f`` is the answer's length in tokens of a given tokenizer, else in whitespace words.

Words over-represented on one side (:func:`log_odds`): weighted log-odds ratios with an
informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words", eqs. 16-22). For a
term w (word or bigram of lower-cased words) with counts ``y_r``, ``y_c`` in the rejected and
chosen answers, totals ``n_r``, ``n_c``, and a prior from the pooled corpus scaled by ``a``
(``prior_scale``)::

    alpha_w = a (y_r + y_c)                  alpha_0 = sum_w alpha_w = a (n_r + n_c)
    delta_w = log[(y_r + alpha_w) / (n_r + alpha_0 - y_r - alpha_w)]
            - log[(y_c + alpha_w) / (n_c + alpha_0 - y_c - alpha_w)]
    var(delta_w) ~ 1 / (y_r + alpha_w) + 1 / (y_c + alpha_w)        z_w = delta_w / sqrt(var)

``z > 0``: over-represented in rejected answers; ``|z| >= 1.96`` is the usual 5% level.

Marker words (a feature): the unigrams with ``z >= 1.96`` (rejected side) and ``z <= -1.96``
(chosen side), ``top_k`` of each, are chosen on one half of the pairs (even / odd positions) and
counted on the other (cross-fitting, so that choosing words on the same pairs cannot inflate the
accuracy): ``f(answer) = #rejected-side words - #chosen-side words``, rule "prefer lower".

Openings: an answer opens with a member of a family (``yes`` / ``no``; ``there is`` / ``there
are``) when its first words are that member's words. A pair *flips* when both answers open with
different members; the rule "prefer the answers that open with o" is right on the flipped pairs
whose chosen answer opens with o.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_aug_dpo.errors import UserInputError

DEFAULT_OPENINGS: tuple[tuple[str, ...], ...] = (("yes", "no"), ("there is", "there are"))
Z_MARKER = 1.96  # the two-sided 5% level of a standard normal
# words (letters, digits, inner apostrophes) and the punctuation that ends a bigram's span
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[.!?;:,()\n]")


def segments(text: str) -> list[list[str]]:
    """The lower-cased words of ``text`` in runs between punctuation (``.!?;:,()``, newlines):
    bigrams are counted inside a run, so "left. The" is no bigram."""
    out: list[list[str]] = []
    run: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if token[0].isalnum():
            run.append(token)
        elif run:
            out.append(run)
            run = []
    return [*out, run] if run else out


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, inner apostrophes): what the word statistics count."""
    return [word for run in segments(text) for word in run]


def whitespace_lengths(texts: Sequence[str]) -> list[int]:
    """Answer lengths in whitespace-separated words (the default length unit)."""
    return [len(text.split()) for text in texts]


@dataclass(frozen=True)
class PairText:
    """The texts of one pair that the audit reads; ``image`` finds its scene record."""

    prompt: str
    chosen: str
    rejected: str
    image: str = ""

    @property
    def identical(self) -> bool:
        return self.chosen == self.rejected  # SeVa's test: the same string


def as_pair_text(row: Any) -> PairText:
    """A :class:`~lightning_aug_dpo.data.pairs.Pair`, a pair row (dict) or a ``PairText``."""
    if isinstance(row, PairText):
        return row
    get = (
        row.get
        if isinstance(row, Mapping)
        else lambda key, default=None: getattr(row, key, default)
    )
    texts = [get(key) for key in ("prompt", "chosen", "rejected")]
    if not all(isinstance(text, str) for text in texts):
        raise UserInputError(
            f"pair {get('id', '?')!r}: prompt, chosen and rejected must be strings"
        )
    return PairText(*texts, image=str(get("image") or ""))


@dataclass(frozen=True)
class RuleFit:
    """The best rule on one feature (module docstring): accuracy, direction, margin; and the
    shares of pairs where the rejected answer's value is higher, lower or equal."""

    accuracy: float | None  # None without pairs
    prefer: str  # "lower" | "higher"
    margin: float
    pairs: int
    rejected_higher: float
    rejected_lower: float
    equal: float


def fit_rule(diffs: Sequence[float], prefer: str | None = None) -> RuleFit:
    """The best ``acc(direction, m)`` over ``m in {0} U {|d_i|}`` for ``d_i = f(rejected_i) -
    f(chosen_i)``; ``prefer`` fixes the direction. Ties go to the smaller margin, then to
    "lower". O(k log n) for k distinct ``|d_i|``."""
    n = len(diffs)
    if n == 0:
        return RuleFit(None, prefer or "lower", 0.0, 0, 0.0, 0.0, 0.0)
    ordered = sorted(diffs)
    best: tuple[float, str, float] | None = None
    for m in sorted({0.0} | {float(abs(d)) for d in ordered}):
        above = n - bisect.bisect_right(ordered, m)  # d > m: the rejected answer is higher
        below = bisect.bisect_left(ordered, -m)  # d < -m
        coin = n - above - below
        for direction, hits in (("lower", above), ("higher", below)):
            if prefer not in (None, direction):
                continue
            accuracy = (hits + 0.5 * coin) / n
            if best is None or accuracy > best[0] + 1e-12:
                best = (accuracy, direction, m)
    assert best is not None
    higher = sum(d > 0 for d in ordered) / n
    lower = sum(d < 0 for d in ordered) / n
    return RuleFit(best[0], best[1], best[2], n, higher, lower, 1.0 - higher - lower)


@dataclass(frozen=True)
class TermScore:
    """One term's counts on each side, weighted log-odds ``delta`` and its z-score."""

    term: str
    rejected: int
    chosen: int
    delta: float
    z: float


def log_odds(
    rejected: Mapping[str, int],
    chosen: Mapping[str, int],
    prior_scale: float = 0.1,
    min_count: int = 1,
) -> list[TermScore]:
    """Every term seen ``min_count`` times or more (both sides together), scored as in the
    module docstring, most over-represented in rejected first (z descending)."""
    if prior_scale <= 0:
        raise UserInputError(f"prior_scale={prior_scale}: give a number > 0")
    n_r, n_c = sum(rejected.values()), sum(chosen.values())
    alpha_0 = prior_scale * (n_r + n_c)
    out = []
    for term in set(rejected) | set(chosen):
        y_r, y_c = rejected.get(term, 0), chosen.get(term, 0)
        alpha = prior_scale * (y_r + y_c)
        rest_r, rest_c = n_r + alpha_0 - y_r - alpha, n_c + alpha_0 - y_c - alpha
        if y_r + y_c < min_count or rest_r <= 0 or rest_c <= 0:
            continue  # (a one-term vocabulary has no odds)
        delta = math.log((y_r + alpha) / rest_r) - math.log((y_c + alpha) / rest_c)
        z = delta / math.sqrt(1.0 / (y_r + alpha) + 1.0 / (y_c + alpha))
        out.append(TermScore(term, y_r, y_c, delta, z))
    out.sort(key=lambda s: (-s.z, -(s.rejected + s.chosen), s.term))
    return out


def term_counts(
    answers: Iterable[Sequence[Sequence[str]]],
) -> tuple[Counter[str], Counter[str]]:
    """Unigram and bigram counts over answers given as their :func:`segments` (bigrams: adjacent
    words of one run, space-joined)."""
    answers = list(answers)
    unigrams = Counter(word for runs in answers for run in runs for word in run)
    bigrams = Counter(
        f"{a} {b}" for runs in answers for run in runs for a, b in itertools.pairwise(run)
    )
    return unigrams, bigrams


def markers(scores: Sequence[TermScore], top_k: int) -> tuple[list[str], list[str]]:
    """The ``top_k`` terms with ``z >= 1.96`` (rejected side) and ``z <= -1.96`` (chosen)."""
    rejected = [s.term for s in scores if s.z >= Z_MARKER][:top_k]
    chosen = [s.term for s in reversed(scores) if s.z <= -Z_MARKER][:top_k]
    return rejected, chosen


def marker_diffs(
    tokens: Sequence[tuple[Sequence[str], Sequence[str]]],
    top_k: int,
    prior_scale: float,
    min_count: int,
) -> list[float]:
    """``d_i`` of the marker-word feature, cross-fitted over two halves (module docstring);
    ``tokens`` holds each pair's (chosen, rejected) :func:`words`. The pairs of the even half
    come first in the result, then those of the odd half."""
    diffs: list[float] = []
    for half in (0, 1):
        other = tokens[1 - half :: 2]
        pooled_c = Counter(word for chosen, _ in other for word in chosen)
        pooled_r = Counter(word for _, rejected in other for word in rejected)
        up, down = markers(log_odds(pooled_r, pooled_c, prior_scale, min_count), top_k)
        up_set, down_set = set(up), set(down)

        def f(answer: Sequence[str], up: set[str] = up_set, down: set[str] = down_set) -> int:
            return sum(word in up for word in answer) - sum(word in down for word in answer)

        diffs += [f(rejected) - f(chosen) for chosen, rejected in tokens[half::2]]
    return diffs


def phrase_words(phrase: str) -> list[str]:
    """The words of a flagged word or opening (``"There is"`` -> ``["there", "is"]``)."""
    found = words(phrase)
    if not found:
        raise UserInputError(f"{phrase!r}: a flagged word or opening needs letters or digits")
    return found


def count_phrases(answer_words: Sequence[str], phrases: Sequence[Sequence[str]]) -> int:
    """Occurrences of the word sequences ``phrases`` in an answer's words."""
    total = 0
    for phrase in phrases:
        k = len(phrase)
        total += sum(
            list(answer_words[i : i + k]) == list(phrase) for i in range(len(answer_words) - k + 1)
        )
    return total


def opening_of(answer_words: Sequence[str], family: Sequence[Sequence[str]]) -> int | None:
    """Index of the family member the answer opens with (the longest that matches), or None."""
    best: int | None = None
    for index, member in enumerate(family):
        opens = list(answer_words[: len(member)]) == list(member)
        if opens and (best is None or len(member) > len(family[best])):
            best = index
    return best


def prompt_kinds(
    prompts: Sequence[str], max_templates: int = 20, first_words: int = 3, max_kinds: int = 12
) -> list[str]:
    """A kind for each prompt: the prompt itself (lower-cased words) where the set has at most
    ``max_templates`` distinct prompts (templated data), else its first ``first_words`` words
    followed by ``...``; kinds outside the ``max_kinds`` most frequent become ``(other)``."""
    normalized = [" ".join(words(p)) for p in prompts]
    if len(set(normalized)) > max_templates:
        normalized = [" ".join(p.split()[:first_words]) + " ..." for p in normalized]
    top = {kind for kind, _ in Counter(normalized).most_common(max_kinds)}
    return [kind if kind in top else "(other)" for kind in normalized]


def iter_pair_texts(pairs: Iterable[Any]) -> list[PairText]:
    """Every pair as a :class:`PairText` (see :func:`as_pair_text`)."""
    return [as_pair_text(pair) for pair in pairs]
