"""Judges: the offline rule judge and the chat-judge protocol shared by model judges.

A judge grades an MM-Vet prediction (:meth:`Judge.grade` -> :class:`Grade`, a score in [0, 1])
and reviews a LLaVA-Bench answer against GPT-4's (:meth:`Judge.review` -> :class:`Review`, two
1-10 scores). :class:`RuleJudge` is offline and deterministic. :class:`ChatJudge` implements the
official graders' protocols on top of one abstract call, ``chat(messages, ...)``, which the
OpenAI-compatible HTTP judge (``http_judge.py``) and the local Hugging Face judge
(``hf_judge.py``) provide; replies go through a :class:`JudgeCache` keyed by the full request.
"""

from __future__ import annotations

import string
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.cache import JudgeCache
from lightning_aug_dpo.eval.llava_bench import FAILED, LLaVABenchItem, parse_two_scores
from lightning_aug_dpo.eval.prompts import (
    MMVET_RETRY_SUFFIX,
    PromptSet,
    llava_review_request,
    mmvet_request,
    parse_mmvet_score,
)

AND = "<AND>"
OR = "<OR>"


class JudgeError(RuntimeError):
    """The judge cannot answer (bad configuration, refused request); the message says why."""


class JudgeUnavailable(JudgeError):
    """The judge endpoint stayed unreachable or overloaded after every retry (an outage)."""


@dataclass(frozen=True)
class Grade:
    """One grading run of one question: ``score`` in [0, 1], the judge's raw reply, its name."""

    score: float
    content: str
    model: str


@dataclass(frozen=True)
class Review:
    """One LLaVA-Bench review: ``scores = [reference, model]``; ``failed`` if unparsable."""

    scores: list[float]
    content: str
    model: str
    failed: bool = False


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str


class Judge(ABC):
    """Grades predictions; ``name`` goes into grade files; ``concurrency`` bounds parallel calls."""

    name: str = "judge"
    concurrency: int = 1

    @abstractmethod
    def grade(self, question: str, answer: str, prediction: str, run: int = 0) -> Grade:
        """MM-Vet: grade ``prediction`` against the ground truth ``answer`` to ``question``."""

    def review(self, item: LLaVABenchItem, answer: str, run: int = 0) -> Review:
        """LLaVA-Bench: score GPT-4's reference (first) and ``answer`` (second), 1-10 each."""
        raise JudgeError(f"{type(self).__name__} cannot review LLaVA-Bench answers")

    def set_cache(self, path: str | Path | None) -> None:
        """Use a reply cache at ``path`` (judges without model calls ignore it)."""
        return None

    def identity(self) -> dict[str, Any]:
        """What graded the results (class, model, prompts); never a credential."""
        return {"class": type(self).__name__, "model": self.name}

    def label(self) -> str:
        """The judge in one string for score files and summary lines: ``"rule"``,
        ``"openai:<model>"``, ``"hf:<path>"``. Scores from different judges are not comparable
        (re-grading the same answers with another judge moves MM-Vet by several points)."""
        return self.name


