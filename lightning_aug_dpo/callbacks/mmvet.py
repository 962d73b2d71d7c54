"""MM-Vet at epoch end (and under ``validate``): answers, grades and scores in official formats.

Writes ``answers.json`` (MM-Vet results format), ``grades.json`` (the official grader's format)
and ``scores.json`` (with the judge's ``judge_name`` beside the scores; the official grade file
keeps its own per-reply ``model``) under ``<run dir>/eval/mmvet/epoch=N/``; logs ``mmvet/total`` and
``mmvet/<capability>`` (means over grading runs) and ``mmvet/complete``. The demo points
``data_dir`` at a toy benchmark in MM-Vet's layout and uses the offline rule judge; the real
benchmark and model judges plug in through ``data_dir`` and ``judge``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.eval.mmvet import MMVetBenchmark, load_mmvet_dir
from lightning_aug_dpo.eval.pipeline import finish_mmvet


class MMVetCallback(BenchmarkCallback):
    """MM-Vet (``data_dir`` = the download: ``mm-vet.json`` + ``images/``).

    Takes every argument of :class:`BenchmarkCallback`: ``data_dir``, ``judge``,
    ``every_n_epochs``, ``limit``, ``max_new_tokens``, ``batch_size``, ``runs``, ``on_validate``.
    """

    benchmark = "mmvet"

    def load(self) -> MMVetBenchmark:
        return load_mmvet_dir(self.data_dir, self.limit)

    def prompts(self, bench: MMVetBenchmark) -> tuple[dict[Any, str], dict[Any, Path]]:
        return {q: i.question for q, i in bench.items.items()}, dict(bench.images)

    def finish(self, bench: MMVetBenchmark, answers: Any, out: Path) -> dict[str, Any]:
        return finish_mmvet(bench, answers, self.judge, out, self.runs)
