"""Run TRL's ``DPOTrainer`` on exactly what an :class:`AugDPOModule` trains on.

TRL is an optional dependency (the ``test`` extra installs it): nothing in the training path
imports this module. It serves the parity test (``tests/test_trl_parity.py``) and the step
benchmark (``benchmarks/perf/dpo_step.py``), which both need TRL's real code on the same model,
LoRA weights and batch as ours.

How a :class:`PreferenceBatch` maps onto TRL's collated batch (TRL 1.x):

* TRL puts the batch's chosen rows first, then its rejected rows: ``input_ids`` is ``(2B, L)``,
  each row ``[prompt tokens][response tokens][pad]`` (flush-left, right-padded with the pad id),
  ``attention_mask`` is 1 on real tokens, ``completion_mask`` is 1 on response tokens only.
  :func:`trl_preference_inputs` builds it with TRL's own ``DataCollatorForPreference`` from each
  row's real (mask-selected) prompt, chosen and rejected ids.
* ``pixel_values`` is the clean image repeated for both halves, as
  ``DataCollatorForVisionPreference`` does (``images * 2``).

``tests/test_trl_parity.py`` checks that this equals what TRL's vision collator makes of the same
texts and images, token for token, so a benchmark may feed it to TRL without text round trips.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_aug_dpo.losses import SigmoidDPOLoss
from lightning_aug_dpo.types import PreferenceBatch

if TYPE_CHECKING:
    from trl import DPOTrainer

    from lightning_aug_dpo.module import AugDPOModule

__all__ = ["mirror_trl_dpo_trainer", "trl_optimizer_step", "trl_preference_inputs"]


def _real_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask, strict=True)]


def trl_preference_inputs(batch: PreferenceBatch, pad_token_id: int) -> dict[str, torch.Tensor]:
    """TRL's collated DPO batch for the pairs of ``batch`` (see the module docstring).

    Tensors are on ``batch.pixel_values``' device; ``pixel_values`` keeps its dtype.
    """
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    prompts = _real_rows(batch.prompt_input_ids, batch.prompt_attention_mask)
    chosen = _real_rows(batch.chosen_input_ids, batch.chosen_attention_mask)
    rejected = _real_rows(batch.rejected_input_ids, batch.rejected_attention_mask)
    examples = [
        {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        for p, c, r in zip(prompts, chosen, rejected, strict=True)
    ]
    inputs = DataCollatorForPreference(pad_token_id=pad_token_id)(examples)
    device = batch.pixel_values.device
    out = {key: value.to(device) for key, value in inputs.items()}
    out["pixel_values"] = batch.pixel_values.repeat(2, 1, 1, 1)
    return out


def copy_trainable_parameters(source: torch.nn.Module, target: torch.nn.Module) -> int:
    """Copy every trainable tensor of ``source`` into the same-named one of ``target``.

    Both must be PEFT models of the same base and LoRA config, so that names match one to one;
    anything else is a setup error and raises. Returns the number of tensors copied.
    """
    wanted = {n: p for n, p in source.named_parameters() if p.requires_grad}
    have = {n: p for n, p in target.named_parameters() if p.requires_grad}
    if wanted.keys() != have.keys():
        extra, missing = sorted(have.keys() - wanted.keys()), sorted(wanted.keys() - have.keys())
        raise ValueError(
            f"trainable tensors differ: {len(missing)} only in ours (e.g. {missing[:2]}), "
            f"{len(extra)} only in TRL's model (e.g. {extra[:2]}); build both from one LoRA config"
        )
    with torch.no_grad():
        for name, param in have.items():
            param.copy_(wanted[name].to(param.dtype))
    return len(have)


def mirror_trl_dpo_trainer(
    module: AugDPOModule,
    output_dir: str | Path,
    learning_rate: float = 1e-5,
    device: str | torch.device = "cpu",
    optim: str = "adamw_torch",
    seed: int = 0,
) -> DPOTrainer:
    """A TRL ``DPOTrainer`` set up as ``module`` (configured) trains, ready for single steps.

    Mirrored from the module: the base checkpoint (a fresh ``module.load_model()``, so weights
    are not shared), its dtype, the LoRA config (``peft_config`` = a copy of the module's),
    the current trainable tensors (copied in after TRL attached its adapter), beta, gradient
    checkpointing (non-reentrant) and dropout (TRL's ``disable_dropout`` is off: both run the
    model as configured). The reference is TRL's default for a PEFT model without ``ref_model``:
    the same model with adapters disabled, as ours. No autocast (``bf16=fp16=False``): both
    compute in the weights' dtype. Only sigmoid DPO without label smoothing has a TRL twin here.

    What ``Trainer.train()`` would otherwise set up before its first step is done here, so that
    :func:`trl_optimizer_step` can drive ``trainer.training_step`` directly: activation
    checkpointing is switched on, ``current_gradient_accumulation_steps = 1`` and the optimizer
    (``optim``, weight decay 0, ``learning_rate``) is created by ``trainer.create_optimizer()``.
    """
    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig, DPOTrainer

    loss = module.loss
    loss.extra_repr()  # a method call builds a LightningCLI lazy_instance default; else a no-op
    # The loss function itself must be sigmoid DPO's (LightningCLI's lazy_instance subclasses the
    # class; RPOLoss subclasses it too but adds an SFT term).
    plain_dpo = type(loss).pair_losses is SigmoidDPOLoss.pair_losses
    if not (isinstance(loss, SigmoidDPOLoss) and plain_dpo) or loss.label_smoothing != 0:
        raise ValueError(
            f"TRL mirroring supports SigmoidDPOLoss without label smoothing, got {loss!r}; "
            "TRL 1.x's 'sigmoid' loss has no cDPO smoothing (see tests/test_trl_parity_losses.py)"
        )
    hp = module.hparams
    device = torch.device(device)
    checkpointing = bool(hp.gradient_checkpointing)
    args = DPOConfig(
        output_dir=str(output_dir),
        use_cpu=device.type == "cpu",
        bf16=False,
        fp16=False,
        beta=loss.beta,
        loss_type=["sigmoid"],
        max_length=None,
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        disable_dropout=False,
        # TRL's defaults, stated (benchmarks/perf/dpo_step.py records them with the reasons):
        # padding_free is disabled in TRL 1.16 (it warns and pads); precompute_ref_log_probs is
        # refused for vision datasets; the rest would change what is computed or how.
        padding_free=False,
        pad_to_multiple_of=None,
        precompute_ref_log_probs=False,
        use_weighting=False,
        activation_offloading=False,
        sync_ref_model=False,
        use_liger_kernel=False,
        torch_compile=False,
        learning_rate=learning_rate,
        weight_decay=0.0,
        optim=optim,
        per_device_train_batch_size=1,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        seed=seed,
    )
    # DPOTrainer requires a train dataset; one row with an image marks it as a vision dataset
    # (collated on the fly, never tokenised up front). Steps are fed collated batches directly.
    row = {"images": [Image.new("RGB", (8, 8))], "prompt": "-", "chosen": "-", "rejected": "-"}
    trainer = DPOTrainer(
        model=module.load_model(),
        args=args,
        train_dataset=Dataset.from_list([row]),
        processing_class=module.processor,
        peft_config=copy.deepcopy(module.model.peft_config["default"]),
    )
    copy_trainable_parameters(module.model, trainer.model)
    if checkpointing:  # Trainer.train() does this before its first step
        kwargs = dict(args.activation_checkpointing_kwargs)
        model = trainer.model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    return trainer


def trl_optimizer_step(trainer: DPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """One optimizer step the way TRL's training loop takes it (no gradient accumulation).

    ``trainer.training_step`` runs ``DPOTrainer.compute_loss`` (policy and reference forwards
    through the fused LM head) and the backward; then the optimizer steps and gradients are
    cleared, as ``Trainer``'s inner loop does. Gradient clipping is left out (ours has none
    either unless a Lightning Trainer is configured for it). Returns the detached loss.
    """
    loss = trainer.training_step(trainer.model, inputs)
    trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)
    return loss