def _is_punct(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _strip_token(token: str) -> str:
    # Only the edges: "3.5", "u.s" and "1,000" keep their inner punctuation.
    start, end = 0, len(token)
    while start < end and _is_punct(token[start]):
        start += 1
    while end > start and _is_punct(token[end - 1]):
        end -= 1
    return token[start:end]


def normalize(text: str) -> str:
    """Lower-case, split on whitespace, strip punctuation at token edges, rejoin with spaces."""
    tokens = (_strip_token(tok) for tok in text.lower().split())
    return " ".join(tok for tok in tokens if tok)


def contains_phrase(prediction: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in ``prediction`` on whole-word boundaries."""
    phrase, prediction = normalize(phrase), normalize(prediction)
    return bool(phrase) and f" {phrase} " in f" {prediction} "


class RuleJudge(Judge):
    """Offline, deterministic string-matching judge (name ``"rule"``).

    MM-Vet: the ground truth is read as alternatives separated by ``<OR>``, each a list of parts
    separated by ``<AND>``; an alternative scores the fraction of its parts found in the
    prediction as whole words after :func:`normalize`, and the grade is the best alternative.

    LLaVA-Bench: each answer scores ``1 + 9 * r`` (rounded to 0.1), ``r`` being the fraction of
    the caption's words of 4+ letters that the answer mentions; a rough, reproducible stand-in
    for smoke runs, not a substitute for a model judge.
    """

    name = "rule"

    def grade(self, question: str, answer: str, prediction: str, run: int = 0) -> Grade:
        best: tuple[float, int, int] | None = None
        for alternative in answer.split(OR):
            parts = [p for p in alternative.split(AND) if normalize(p)]
            if not parts:
                continue
            hits = sum(contains_phrase(prediction, p) for p in parts)
            candidate = (hits / len(parts), hits, len(parts))
            if best is None or candidate[0] > best[0]:
                best = candidate
        if best is None:
            return Grade(0.0, "empty ground-truth answer", self.name)
        score, hits, total = best
        return Grade(score, f"matched {hits}/{total} parts", self.name)

    def review(self, item: LLaVABenchItem, answer: str, run: int = 0) -> Review:
        words = {w for w in normalize(item.caption).split() if len(w) >= 4}

        def score(text: str) -> float:
            said = set(normalize(text).split())
            return round(1 + 9 * (len(words & said) / len(words) if words else 0.0), 1)

        scores = [score(item.reference), score(answer)]
        return Review(scores, f"{scores[0]} {scores[1]}\ncaption word recall", self.name)


class ChatJudge(Judge):
    """The official grading protocols over an abstract chat call.

    MM-Vet (``mm-vet_evaluator``): one user message ``prompt + "\\n" + "Q | GT | Pred | "``,
    ``max_tokens=3``, temperature 0; the first space-separated token must be a float in [0, 1].
    If not, the grader asks again with a "give only the number" suffix, raising the temperature
    by 0.5 each time; after 5 unparsable replies the grade is 0.0 (the official script sends a
    sixth request whose reply it never reads; this one stops at 5).

    LLaVA-Bench (``eval_gpt_review_bench``): a system message and the review request,
    temperature 0.2, ``max_tokens=1024``; a reply without two scores on its first line is
    a failed review (``tuple = [-1, -1]``, ``failed = true``), not retried, as LLaVA does.

    The run index is sent as the request's ``seed`` and is part of the cache key, so N grading
    runs are N distinct requests, each cached.

    Args:
        mmvet_prompt_file: a plain-text MM-Vet grading prompt (e.g. the official one).
        llava_rule_file: a LLaVA ``rule.json`` (e.g. the official one).
        cache_path: JSON-lines reply cache (callbacks and jobs set one per benchmark).
        max_attempts: MM-Vet replies tried before scoring 0.
        llava_temperature: LLaVA-Bench review temperature (official: 0.2).
    """

    def __init__(
        self,
        mmvet_prompt_file: str | None = None,
        llava_rule_file: str | None = None,
        cache_path: str | None = None,
        max_attempts: int = 5,
        llava_temperature: float = 0.2,
        llava_max_tokens: int = 1024,
    ) -> None:
        self.prompts = PromptSet.load(mmvet_prompt_file, llava_rule_file)
        self.cache: JudgeCache | None = None
        self.set_cache(cache_path)
        self.max_attempts = max_attempts
        self.llava_temperature = llava_temperature
        self.llava_max_tokens = llava_max_tokens

    @abstractmethod
    def chat(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int
    ) -> ChatReply:
        """One completion; raise :class:`JudgeUnavailable` for an outage."""

    def endpoint(self) -> str:
        """Where requests go (part of the cache key): a URL or a model path."""
        return self.name

    def set_cache(self, path: str | Path | None) -> None:
        self.cache = JudgeCache(path) if path else None

    def label(self) -> str:
        # The endpoint names the backend and the model: "hf:<path>" for a local model.
        return self.endpoint()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "endpoint": self.endpoint(), **self.prompts.identity()}

    def complete(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int
    ) -> ChatReply:
        """:meth:`chat` through the cache."""
        request = {
            "endpoint": self.endpoint(),
            "model": self.name,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        if self.cache is not None:
            hit = self.cache.get(request)
            if hit is not None:
                return ChatReply(hit["text"], hit["model"])
        reply = self.chat(messages, temperature, max_tokens, seed)
        if self.cache is not None:
            self.cache.put(request, {"text": reply.text, "model": reply.model})
        return reply

    def grade(self, question: str, answer: str, prediction: str, run: int = 0) -> Grade:
        base = mmvet_request(self.prompts.mmvet, question, answer, prediction)
        content, temperature, model = "", 0.0, self.name
        for attempt in range(self.max_attempts):
            text = base if attempt == 0 else base + MMVET_RETRY_SUFFIX
            reply = self.complete([{"role": "user", "content": text}], temperature, 3, run)
            content, model = reply.text, reply.model
            parsed = parse_mmvet_score(reply.text)
            if parsed is not None:
                return Grade(parsed[0], parsed[1], model)
            temperature += 0.5
        return Grade(0.0, content, model)

    def review(self, item: LLaVABenchItem, answer: str, run: int = 0) -> Review:
        request = llava_review_request(
            self.prompts.rules(), item.category, item.caption, item.question, item.reference, answer
        )
        messages = [
            {"role": "system", "content": self.prompts.llava_system},
            {"role": "user", "content": request},
        ]
        reply = self.complete(messages, self.llava_temperature, self.llava_max_tokens, run)
        scores = parse_two_scores(reply.text)
        if scores is None:
            return Review(list(FAILED), reply.text, reply.model, failed=True)
        return Review(scores, reply.text, reply.model)
