"""The pair audit: what separates chosen from rejected besides the image.

DPO learns whatever tells the chosen answer from the rejected one most simply, and a user
cannot see which shortcut their pairs carry. :func:`audit_pairs` reports, judge-free, on any
pairs (this project's ``predict`` output, SeVa's step-3 files, TRL rows):

* the identical rate, overall and per kind of prompt (:func:`~.audit_stats.prompt_kinds`);
* the lengths of chosen and rejected (tokens of a given tokenizer, else whitespace words) and
  the share of differing pairs where the rejected answer is longer;
* for each simple feature, the accuracy of the best rule on it (:func:`~.audit_stats.fit_rule`:
  "prefer the lower / higher value, a coin flip within a margin"): length; objects named (where
  scene records exist); flagged words; marker words (cross-fitted log-odds words); and, per
  family of openings (yes / no, there is / there are), the rule "prefer this opening" on the
  pairs whose openings flip;
* the words and bigrams most over-represented in rejected against chosen and the other way
  round (weighted log-odds, informative Dirichlet prior: :func:`~.audit_stats.log_odds`);
* the openings of each side, and the exact quality of each side where scenes exist
  (:mod:`.audit_truth`);
* a verdict line for each feature whose accuracy reaches ``threshold``, e.g. "DPO can satisfy
  78% of these 864 pairs by preferring the shorter answer".

The definitions are in :mod:`.audit_stats`. ``lightning-aug-dpo audit PAIRS`` prints and writes
this report (:mod:`.audit_cli`), ``predict`` adds it to its summary, and
:class:`~lightning_aug_dpo.callbacks.pair_audit.PairAuditCallback` logs it during training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from lightning_aug_dpo.audit_stats import (
    DEFAULT_OPENINGS,
    RuleFit,
    count_phrases,
    fit_rule,
    iter_pair_texts,
    log_odds,
    marker_diffs,
    markers,
    opening_of,
    phrase_words,
    prompt_kinds,
    segments,
    term_counts,
    whitespace_lengths,
)
from lightning_aug_dpo.audit_truth import truth_line, truth_section
from lightning_aug_dpo.errors import UserInputError

FIRST_WORDS = 2  # the generic openings table: answers' first two words
TOP_OPENINGS = 8


def _describe(name: str, fit: RuleFit, unit: str, extra: str = "") -> str:
    """How the rule reads in a verdict: "the shorter answer (when ... by more than 2 words)"."""
    lower = fit.prefer == "lower"
    what = {
        "length": "the shorter answer" if lower else "the longer answer",
        "objects named": f"the answer that names {'fewer' if lower else 'more'} objects",
        "flagged words": f"the answer with {'fewer' if lower else 'more'} flagged words{extra}",
        "marker words": f"the answer with fewer of the words that mark rejected answers{extra}"
        if lower
        else f"the answer with more of the words that mark rejected answers{extra}",
    }[name]
    if fit.margin > 0:
        unit_word = {"length": unit, "objects named": "objects"}.get(name, "occurrences")
        if fit.margin == 1:
            unit_word = unit_word.removesuffix("s")  # "by more than 1 word"
        what += f" when the two differ by more than {fit.margin:g} {unit_word}"
    return what


def _feature(name: str, fit: RuleFit, unit: str, extra: str = "") -> dict[str, Any]:
    return {**asdict(fit), "rule": f"prefer {_describe(name, fit, unit, extra)}"}


def _openings(
    tokens: Sequence[tuple[list[str], list[str]]], families: Sequence[Sequence[str]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per family: how often each side opens with each member, the flips (chosen -> rejected
    opening) and the best "prefer this opening" rule on them; and the most frequent first words
    of the answers, per side. ``tokens`` holds each pair's (chosen, rejected) words."""
    out: dict[str, Any] = {}
    first_c = Counter(" ".join(c[:FIRST_WORDS]) for c, _ in tokens)
    first_r = Counter(" ".join(r[:FIRST_WORDS]) for _, r in tokens)
    for family in families:
        members = [phrase_words(member) for member in family]
        names = [" ".join(m) for m in members]
        side_c: Counter[str] = Counter()
        side_r: Counter[str] = Counter()
        flips: Counter[tuple[str, str]] = Counter()
        for chosen, rejected in tokens:
            c, r = opening_of(chosen, members), opening_of(rejected, members)
            side_c[names[c] if c is not None else "(other)"] += 1
            side_r[names[r] if r is not None else "(other)"] += 1
            if c is not None and r is not None and c != r:
                flips[(names[c], names[r])] += 1
        flipped = sum(flips.values())
        wins = {m: sum(k for (c, _), k in flips.items() if c == m) for m in names}
        best = max(names, key=lambda m: (wins[m], -names.index(m)))
        out[" / ".join(names)] = {
            "chosen": {m: side_c[m] for m in [*names, "(other)"]},
            "rejected": {m: side_r[m] for m in [*names, "(other)"]},
            "flips": {f"{c} -> {r}": k for (c, r), k in sorted(flips.items())},
            "flipped_pairs": flipped,
            "flip_share": flipped / len(tokens) if tokens else 0.0,
            "accuracy": wins[best] / flipped if flipped else None,
            "prefer": best,
            "rule": f"prefer answers that open with '{best}'",
        }
    top = (first_c + first_r).most_common(TOP_OPENINGS)
    first = [{"opening": o, "chosen": first_c[o], "rejected": first_r[o]} for o, _ in top]
    return out, first


