"""Supervised fine-tuning (visual instruction tuning) as a step of :class:`AugDPOModule`.

:class:`SFTMixin` gives every family, through its existing hooks, a second kind of step: when
``training_step`` / ``validation_step`` receive an :class:`SFTBatch` (from ``SFTDataModule``)
instead of a ``PreferenceBatch``, they call :meth:`SFTMixin.sft_step`, which reads top to bottom:

1. one forward on the full sequences (image tokens, prompt, every turn) through the family's
   ``forward_logits`` (LM head only from the first answer token on, with
   ``response_logits_only``: exact);
2. the token-mean NLL over the assistant tokens, in float32 (:func:`~.losses.token_nll`).

It also holds ``finetune: full``: the language model and the projector trained in full (the
vision tower stays frozen), exported as a plain model folder instead of an adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.atomic import atomic_dir
from lightning_aug_dpo.conversation import TRUNCATED, ConversationMixin
from lightning_aug_dpo.losses import IGNORE_INDEX, response_logits_to_keep, token_nll
from lightning_aug_dpo.model_card import model_card
from lightning_aug_dpo.types import SFTBatch
from lightning_aug_dpo.validation import IMAGE_TOKEN_MISMATCH, PROMPT_TOO_LONG

log = logging.getLogger(__name__)

#: Reasons an SFT row is refused after tokenisation, logged as ``train/samples/dropped/<reason>``.
SFT_DROP_REASONS = (PROMPT_TOO_LONG, IMAGE_TOKEN_MISMATCH)


class SFTMixin(ConversationMixin):
    """The SFT step and full fine-tuning of :class:`AugDPOModule` (see module docstring)."""

    # ------------------------------------------------------------------ full fine-tuning
    @property
    def has_adapter(self) -> bool:
        """Whether the policy is a PEFT adapter over a frozen base (``finetune: lora``)."""
        return self.hparams.finetune == "lora"

    def check_finetune_settings(self) -> None:
        """Refuse settings that ``finetune: full`` cannot honour (called by ``__init__``)."""
        hp = self.hparams
        if hp.finetune not in ("lora", "full"):
            raise ValueError(f"model.finetune must be 'lora' or 'full', got {hp.finetune!r}")
        if hp.finetune == "lora":
            if hp.get("train_vision_tower"):
                raise ValueError(
                    "model.train_vision_tower needs model.finetune: full (LoRA adapts the "
                    "language model only)"
                )
            return
        clashes = {
            "load_in_4bit": (
                hp.load_in_4bit,
                "4-bit weights cannot be trained; set model.load_in_4bit: false (bf16 base) or "
                "model.finetune: lora (QLoRA)",
            ),
            "init_adapter": (
                hp.init_adapter,
                "there is no adapter to start from; merge it first (export_merged) and give "
                "the merged folder as model.model_name_or_path",
            ),
            "modules_to_save": (
                hp.modules_to_save,
                "it is a LoRA option: full fine-tuning trains the projector already "
                "(full_finetune_modules); remove it",
            ),
        }
        problems = [f"model.{k}: {fix}" for k, (value, fix) in clashes.items() if value]
        if problems:
            raise ValueError("model.finetune: full conflicts with " + "; ".join(problems))

    def full_finetune_modules(self) -> list[str]:
        """Module-path prefixes trained with ``finetune: full``: the language model, the
        projector and the LM head (the HF image-text-to-text layout); never the vision tower.
        A family whose modules live elsewhere overrides this."""
        return ["model.language_model", "model.multi_modal_projector", "lm_head"]

    def unfreeze_for_full_finetune(self, model: nn.Module) -> None:
        """Make the :meth:`full_finetune_modules` trainable (every parameter with
        ``train_vision_tower``); each prefix must match."""
        if self.hparams.train_vision_tower:
            model.requires_grad_(True)
            return
        prefixes = self.full_finetune_modules()
        matched = set()
        for name, param in model.named_parameters():
            for prefix in prefixes:
                if name == prefix or name.startswith(prefix + "."):
                    param.requires_grad_(True)
                    matched.add(prefix)
        missing = [p for p in prefixes if p not in matched]
        if missing:
            top = [n for n, _ in model.named_modules() if n.count(".") == 1]
            raise ValueError(
                f"{type(self).__name__}.full_finetune_modules: {missing} match no parameter of "
                f"the model (modules: {top}); override the hook for this family"
            )

    def save_full_model(self, path: Any) -> None:
        """``finetune: full``: the trained model in ``torch_dtype`` (the trainable tensors are
        float32 while training) with the processor, loadable by ``from_pretrained``; written
        whole or not at all, as :meth:`save_adapter`."""
        self.check_finite(f"the model {path}")
        dtype = self.compute_dtype
        state = {
            k: v.to(dtype) if v.is_floating_point() else v
            for k, v in self.model.state_dict().items()
        }
        card = model_card(self, "merged", self.run_folder())
        with atomic_dir(Path(path)) as tmp:
            self.model.save_pretrained(str(tmp), state_dict=state)
            self.processor.save_pretrained(str(tmp))
            (Path(tmp) / "README.md").write_text(card)

    # ------------------------------------------------------------------ the SFT step
    def sft_step(self, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-mean NLL of the batch's assistant tokens (float32) and their count."""
        trained = batch.labels != IGNORE_INDEX
        keep = response_logits_to_keep(trained) if self.hparams.response_logits_only else 0
        logits = self.forward_logits(
            batch.input_ids, batch.attention_mask, batch.pixel_values, logits_to_keep=keep
        )
        return token_nll(logits, batch.labels)

    def sft_training_step(self, batch: SFTBatch) -> torch.Tensor | None:
        """``training_step`` of an :class:`SFTBatch`: loss, ``train/tokens``, refusals."""
        meta = batch.meta
        dropped = meta.get("dropped", {})
        step: dict[str, float] = {
            f"train/samples/dropped/{reason}": float(dropped.get(reason, 0))
            for reason in SFT_DROP_REASONS
        }
        step[f"train/samples/{TRUNCATED}"] = float(meta.get(TRUNCATED, 0))
        if not self._across_ranks(len(batch) > 0, every=False):
            self.empty_batches += 1  # every row refused or unreadable on every rank
            self.log("train/samples/empty_batches", float(self.empty_batches), on_step=True)
            self._log_step(step, 0)
            return None
        if len(batch) == 0:  # other ranks have rows: join the gradient all-reduce with 0
            loss = torch.stack([(p * 0).sum() for p in self.parameters() if p.requires_grad]).sum()
            tokens = torch.zeros((), device=loss.device)
        else:
            loss, tokens = self.sft_step(batch)
        if not self._across_ranks(bool(torch.isfinite(loss)), every=True):
            self._nonfinite(f"loss {loss.item()}")
            self._log_step(step, len(batch))
            return None
        step["train/loss"] = loss.detach()
        step["train/tokens"] = float(tokens)
        self._log_step(step, len(batch))
        return loss

    def sft_eval_step(self, batch: SFTBatch, stage: str) -> None:
        """``val/loss`` (or ``test/loss``): weighted by tokens, so the epoch value is the
        token-mean NLL of the whole held-out set."""
        if len(batch) == 0:
            return
        loss, tokens = self.sft_step(batch)
        if int(tokens) == 0:
            return
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=int(tokens))
