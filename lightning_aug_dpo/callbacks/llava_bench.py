"""LLaVA-Bench (in the wild) at epoch end (and under ``validate``).

Writes ``answers.jsonl`` (LLaVA's answer format), ``reviews-run{k}.jsonl`` (LLaVA's review format,
``tuple = [reference, model]``) and ``scores.json`` (with the judge's ``judge_name``) under
``<run dir>/eval/llava_bench/epoch=N/``; logs ``llava_bench/overall``, ``llava_bench/<category>``
(relative scores, means over review runs), ``llava_bench/failed`` and ``llava_bench/complete``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.eval.generate import DEFAULT_MAX_NEW_TOKENS
from lightning_aug_dpo.eval.judges import Judge
from lightning_aug_dpo.eval.llava_bench import LLaVABench, load_llava_bench
from lightning_aug_dpo.eval.pipeline import finish_llava_bench


class LLaVABenchCallback(BenchmarkCallback):
    """LLaVA-Bench (``data_dir``: ``questions.jsonl``, ``context.jsonl``, ``answers_gpt4.jsonl``,
    ``images/``). Takes every argument of :class:`BenchmarkCallback`, plus ``model_id`` (the
    ``model_id`` of the answer rows)."""

    benchmark = "llava_bench"

    def __init__(
        self,
        data_dir: str,
        judge: Judge | None = None,
        every_n_epochs: int = 1,
        limit: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 8,
        runs: int = 1,
        on_validate: bool = True,
        model_id: str = "policy",
    ) -> None:
        super().__init__(
            data_dir, judge, every_n_epochs, limit, max_new_tokens, batch_size, runs, on_validate
        )
        self.model_id = model_id

    def load(self) -> LLaVABench:
        return load_llava_bench(self.data_dir, self.limit)

    def prompts(self, bench: LLaVABench) -> tuple[dict[Any, str], dict[Any, Path]]:
        return {q: i.question for q, i in bench.items.items()}, dict(bench.images)

    def finish(self, bench: LLaVABench, answers: Any, out: Path) -> dict[str, Any]:
        return finish_llava_bench(bench, answers, self.judge, out, self.runs, self.model_id)
