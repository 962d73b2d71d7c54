"""Judge prompts: this project's own wording with the official output contracts.

MM-Vet's grader asks for a single correctness number in 0.0-1.0 by completing the last cell of
a ``Question | Ground truth | Prediction | Correctness`` table after a few solved examples, with
``max_tokens=3``; it parses the first space-separated token of the reply. LLaVA-Bench's reviewer
shows the image caption, the question and two answers (GPT-4's reference first) and asks for two
1-10 scores on the first line. The texts below follow those contracts in our own words and
examples. A user who wants the official wording passes the official files (MM-Vet's prompt as a
text file, LLaVA's ``rule.json``); every score file records which prompt graded it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.files import require_file

MMVET_PROMPT = """\
Grade how correct a model's prediction is, given the question and the ground truth. In the \
ground truth, <AND> joins parts that must all appear for full credit (credit is shared between \
them), and <OR> joins alternatives of which any one is enough. Answer with one number among \
0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, where 0.0 is entirely wrong and 1.0 \
entirely right, by filling in the last Correctness cell of the table.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
How many apples are on the plate? | 4 | There are four apples. | 1.0
How many apples are on the plate? | 4 | I count three apples. | 0.0
Which two colors does the flag have? | red <AND> white | The flag is red. | 0.5
Which two colors does the flag have? | red <AND> white | It is white with red stripes. | 1.0
What animal is this? | fox <OR> red fox | This is a fox sitting in the snow. | 1.0
What is the price of the coffee? | $3.50 | The coffee costs 3.5 dollars. | 1.0
What does the sign say? | no parking | It says "parking". | 0.2
Describe the mood of the painting. | calm and peaceful, soft colors, a quiet lake at dusk | \
The painting shows a lake at sunset with gentle colors, giving a calm feeling. | 0.9"""

# Appended by the official grader when a reply is not a number: ask for the digit only.
MMVET_RETRY_SUFFIX = "\nGive only the correctness score as a number: "

LLAVA_SYSTEM = (
    "You are a careful, impartial reviewer who judges how good answers to a question are."
)

_LLAVA_RULE = (
    "Two AI assistants answered the user's question above about an image. You cannot see the "
    "image; the context above describes it in a few sentences. Judge each answer for "
    "helpfulness, relevance, accuracy and level of detail, and give each an overall score from "
    "1 to 10, higher being better.\n"
    "On the first line write only the two scores, for Assistant 1 and Assistant 2 in that "
    "order, separated by a space. From the second line on, explain your judgement. Do not let "
    "the order of the answers or their length sway you."
)
LLAVA_RULES: dict[str, dict[str, str]] = {
    f"llava_bench_{c}": {"role": "Assistant", "prompt": _LLAVA_RULE}
    for c in ("conv", "detail", "complex")
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSet:
    """The judge's prompts and their identity (recorded in every score file)."""

    mmvet: str = MMVET_PROMPT
    mmvet_source: str = "lightning_aug_dpo:mmvet-v1"
    llava_rules: dict[str, dict[str, str]] | None = None
    llava_source: str = "lightning_aug_dpo:llava-bench-v1"
    llava_system: str = LLAVA_SYSTEM

    @classmethod
    def load(
        cls, mmvet_prompt_file: str | Path | None = None, llava_rule_file: str | Path | None = None
    ) -> PromptSet:
        """Our prompts, or the official ones from files the user supplies."""
        mmvet, msrc = MMVET_PROMPT, "lightning_aug_dpo:mmvet-v1"
        if mmvet_prompt_file:
            mmvet, msrc = load_mmvet_prompt(mmvet_prompt_file), f"file:{mmvet_prompt_file}"
        rules, lsrc = None, "lightning_aug_dpo:llava-bench-v1"
        if llava_rule_file:
            rules, lsrc = load_rule_file(llava_rule_file), f"file:{llava_rule_file}"
        return cls(mmvet, msrc, rules, lsrc)

    def rules(self) -> dict[str, dict[str, str]]:
        return self.llava_rules if self.llava_rules is not None else LLAVA_RULES

    def identity(self) -> dict[str, Any]:
        """Names and sha256 prefixes of the prompts, e.g. for ``scores.json``."""
        return {
            "mmvet_prompt": {"source": self.mmvet_source, "sha256": _digest(self.mmvet)},
            "llava_rules": {
                "source": self.llava_source,
                "sha256": _digest(json.dumps(self.rules(), sort_keys=True) + self.llava_system),
            },
        }


def load_mmvet_prompt(path: str | Path) -> str:
    """A user-supplied MM-Vet grading prompt (plain text; e.g. the official few-shot prompt)."""
    text = require_file(
        path, "MM-Vet judge prompt file", "give a plain-text prompt file"
    ).read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the MM-Vet judge prompt file is empty")
    return text.rstrip("\n")


def load_rule_file(path: str | Path) -> dict[str, dict[str, str]]:
    """A LLaVA ``rule.json``: ``{category: {"role", "prompt"}}``; must cover the 3 categories."""
    path = require_file(path, "LLaVA-Bench rule file", "give LLaVA's llava/eval/table/rule.json")
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from err
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: expected an object {{category: {{role, prompt}}}}")
    for name in LLAVA_RULES:
        rule = rules.get(name)
        if not isinstance(rule, dict) or not {"role", "prompt"} <= set(rule):
            raise ValueError(
                f"{path}: rule {name!r} is missing or lacks 'role'/'prompt'; a LLaVA-Bench rule "
                "file needs llava_bench_conv, llava_bench_detail and llava_bench_complex"
            )
    return {k: {"role": str(v["role"]), "prompt": str(v["prompt"])} for k, v in rules.items()}


def mmvet_request(prompt: str, question: str, answer: str, prediction: str) -> str:
    """The user message of the MM-Vet grader: ``prompt``, a newline, then the table row to
    complete, built as the official grader does (spaces around ``<AND>``/``<OR>``)."""
    truth = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt + "\n" + " | ".join([question, truth, prediction, ""])


def parse_mmvet_score(reply: str) -> tuple[float, str] | None:
    """The official parse: the reply's first space-separated token as a float in [0, 1].

    Returns ``(score, token)`` or ``None`` if unparsable (the grader then asks again).
    """
    token = reply.split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return None
    return (score, token) if 0.0 <= score <= 1.0 else None


def llava_review_request(
    rules: dict[str, dict[str, str]],
    category: str,
    caption: str,
    question: str,
    reference: str,
    answer: str,
) -> str:
    """The reviewer's user message, laid out as LLaVA's ``eval_gpt_review_bench.py``.

    Assistant 1 is GPT-4's reference answer, Assistant 2 the model under test; the rule is
    looked up as ``llava_bench_<category>``.
    """
    key = f"llava_bench_{category}"
    if key not in rules:
        raise ValueError(f"no judge rule for category {key!r}; the rule file lacks it")
    role, prompt = rules[key]["role"], rules[key]["prompt"]
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )
