"""End-of-run summary: a rich table on the console and ``summary.json`` in the run dir."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.runs import run_dir


class RunSummary(Callback):
    """Prompts seen, pairs kept and dropped, final reward accuracy and benchmark scores."""

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, object]:
        stats = pl_module.train_metrics.compute()
        prompts = stats.get("pairs/prompts", 0.0)
        candidates = stats.get("pairs/candidates", 0.0)
        seconds = stats.get("pairs/rollout_seconds", 0.0)
        tokens = stats.get("pairs/chosen_tokens", 0.0) + stats.get("pairs/rejected_tokens", 0.0)
        out: dict[str, object] = {
            "run_dir": str(run_dir(trainer)),
            "optimizer_steps": trainer.global_step,
            "prompts": int(prompts),
            "candidate_pairs": int(candidates),
            "pairs_kept": int(stats.get("pairs/kept", 0.0)),
            "pairs_identical": int(stats.get("pairs/identical", 0.0)),
            "identical_rate": stats.get("pairs/identical", 0.0) / candidates if candidates else 0.0,
            "rollout_eos_rate": stats.get("pairs/finished", 0.0) / (2 * candidates)
            if candidates and seconds
            else None,
            "rollout_tokens_per_s": tokens / seconds if seconds else None,
            "final_epoch_loss": stats.get("loss"),
            "final_epoch_reward_accuracy": stats.get("rewards/accuracies"),
            "final_epoch_reward_margin": stats.get("rewards/margins"),
        }
        for name, value in trainer.callback_metrics.items():
            if name.startswith(("mmvet/", "llava_bench/", "toy/")):
                out[name] = float(value)
        # The module writes the adapter in its own on_fit_end, which runs after the callbacks'.
        out["adapter"] = str(run_dir(trainer) / "adapter")
        return out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        # atomic: a run killed here leaves no half summary that reads as a finished run's
        write_json(run_dir(trainer) / "summary.json", summary)
        table = Table(title="lightning-aug-dpo: run summary", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        for key, value in summary.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            table.add_row(key.replace("_", " "), text)
        Console().print(table)
