"""Benchmark evaluation: MM-Vet files, scoring and judges (no Lightning or torch needed)."""

from lightning_aug_dpo.eval.judges import (
    Grade,
    Judge,
    RuleJudge,
    contains_phrase,
    grade_mmvet,
    grade_scores,
    normalize,
)
from lightning_aug_dpo.eval.mmvet import (
    CAPABILITIES,
    MMVetItem,
    MMVetScores,
    canonical_capabilities,
    combination_key,
    load_capabilities,
    load_mmvet,
    read_answers,
    read_grades,
    score_mmvet,
    write_answers,
    write_grades,
)

__all__ = [
    "CAPABILITIES",
    "Grade",
    "Judge",
    "MMVetItem",
    "MMVetScores",
    "RuleJudge",
    "canonical_capabilities",
    "combination_key",
    "contains_phrase",
    "grade_mmvet",
    "grade_scores",
    "load_capabilities",
    "load_mmvet",
    "normalize",
    "read_answers",
    "read_grades",
    "score_mmvet",
    "write_answers",
    "write_grades",
]
