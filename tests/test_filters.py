"""Pair filters, on hand-made answers."""

from __future__ import annotations

import pytest

from lightning_aug_dpo.data.filters import (
    IdenticalFilter,
    LengthFilter,
    LengthMatchFilter,
    SimilarityFilter,
    first_reason,
    normalize_answer,
)
from lightning_aug_dpo.types import Rollout


def r(text: str) -> Rollout:
    return Rollout(text=text, finished=True)


def test_normalize_answer() -> None:
    assert normalize_answer("  The  RED circle.\n") == "the red circle"
    assert normalize_answer("\uff32\uff45\uff44!") == "red"  # full-width letters fold (NFKC)


@pytest.mark.parametrize(
    ("a", "b", "exact", "normalized"),
    [
        ("red", "red", "identical", "identical_normalized"),
        ("Red.", "red", None, "identical_normalized"),
        ("two  cats", "two cats", None, "identical_normalized"),
        ("red", "blue", None, None),
    ],
)
def test_identical_filters(a: str, b: str, exact, normalized) -> None:
    assert IdenticalFilter()(r(a), r(b)) == exact
    assert IdenticalFilter(normalize=True)(r(a), r(b)) == normalized


def test_length_filter() -> None:
    f = LengthFilter(min_words=2, max_words=4)
    assert f(r("a red circle"), r("two blue squares")) is None
    assert f(r("red"), r("two blue squares")) == "too_short"
    assert f(r("a red circle"), r("one two three four five")) == "too_long"
    assert LengthFilter()(r(""), r("x")) == "too_short"  # empty answers never teach anything
    with pytest.raises(ValueError):
        LengthFilter(min_words=5, max_words=2)


def test_length_match_filter() -> None:
    assert LengthMatchFilter()(r("a red circle"), r("a blue square")) is None
    assert LengthMatchFilter()(r("a red circle"), r("a red circle and a square")) == (
        "length_mismatch"
    )
    assert LengthMatchFilter(3)(r("a red circle"), r("a red circle and a square")) is None
    assert LengthMatchFilter(2)(r("a red circle"), r("a red circle and a square")) is not None
    assert LengthMatchFilter(max_word_diff=2)(r("a"), r("a b c")) is None
    with pytest.raises(ValueError):
        LengthMatchFilter(max_word_diff=-1)


def test_similarity_filter() -> None:
    f = SimilarityFilter(max_similarity=0.8)
    assert f.similarity("abcd", "abcd") == 1.0
    # 'the red circle' vs 'the red circles': ratio 2 * 14 / 29 = 0.966
    assert f(r("The red circle"), r("the red circles")) == "too_similar"
    assert f(r("a red circle"), r("two green squares")) is None
    with pytest.raises(ValueError):
        SimilarityFilter(1.5)


def test_first_reason_applies_filters_in_order() -> None:
    filters = [IdenticalFilter(), LengthFilter(min_words=3)]
    assert first_reason(filters, r("red"), r("red")) == "identical"
    assert first_reason(filters, r("red"), r("blue")) == "too_short"
    assert first_reason(filters, r("a red one"), r("a blue one")) is None
    assert first_reason([], r("red"), r("red")) is None
