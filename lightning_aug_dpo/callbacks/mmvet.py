"""Answer an MM-Vet-format benchmark at epoch end, grade it, and log ``mmvet/*``.

Answers are written in MM-Vet's official results format (``{"v1_0": "...", ...}``) and grades in
the official grader's format, under ``<run dir>/mmvet/``. The demo uses a toy benchmark written by
``data/synthetic.py`` and the offline :class:`RuleJudge`; the real benchmark and model judges
plug in through ``data_path`` and ``judge``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_aug_dpo.data.prompts import decode_image
from lightning_aug_dpo.eval import (
    Judge,
    MMVetItem,
    MMVetScores,
    RuleJudge,
    grade_mmvet,
    grade_scores,
    load_mmvet,
    score_mmvet,
    write_answers,
    write_grades,
)
from lightning_aug_dpo.runs import run_dir


class MMVetEvalCallback(Callback):
    """Greedy answers on an MM-Vet-format benchmark, graded, every ``every_n_epochs`` epochs.

    Args:
        data_path: ``mm-vet.json``-style file (``{id: {imagename, question, answer, capability}}``).
        image_folder: folder of the benchmark images (default: ``images/`` beside ``data_path``).
        judge: grader with ``grade(question, answer, prediction)``; default: the offline rule judge.
        max_new_tokens: answer length (MM-Vet's protocol: 1024).
        batch_size: questions per generation call.
        every_n_epochs: evaluate after every n-th training epoch (and always after the last).
        limit: answer only the first ``limit`` questions (quick checks); ``null`` for all.
        model_tag: file-name stem of the answer/grade files.
    """

    def __init__(
        self,
        data_path: str,
        image_folder: str | None = None,
        judge: Judge | None = None,
        max_new_tokens: int = 1024,
        batch_size: int = 8,
        every_n_epochs: int = 1,
        limit: int | None = None,
        model_tag: str = "policy",
    ) -> None:
        self.data_path = Path(data_path)
        self.image_folder = Path(image_folder) if image_folder else self.data_path.parent / "images"
        self.judge = judge or RuleJudge()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.limit = limit
        self.model_tag = model_tag

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        last_epoch = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs
        last_step = max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps
        return epoch % self.every_n_epochs == 0 or last_epoch or last_step

    def questions(self) -> dict[str, MMVetItem]:
        """The benchmark rows to answer (the first ``limit`` when set), read once per run."""
        items = load_mmvet(self.data_path)
        ids = list(items)[: self.limit] if self.limit else list(items)
        return {qid: items[qid] for qid in ids}

    def answer(
        self, pl_module: pl.LightningModule, items: dict[str, MMVetItem] | None = None
    ) -> dict[str, str]:
        """The policy's greedy answers, keyed by question id."""
        items = items if items is not None else self.questions()
        ids = list(items)
        answers: dict[str, str] = {}
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            images = []
            for qid in chunk:
                path = self.image_folder / items[qid].imagename
                try:
                    images.append(decode_image(path))
                except OSError as err:
                    raise ValueError(
                        f"{path}: cannot open the image of {self.data_path} row {qid!r} ({err}); "
                        "check `image_folder`"
                    ) from err
            pixels = pl_module.preprocess_images(images)
            texts = pl_module.generate(
                pixels, [items[q].question for q in chunk], self.max_new_tokens, use_reference=False
            )
            answers.update(zip(chunk, texts, strict=True))
        return answers

    @torch.no_grad()
    def run(self, pl_module: pl.LightningModule, out_dir: Path | None, stem: str) -> MMVetScores:
        """Answer, grade and score; write answers and grades under ``out_dir`` (if given)."""
        items = self.questions()
        answers = self.answer(pl_module, items)
        grades = grade_mmvet(self.judge, items, answers)
        scores = score_mmvet(grade_scores(grades), {q: i.capabilities for q, i in items.items()})
        if out_dir is not None:
            write_answers(out_dir / f"{stem}.json", answers)
            write_grades(out_dir / f"{stem}_{self.judge.name}-grade-1runs.json", grades)
        return scores

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        out = run_dir(trainer) / "mmvet" if trainer.is_global_zero else None
        scores = self.run(pl_module, out, f"{self.model_tag}_epoch{trainer.current_epoch}")
        rank_zero_info(
            f"MM-Vet ({self.data_path.name}, judge {self.judge.name}):\n"
            f"{scores.format_table(combinations=False)}"
        )
        return scores.as_metrics("mmvet")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        for name, value in self.evaluate(trainer, pl_module).items():
            pl_module.log(name, value, on_step=False, on_epoch=True, rank_zero_only=True)