def _words_section(
    runs: Sequence[tuple[list[list[str]], list[list[str]]]],
    top_k: int,
    prior_scale: float,
    min_count: int,
) -> dict[str, Any]:
    """Top terms per side (unigrams and bigrams) and the unigram markers."""
    uni_c, bi_c = term_counts(chosen for chosen, _ in runs)
    uni_r, bi_r = term_counts(rejected for _, rejected in runs)
    section: dict[str, Any] = {}
    for name, rejected, chosen in (("unigrams", uni_r, uni_c), ("bigrams", bi_r, bi_c)):
        scores = log_odds(rejected, chosen, prior_scale, min_count)
        section[name] = {
            "rejected": [asdict(s) for s in scores[:top_k] if s.z > 0],
            "chosen": [asdict(s) for s in reversed(scores[-top_k:]) if s.z < 0],
        }
        if name == "unigrams":
            up, down = markers(scores, top_k)
            section["markers"] = {"rejected": up, "chosen": down}
    return section


def _flat(runs: Sequence[Sequence[str]]) -> list[str]:
    return [word for run in runs for word in run]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def verdict(name: str, feature: Mapping[str, Any], pairs: int) -> str:
    """The sentence for one feature that separates the pairs."""
    if name.startswith("opening "):
        return (
            f"DPO can satisfy {feature['accuracy']:.0%} of the {feature['flipped_pairs']:,} pairs "
            f"whose answers flip between {name.removeprefix('opening ')} by preferring answers "
            f"that open with '{feature['prefer']}'."
        )
    preferring = feature["rule"].replace("prefer ", "preferring ", 1)
    return f"DPO can satisfy {feature['accuracy']:.0%} of these {pairs:,} pairs by {preferring}."


def check_settings(
    threshold: float, min_pairs: int, top_k: int, prior_scale: float, min_count: int
) -> None:
    """Refuse settings the audit cannot use, naming each (a :class:`UserInputError`)."""
    problems = []
    if not 0.5 < threshold <= 1.0:
        problems.append(f"threshold={threshold}: give a share in (0.5, 1], e.g. 0.65")
    for name, value in (("min_pairs", min_pairs), ("top_k", top_k), ("min_count", min_count)):
        if value < 1:
            problems.append(f"{name}={value}: give 1 or more")
    if prior_scale <= 0:
        problems.append(f"prior_scale={prior_scale}: give a number > 0, e.g. 0.1")
    if problems:
        raise UserInputError("; ".join(problems))


