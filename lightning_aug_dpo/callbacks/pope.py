"""POPE at epoch end (and under ``validate``): judge-free yes/no hallucination metrics.

Writes ``answers-<split>.jsonl`` and ``scores.json`` under ``<run dir>/eval/pope/epoch=N/``; logs
``pope/<metric>`` (mean over splits) and ``pope/<split>/<metric>`` for accuracy, precision,
recall, f1 and yes_ratio, in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.eval.pipeline import finish_pope
from lightning_aug_dpo.eval.pope import POPE_SUFFIX, SPLITS, POPEBenchmark, load_pope


class POPECallback(BenchmarkCallback):
    """POPE (``data_dir``: ``coco_pope_<split>.json`` files; ``image_dir``: COCO val2014).

    Args:
        data_dir: folder of the POPE question files.
        image_dir: COCO val2014 images.
        splits: any of random, popular, adversarial.
        prompt_suffix: appended to each question (LLaVA-1.5's short-answer hint by default).
        every_n_epochs, limit (per split), max_new_tokens, batch_size, on_validate: as
            :class:`BenchmarkCallback`.
    """

    benchmark = "pope"
    needs_judge = False

    def __init__(
        self,
        data_dir: str,
        image_dir: str,
        splits: list[str] | None = None,
        prompt_suffix: str = POPE_SUFFIX,
        every_n_epochs: int = 1,
        limit: int | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        on_validate: bool = True,
    ) -> None:
        super().__init__(
            data_dir,
            None,
            every_n_epochs,
            limit,
            max_new_tokens,
            batch_size,
            runs=1,
            on_validate=on_validate,
        )
        self.image_dir = Path(image_dir)
        self.splits = list(splits or SPLITS)
        self.prompt_suffix = prompt_suffix

    def load(self) -> POPEBenchmark:
        return load_pope(self.data_dir, self.image_dir, self.splits, self.limit)

    def prompts(self, bench: POPEBenchmark) -> tuple[dict[Any, str], dict[Any, Path]]:
        questions = {k: i.question + self.prompt_suffix for k, i in bench.items.items()}
        return questions, dict(bench.images)

    def finish(self, bench: POPEBenchmark, answers: Any, out: Path) -> dict[str, Any]:
        return finish_pope(bench, answers, out, "policy")
