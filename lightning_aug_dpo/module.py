"""``AugDPOModule``: DPO of a LoRA-adapted vision-language model against its own frozen base.

The module is VLM-agnostic. A new model family subclasses it and overrides the hooks of
``family_hooks.py`` (see ``models/llava.py``); nothing else special-cases a family. Where things
are:

* ``family_hooks.py``: the model-specific hooks (loading, prompt format, image tokens, forward);
* ``model_setup.py``: model construction in ``configure_model``, policy vs reference;
* ``dpo_step.py``: the DPO step (``preference_step``: log-probs, reference, loss);
* ``sft_step.py``: the SFT step, for an :class:`SFTBatch` (``SFTDataModule``);
* ``export.py``: checkpoint contents, adapter and merged exports;
* ``generation.py``: rollouts; this file: the constructor and the Lightning hooks.

One training step (``training_step``): log the batch's pair counts, run ``preference_step``
(or the SFT step), skip non-finite steps, log TRL-named metrics.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.dpo_step import DPOStepMixin
from lightning_aug_dpo.export import CheckpointExportMixin
from lightning_aug_dpo.family_hooks import FamilyHooks
from lightning_aug_dpo.generation import RolloutMixin
from lightning_aug_dpo.losses import PreferenceLoss, SigmoidDPOLoss
from lightning_aug_dpo.metrics import PREFERENCE_KEYS, PreferenceMetrics
from lightning_aug_dpo.model_setup import DTYPES, ModelSetupMixin
from lightning_aug_dpo.schedules import WarmupCosineSchedule
from lightning_aug_dpo.sft_step import SFTMixin
from lightning_aug_dpo.types import PairStats, PreferenceBatch, SFTBatch

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "AugDPOModule"]


class AugDPOModule(
    FamilyHooks,
    ModelSetupMixin,
    DPOStepMixin,
    CheckpointExportMixin,
    RolloutMixin,
    SFTMixin,
    pl.LightningModule,
):
    """DPO over self-generated (clean-image answer, augmented-image answer) pairs, and
    supervised fine-tuning on conversations (an ``SFTDataModule`` as ``data``).

    Args:
        model_name_or_path: a local checkpoint directory or a hub id, read by ``from_pretrained``.
        loss: the preference loss; SeVa uses sigmoid DPO with beta 0.1.
        lora_r: LoRA rank (SeVa: 1024).
        lora_alpha: LoRA scaling numerator (SeVa: 2048).
        lora_dropout: dropout on the LoRA branch (SeVa: 0). Non-zero breaks the exact ln 2 at
            step 0, since the policy is then stochastic.
        lora_target_modules: leaf names of the language model's Linear layers to adapt; the
            model hook scopes them to the language model (never the vision tower).
        modules_to_save: submodules trained in full and saved with the adapter (SeVa trains the
            projector: ``[multi_modal_projector]``); with adapters disabled the originals serve
            as the reference.
        load_in_4bit: quantise the frozen base to 4-bit NF4 with bitsandbytes (QLoRA).
        torch_dtype: dtype of the base weights (and 4-bit compute dtype).
        gradient_checkpointing: trade compute for activation memory in the policy forward.
        pad_to_square: LLaVA-1.5's mean-colour padding before resizing.
        max_length: prompt + response tokens kept for DPO; longer responses are truncated.
        init_adapter: start from a saved PEFT adapter (trainable) instead of a fresh one, e.g.
            an SFT adapter, a previous run's, or to evaluate a trained adapter; LoRA settings
            then come from it.
        reference: what the policy is compared with. ``base``: the policy's own base with
            adapters disabled (no second copy in memory; SeVa's setting when training starts
            from the base). ``separate``: a second frozen copy (4-bit when ``load_in_4bit``)
            carrying ``init_adapter``, needed when training starts from an existing adapter.
        reuse_image_features: run the frozen vision tower once per step and reuse its output
            in every forward (chosen and rejected, policy and reference); the projector, which
            SeVa trains, still runs per forward. Exact; families that implement
            ``encode_images`` use it (every shipped one but Qwen2-VL); off by itself with
            ``train_vision_tower``, whose tower must run with grad in each forward.
        share_prompt: score a pair's chosen and rejected answers in ONE packed row
            ``[prompt | chosen | rejected]`` (a block attention mask keeps the answers apart,
            positions restart after the prompt), so each prompt is computed once per forward,
            policy and reference. Exact. ``false``: one row per answer, as TRL does.
        response_logits_only: compute the LM head (and the fp32 log-softmax) only from the
            first response position on, not over the image and prompt tokens. Exact.
        reuse_rollout_reference_logps: with reference rollouts (``data.rollout_model:
            reference``), take the reference log-probs of the chosen answers from the rollout
            (``generate``'s logits) instead of a reference forward over them, and train on the
            generated token ids. Equal up to the numerics of incremental decoding (KV cache,
            eval mode: with a 4-bit base, bitsandbytes' eval kernels differ slightly from the
            training ones); off by default for exactness.
        export_merged: at the end of ``fit`` also write ``merged/``: the full-precision base
            with the adapter merged in, loadable by plain transformers (always written with
            ``finetune: full``).
        disable_dropout: set every dropout of the model (attention, MLP, LoRA) to 0, as SeVa
            and TRL do: a stochastic policy would score pairs with noise and break the exact
            ln 2 at step 0.
        modules_to_save_lr: learning rate of the ``modules_to_save`` (e.g. the projector) when
            it should differ from the optimizer's (LoRA's); ``null``: the same.
        on_nonfinite: a step whose loss or gradients are NaN/Inf: ``skip`` makes no update
            (counted in ``train/nonfinite_steps``), ``error`` stops the run naming the step.
            Either way no adapter or checkpoint with non-finite weights is ever written.
        trust_remote_code: run code shipped with the checkpoint; off unless you trust it.
        finetune: ``lora``: a PEFT adapter over the frozen (optionally 4-bit) base. ``full``:
            the language model, the projector and the LM head trained in full
            (``full_finetune_modules``), the vision tower frozen; not with ``load_in_4bit``,
            ``init_adapter`` or ``modules_to_save``; DPO then needs ``reference: separate``.
            The run writes ``merged/`` (a plain transformers model folder) instead of
            ``adapter/``; checkpoints hold the trained tensors (most of the model).
        train_vision_tower: with ``finetune: full``, train the vision tower too (every
            parameter): for a model trained from scratch, such as the toy base, whose vision
            tower is random. LLaVA-1.5 keeps its pretrained CLIP frozen (the default).
        optimizer: optimizer factory over the trainable parameters.
        lr_scheduler: scheduler factory; a ``WarmupCosineSchedule`` without ``total_steps``
            is sized from the Trainer. Stepped every optimizer step.
    """

    def __init__(
        self,
        model_name_or_path: str,
        loss: PreferenceLoss = lazy_instance(SigmoidDPOLoss, beta=0.1),
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        modules_to_save: list[str] | None = None,
        load_in_4bit: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        pad_to_square: bool = True,
        max_length: int = 2048,
        init_adapter: str | None = None,
        reference: Literal["base", "separate"] = "base",
        reuse_image_features: bool = True,
        share_prompt: bool = True,
        response_logits_only: bool = True,
        reuse_rollout_reference_logps: bool = False,
        export_merged: bool = False,
        disable_dropout: bool = True,
        modules_to_save_lr: float | None = None,
        on_nonfinite: Literal["skip", "error"] = "skip",
        trust_remote_code: bool = False,
        finetune: Literal["lora", "full"] = "lora",
        train_vision_tower: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        # Callables and modules are recorded by LightningCLI's config.yaml; keep them out of
        # hparams (they do not pickle, and the loss is rebuilt from its config).
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self.check_finetune_settings()
        self.loss = loss
        self.lora_target_modules = lora_target_modules or [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model: nn.Module | None = None  # built in configure_model()
        self.reference_model: nn.Module | None = None  # reference: separate
        self._reference_active = False  # inside reference_context() with a separate reference
        self._full_precision = False  # load_model() without quantisation (merged export)
        self.processor: Any = None
        self.model_config: Any = None  # the checkpoint's config.json, read before the weights
        self.preprocessor: ImagePreprocessor | None = None
        self.train_metrics = PreferenceMetrics()
        self.empty_batches = 0  # steps skipped because filtering left no pair on any rank
        self.nonfinite_steps = 0  # steps skipped for a NaN/Inf loss or gradient
        self._step_keys: set[str] = set()  # per-step values logged so far (see _log_step)
        self.val_metrics = PreferenceMetrics(sync_on_step=False)
        # The frozen base is not part of checkpoints: only trainable tensors are saved.
        self.strict_loading = False


    # ------------------------------------------------------------------ Lightning hooks
    def training_step(
        self, batch: PreferenceBatch | SFTBatch, batch_idx: int
    ) -> torch.Tensor | None:
        if isinstance(batch, SFTBatch):
            return self.sft_training_step(batch)
        stats: PairStats = batch.meta["stats"]
        step = {
            f"train/{name}": value
            for name, value in self.train_metrics.update_counts(stats).items()
        }
        for reason, count in stats.dropped.items():  # this rank's counts: reasons vary by rank
            step[f"train/pairs/dropped/{reason}"] = float(count)
        strength = batch.meta.get("augment_strength")
        if strength is not None:  # the same on every rank (adaptive strength syncs its counts)
            step["train/augment/strength"] = float(strength)
        if not self._across_ranks(len(batch) > 0, every=False):
            # Filtering emptied the batch on every rank: nothing to learn, no optimizer step.
            self.empty_batches += 1
            self.log("train/pairs/empty_batches", float(self.empty_batches), on_step=True)
            self._log_step(step, len(batch))
            return None
        if len(batch) == 0:
            # Other ranks have pairs: under DDP this rank must still join the gradient all-reduce
            # and the per-step metric syncs, so it contributes a zero loss and no values.
            loss = torch.stack([(p * 0).sum() for p in self.parameters() if p.requires_grad]).sum()
            values = {key: loss.new_zeros(0) for key in PREFERENCE_KEYS}
        else:
            loss, values = self.preference_step(batch)
        if not self._across_ranks(bool(torch.isfinite(loss)), every=True):
            self._nonfinite(f"loss {loss.item()}")
            self._log_step(step, len(batch))
            return None
        for name, value in self.train_metrics.update(values).items():
            step[f"train/{name}"] = value
        self._log_step(step, len(batch))
        return loss

    def _log_step(self, values: dict[str, Any], batch_size: int) -> None:
        """Log this step's values, and a blank for each per-step value an earlier step logged
        and this one has not (a step without pairs has no loss; a reason that dropped nothing
        dropped 0): Lightning keeps logged step values until the epoch ends and would repeat
        the last ones in this step's row."""
        for key in self._step_keys - values.keys():
            values[key] = 0.0 if key.startswith("train/pairs/dropped/") else float("nan")
        self._step_keys |= values.keys()
        for key, value in values.items():
            self.log(key, value, on_step=True, on_epoch=False, batch_size=max(batch_size, 1))

    def _across_ranks(self, flag: bool, every: bool) -> bool:
        """``flag`` on every rank (``every``) or on any rank: one decision all ranks share."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=every))

    def _nonfinite(self, what: str) -> None:
        """A NaN/Inf loss or gradient at this step: count it and go on, or stop."""
        step = self.trainer.global_step if self._trainer is not None else -1
        if self.hparams.on_nonfinite == "error":
            raise FloatingPointError(
                f"non-finite {what} at optimizer step {step}; no update was made and nothing "
                "was saved from it. Lower the learning rate, check the data, or set "
                "model.on_nonfinite: skip to skip such steps"
            )
        self.nonfinite_steps += 1
        log.warning("skipping optimizer step %d: non-finite %s", step, what)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients are all-reduced by now, so every rank decides the same.
        grads = [p.grad for p in self.parameters() if p.requires_grad and p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            self._nonfinite("gradient")
            for param in self.parameters():  # AdamW leaves parameters without a grad alone
                param.grad = None

    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset_means()

    def validation_step(self, batch: PreferenceBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: PreferenceBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: PreferenceBatch | SFTBatch, stage: str) -> None:
        if isinstance(batch, SFTBatch):
            return self.sft_eval_step(batch, stage)
        if len(batch) == 0:
            return
        _, values = self.preference_step(batch)
        self.val_metrics.update(values)
        for key, metric in self.val_metrics.means.items():
            self.log(
                f"{stage}/{key.replace('__', '/')}",
                metric,
                on_step=False,
                on_epoch=True,
                batch_size=len(batch),
            )

    def predict_step(self, batch: PreferenceBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Offline mode: the pairs themselves, one dict per kept pair (see ``PairsWriter``)."""
        return list(batch.meta["rows"])

    def configure_optimizers(self) -> Any:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        params: Any = [p for _, p in named]
        if self.hparams.modules_to_save_lr is not None:
            # PEFT keeps trained copies of modules_to_save under "modules_to_save."
            saved = [p for n, p in named if ".modules_to_save." in n]
            lora = [p for n, p in named if ".modules_to_save." not in n]
            params = [{"params": lora}, {"params": saved, "lr": self.hparams.modules_to_save_lr}]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupCosineSchedule) and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

