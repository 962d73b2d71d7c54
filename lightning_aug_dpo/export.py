"""``CheckpointExportMixin``: what :class:`AugDPOModule` writes. Checkpoints keep only the
trainable tensors (the frozen, possibly 4-bit base reloads from its path); at the end of ``fit``
the PEFT adapter (``adapter/``) and, when asked or after full fine-tuning, ``merged/``. Every write
is atomic and refuses non-finite weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.atomic import atomic_dir
from lightning_aug_dpo.model_card import finish_adapter_folder, model_card
from lightning_aug_dpo.runs import run_dir


class CheckpointExportMixin:
    """Checkpoint contents and adapter / merged exports."""

    def check_finite(self, what: str) -> None:
        """Refuse to write ``what`` when a trainable tensor holds NaN/Inf."""
        bad = [n for n, p in self.named_parameters() if p.requires_grad and not p.isfinite().all()]
        if bad:
            raise FloatingPointError(
                f"not writing {what}: {len(bad)} trainable tensors hold NaN/Inf, e.g. {bad[:3]}"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite("a checkpoint")
        # Keep checkpoints adapter-sized: the frozen (possibly 4-bit) base reloads from its path.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is non-strict (the frozen base is not saved), so check the trainable part here.
        self.configure_model()
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} trainable tensors of this model, e.g. "
                f"{missing[:3]}; it was saved with other LoRA settings (lora_r, "
                "lora_target_modules, modules_to_save): resume with the same model config"
            )

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            if self.has_adapter:
                self.save_adapter(run_dir(self.trainer) / "adapter")
            if self.hparams.export_merged or not self.has_adapter:
                self.export_merged(run_dir(self.trainer) / "merged")

    def run_folder(self) -> Path | None:
        """The run directory while a Trainer is attached (where the evaluation tables are)."""
        trainer = getattr(self, "_trainer", None)
        return run_dir(trainer) if trainer is not None else None

    def save_adapter(self, path: Any, dtype: torch.dtype | None = None) -> None:
        """PEFT-format adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
        written to a temporary folder beside ``path`` and renamed into place: a kill mid-save
        leaves the previous adapter (or none), never a partial one. Its tensors are in
        ``dtype`` (default: the model's ``torch_dtype``), its base model path is absolute and
        its README.md is the run's model card (:mod:`lightning_aug_dpo.model_card`)."""
        if not self.has_adapter:
            raise ValueError(
                f"not writing {path}: model.finetune: full has no adapter; use "
                "export_merged (a plain model folder)"
            )
        self.check_finite(f"the adapter {path}")
        card = model_card(self, "adapter", self.run_folder())
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(str(tmp))
            base = str(self.hparams.model_name_or_path)
            finish_adapter_folder(Path(tmp), base, dtype or self.compute_dtype, card)

    def export_merged(self, path: Any) -> None:
        """A plain transformers checkpoint: the base in ``torch_dtype`` (never 4-bit: merging
        into quantised weights would round the update away) with the adapter and any trained
        ``modules_to_save`` merged in, plus the processor. Loads with ``from_pretrained``.
        With ``finetune: full``: the trained model itself (:meth:`save_full_model`)."""
        from peft import PeftModel

        if not self.has_adapter:
            return self.save_full_model(path)
        with tempfile.TemporaryDirectory() as adapter:
            self.save_adapter(adapter, torch.float32)  # merged exactly, then cast with the base
            self._full_precision = True
            try:
                base = self.load_model()
            finally:
                self._full_precision = False
            merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        with atomic_dir(path) as tmp:  # all of merged/ or the previous one, as save_adapter
            merged.save_pretrained(str(tmp))
            self.processor.save_pretrained(str(tmp))
            (Path(tmp) / "README.md").write_text(model_card(self, "merged", self.run_folder()))