def audit_pairs(
    pairs: Iterable[Any],
    *,
    lengths: Callable[[Sequence[str]], Sequence[int]] | None = None,
    length_unit: str = "words",
    scenes: Mapping[str, Any] | None = None,
    flag_words: Sequence[str] = (),
    openings: Sequence[Sequence[str]] = DEFAULT_OPENINGS,
    threshold: float = 0.65,
    min_pairs: int = 10,
    top_k: int = 10,
    prior_scale: float = 0.1,
    min_count: int = 3,
) -> dict[str, Any]:
    """The audit report of ``pairs`` (``Pair``s, pair rows or ``PairText``s) as a JSON-ready dict.

    Args:
        pairs: the pairs, identical ones included (they count in the identical rates only).
        lengths: answer texts -> lengths (a tokenizer's counts); default whitespace words.
        length_unit: what ``lengths`` counts, as printed ("words", "tokens").
        scenes: ``{image: ToyScene}`` (:func:`~.audit_truth.load_scenes`): exact quality per side
            and the "objects named" feature.
        flag_words: words or phrases whose count is a feature (``FlaggedWordsFilter`` drops
            pairs whose rejected answer holds one).
        openings: families of openings, each a list of members (``["yes", "no"]``).
        threshold: a feature gets a verdict line from this accuracy up (0.5 < threshold <= 1).
        min_pairs: fewer differing pairs (or flipped pairs) than this give no verdict.
        top_k: terms listed per side; marker words per side.
        prior_scale: ``a`` of the log-odds prior (:func:`~.audit_stats.log_odds`).
        min_count: terms seen fewer times (both sides) are not scored.
    """
    check_settings(threshold, min_pairs, top_k, prior_scale, min_count)
    every = iter_pair_texts(pairs)
    differing = [p for p in every if not p.identical]
    n = len(differing)
    runs = [(segments(p.chosen), segments(p.rejected)) for p in differing]  # once for all
    tokens = [(_flat(c), _flat(r)) for c, r in runs]
    kinds = prompt_kinds([p.prompt for p in every])
    by_kind: dict[str, list[bool]] = {}
    for kind, pair in zip(kinds, every, strict=True):
        by_kind.setdefault(kind, []).append(pair.identical)
    measure = lengths or whitespace_lengths
    len_c = list(measure([p.chosen for p in differing]))
    len_r = list(measure([p.rejected for p in differing]))
    length_fit = fit_rule([r - c for c, r in zip(len_c, len_r, strict=True)])
    features: dict[str, dict[str, Any]] = {"length": _feature("length", length_fit, length_unit)}
    truth, named = truth_section(every, scenes) if scenes else (None, [])
    if named:
        features["objects named"] = _feature("objects named", fit_rule(named), length_unit)
    if flag_words:
        flagged = [phrase_words(w) for w in flag_words]
        diffs = [count_phrases(r, flagged) - count_phrases(c, flagged) for c, r in tokens]
        listed = f" ({', '.join(flag_words)})"
        features["flagged words"] = _feature("flagged words", fit_rule(diffs), length_unit, listed)
    word_section = _words_section(runs, top_k, prior_scale, min_count)
    shown = word_section["markers"]["rejected"][:5]
    listed = f" ({', '.join(shown)})" if shown else ""
    fit = fit_rule(marker_diffs(tokens, top_k, prior_scale, min_count), prefer="lower")
    features["marker words"] = _feature("marker words", fit, length_unit, listed)
    opening_section, first_words = _openings(tokens, openings)

    verdicts = []
    for name, feature in features.items():
        if feature["pairs"] >= min_pairs and (feature["accuracy"] or 0) >= threshold:
            verdicts.append(verdict(name, feature, feature["pairs"]))
    for name, family in opening_section.items():
        if family["flipped_pairs"] >= min_pairs and (family["accuracy"] or 0) >= threshold:
            verdicts.append(verdict(f"opening {name}", family, n))
    if not verdicts:
        ranked = [(f["accuracy"] or 0.0, name) for name, f in features.items()]
        best, name = max(ranked) if ranked else (0.0, "-")
        verdicts.append(
            f"No simple feature tells chosen from rejected in {threshold:.0%} or more of these "
            f"{n:,} pairs (best: {name}, {best:.0%})." if n >= min_pairs else
            f"Too few differing pairs to judge ({n}; at least {min_pairs} needed)."
        )  # fmt: skip
    return {
        "pairs": len(every),
        "differing": n,
        "identical": len(every) - n,
        "identical_rate": (len(every) - n) / len(every) if every else 0.0,
        "kinds": [
            {
                "kind": kind,
                "pairs": len(same),
                "identical": sum(same),
                "identical_rate": sum(same) / len(same),
            }
            for kind, same in sorted(by_kind.items(), key=lambda kv: -len(kv[1]))
        ],
        "lengths": {
            "unit": length_unit,
            "counted_by": "whitespace" if lengths is None else "the given lengths function",
            "chosen_mean": _mean(len_c),
            "rejected_mean": _mean(len_r),
            "rejected_minus_chosen_mean": _mean([r - c for c, r in zip(len_c, len_r, strict=True)]),
            "rejected_longer": length_fit.rejected_higher,
            "rejected_shorter": length_fit.rejected_lower,
            "equal": length_fit.equal,
        },
        "features": features,
        "openings": opening_section,
        "first_words": first_words,
        "words": word_section,
        "truth": truth,
        "truth_line": truth_line(truth) if truth else None,
        "verdicts": verdicts,
        "settings": {
            "threshold": threshold,
            "min_pairs": min_pairs,
            "top_k": top_k,
            "prior_scale": prior_scale,
            "min_count": min_count,
            "length_unit": length_unit,
            "flag_words": list(flag_words),
            "openings": [list(f) for f in openings],
        },
    }
