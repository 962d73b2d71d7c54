"""The toy world at epoch end (and under ``validate``): exact, judge-free hallucination metrics.

The toy world (:mod:`lightning_aug_dpo.data.toy_world`) records every scene, so an answer is
scored by parsing, not by a judge (:mod:`lightning_aug_dpo.eval.toy_world`): CHAIR_i / CHAIR_s,
coverage, colour / size / position / count errors on the long-form descriptions, and POPE's
accuracy / precision / recall / F1 / yes-ratio on the yes/no probes of the same images.

Writes ``answers.jsonl`` (``{id, prompt, answer}``) and ``scores.json`` under
``<run dir>/eval/toy/epoch=N/``; logs ``toy/<metric>`` and ``toy/pope/<split>/<metric>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_aug_dpo.callbacks.benchmark import BenchmarkCallback
from lightning_aug_dpo.eval.pipeline import finish_toy
from lightning_aug_dpo.eval.toy_world import ToyBenchmark, load_toy_benchmark, toy_prompts


class ToyWorldCallback(BenchmarkCallback):
    """A toy-world split (``split_dir``: ``OUT/val`` or ``OUT/test`` of the world writer).

    Args:
        split_dir: folder with ``descriptions.jsonl`` (and ``pope/`` unless ``pope`` is off).
        image_dir: the world's image folder (default: ``images/`` beside ``split_dir``, where
            the writer puts it).
        limit: only the first ``limit`` descriptions and the probes of their images.
        pope: also ask the yes/no probes (two per image in each of the three samplings).
        max_new_tokens: answer length; 48 holds the longest true description (three objects
            with size, colour, shape and position: some 32 words, roughly 40 LLaMA tokens).
        batch_size: questions per generation call (toy answers are short: large batches).
        every_n_epochs, on_validate: as :class:`BenchmarkCallback`.
    """

    benchmark = "toy"
    needs_judge = False

    def __init__(
        self,
        split_dir: str,
        image_dir: str | None = None,
        limit: int | None = None,
        pope: bool = True,
        max_new_tokens: int = 48,
        batch_size: int = 32,
        every_n_epochs: int = 1,
        on_validate: bool = True,
    ) -> None:
        super().__init__(
            split_dir,
            None,
            every_n_epochs,
            limit,
            max_new_tokens,
            batch_size,
            runs=1,
            on_validate=on_validate,
        )
        self.image_dir = Path(image_dir) if image_dir else self.data_dir.parent / "images"
        self.pope = pope

    def load(self) -> ToyBenchmark:
        return load_toy_benchmark(self.data_dir, self.image_dir, self.limit, self.pope)

    def prompts(self, bench: ToyBenchmark) -> tuple[dict[Any, str], dict[Any, Path]]:
        # The probes are asked as written, without POPE's short-answer suffix: the toy SFT
        # split teaches "Yes, there is ..." / "No, there is no ..." answers to the bare question.
        return toy_prompts(bench)

    def finish(self, bench: ToyBenchmark, answers: Any, out: Path) -> dict[str, Any]:
        return finish_toy(bench, answers, out, {"model": "policy", "split": str(self.data_dir)})
