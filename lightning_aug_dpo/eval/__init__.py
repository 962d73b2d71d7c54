"""Benchmark evaluation: official files, judges, grading and scoring (no Lightning needed).

MM-Vet (``mmvet``), LLaVA-Bench in the wild (``llava_bench``) and POPE (``pope``) loaders and
scorers reproduce the official scripts; ``toy_world`` scores answers on the generated toy world
exactly from its scene records; judges (``judges``, ``http_judge``, ``hf_judge``) plug in
by ``class_path``; ``grading`` runs a judge over a benchmark; ``generate`` answers questions with
any model that has ``generate(pixel_values, questions, max_new_tokens)``.
"""

from lightning_aug_dpo.eval.cache import JudgeCache, request_key
from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS, generate_answers, shard
from lightning_aug_dpo.eval.grading import (
    Outcome,
    grade_mmvet,
    grade_mmvet_outcome,
    grade_scores,
    review_llava_bench,
    runs_of,
)
from lightning_aug_dpo.eval.hf_judge import HFJudge
from lightning_aug_dpo.eval.http_judge import OpenAIJudge
from lightning_aug_dpo.eval.judges import (
    ChatJudge,
    ChatReply,
    Grade,
    Judge,
    JudgeError,
    JudgeUnavailable,
    Review,
    RuleJudge,
    contains_phrase,
    normalize,
)
from lightning_aug_dpo.eval.llava_bench import (
    LLaVABench,
    LLaVABenchItem,
    LLaVABenchScores,
    load_llava_bench,
    parse_two_scores,
    read_answers_jsonl,
    read_reviews,
    score_llava_bench,
)
from lightning_aug_dpo.eval.mmvet import (
    CAPABILITIES,
    MMVetBenchmark,
    MMVetItem,
    MMVetScores,
    canonical_capabilities,
    combination_key,
    load_capabilities,
    load_mmvet,
    load_mmvet_dir,
    read_answers,
    read_grades,
    score_mmvet,
    write_answers,
    write_grades,
)
from lightning_aug_dpo.eval.pipeline import (
    finish_llava_bench,
    finish_mmvet,
    finish_pope,
    finish_toy,
    read_scores,
)
from lightning_aug_dpo.eval.pope import (
    POPEBenchmark,
    POPEItem,
    load_pope,
    parse_yes_no,
    pope_metrics,
    score_pope,
)
from lightning_aug_dpo.eval.prompts import PromptSet, load_mmvet_prompt, load_rule_file
from lightning_aug_dpo.eval.toy_world import (
    ToyBenchmark,
    format_toy_table,
    load_toy_benchmark,
    score_toy,
    toy_prompts,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_MAX_NEW_TOKENS",
    "ChatJudge",
    "ChatReply",
    "Grade",
    "HFJudge",
    "Judge",
    "JudgeCache",
    "JudgeError",
    "JudgeUnavailable",
    "LLaVABench",
    "LLaVABenchItem",
    "LLaVABenchScores",
    "MMVetBenchmark",
    "MMVetItem",
    "MMVetScores",
    "OpenAIJudge",
    "Outcome",
    "POPEBenchmark",
    "POPEItem",
    "PromptSet",
    "Review",
    "RuleJudge",
    "ToyBenchmark",
    "canonical_capabilities",
    "combination_key",
    "contains_phrase",
    "finish_llava_bench",
    "finish_mmvet",
    "finish_pope",
    "finish_toy",
    "format_toy_table",
    "generate_answers",
    "grade_mmvet",
    "grade_mmvet_outcome",
    "grade_scores",
    "load_capabilities",
    "load_llava_bench",
    "load_mmvet",
    "load_mmvet_dir",
    "load_mmvet_prompt",
    "load_pope",
    "load_rule_file",
    "load_toy_benchmark",
    "normalize",
    "parse_two_scores",
    "parse_yes_no",
    "pope_metrics",
    "read_answers",
    "read_answers_jsonl",
    "read_grades",
    "read_reviews",
    "read_scores",
    "request_key",
    "review_llava_bench",
    "runs_of",
    "score_llava_bench",
    "score_mmvet",
    "score_pope",
    "score_toy",
    "shard",
    "toy_prompts",
    "write_answers",
    "write_grades",
]
