"""``AugDPOModule``: DPO of a LoRA-adapted vision-language model against its own frozen base.

The module is VLM-agnostic. A new model family subclasses it and overrides the hooks in the
"model-specific hooks" section (see ``models/llava.py``); nothing else special-cases a family.

One training step, top to bottom (``training_step`` -> ``preference_step``):

1. log the pair counts of the batch (pairs were made by the DataModule, or read from disk);
2. encode the images once (``encode_images``: the frozen vision tower), reused by every forward;
3. policy log-probs of chosen and rejected, concatenated in ONE forward on the clean image (plus
   the chosen answer on the augmented image when the loss has an mDPO-style term);
4. reference log-probs, under ``no_grad``: the same base with adapters disabled, or a separate
   frozen model (``reference: separate``); skipped for reference-free losses (SimPO);
5. ``loss = self.loss(...)`` (a :class:`PreferenceLoss`), TRL-named metrics logged.

An :class:`SFTBatch` (``SFTDataModule``) goes to the supervised step instead (``sft_step.py``).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_aug_dpo.atomic import atomic_dir
from lightning_aug_dpo.augment import ImagePreprocessor
from lightning_aug_dpo.generation import RolloutMixin
from lightning_aug_dpo.losses import (
    PreferenceLoss,
    SigmoidDPOLoss,
    concat_prompt_response,
    response_logits_to_keep,
    sequence_logprobs,
)
from lightning_aug_dpo.metrics import PREFERENCE_KEYS, PreferenceMetrics, preference_values
from lightning_aug_dpo.runs import run_dir
from lightning_aug_dpo.safe_loading import load_adapter, model_kwargs
from lightning_aug_dpo.schedules import WarmupCosineSchedule
from lightning_aug_dpo.sft_step import SFTMixin
from lightning_aug_dpo.types import PairStats, PreferenceBatch, SFTBatch
from lightning_aug_dpo.validation import check_config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AugDPOModule(RolloutMixin, SFTMixin, pl.LightningModule):
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
            SeVa trains, still runs per forward. Exact; only families that implement
            ``encode_images`` (LLaVA) use it.
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

    # ------------------------------------------------------------------ model-specific hooks
    def load_processor(self) -> Any:
        """Processor (tokenizer + image processor) of the checkpoint."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(
            self.hparams.model_name_or_path, trust_remote_code=self.hparams.trust_remote_code
        )

    def load_config(self) -> Any:
        """The checkpoint's ``PretrainedConfig`` (``config.json``), read before any weights."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            self.hparams.model_name_or_path, trust_remote_code=self.hparams.trust_remote_code
        )

    def empty_model(self, config: Any) -> nn.Module:
        """The model class built from ``config`` on the ``meta`` device: module names and
        shapes without memory or weights (checks LoRA targets before anything loads)."""
        from transformers import AutoModelForImageTextToText

        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(
                config, trust_remote_code=self.hparams.trust_remote_code
            )

    def load_model(self) -> nn.Module:
        """The base model, frozen, optionally 4-bit. Override for other auto classes."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(
            self.hparams.model_name_or_path, **self.from_pretrained_kwargs()
        )

    def quantization_skip_modules(self) -> list[str]:
        """Full module-path prefixes kept out of 4-bit quantisation."""
        return ["lm_head"]

    def lora_target_regex(self) -> str:
        """PEFT ``target_modules`` regex (full match on module paths)."""
        return r".*\.(" + "|".join(self.lora_target_modules) + r")"

    def format_prompt(self, question: str) -> str:
        """Prompt text with one image placeholder, ready for the assistant's answer."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def format_response(self, answer: str) -> str:
        """Text appended to the prompt for an answer (the EOS id is added after it)."""
        return " " + answer

    def expand_image_tokens(self, prompt: str) -> str:
        """Replace the image placeholder by as many tokens as the vision tower yields."""
        return prompt

    def image_preprocessor(self) -> ImagePreprocessor:
        return ImagePreprocessor.from_image_processor(
            self.processor.image_processor, pad_to_square=self.hparams.pad_to_square
        )

    def image_token_id(self) -> int | None:
        return None

    def num_image_tokens(self) -> int | None:
        """Image tokens one placeholder expands to (``None``: the family does not say)."""
        return None

    def num_image_features(self, image_shape: tuple[int, int]) -> int | None:
        """Features the vision tower yields for one ``(H, W)`` model input; a sequence must
        hold exactly this many image tokens (``None``: not checked)."""
        return None

    def image_size_problems(self, config: Any) -> list[str]:
        """Ways the image input size disagrees with the model, each naming the key and the
        fix (checked before any weights load; ``config`` is the checkpoint's config)."""
        return []

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Greedy decoding, as SeVa's rollouts; the image token may never be generated."""
        tok = self.tokenizer
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if self.image_token_id() is not None:
            kwargs["suppress_tokens"] = [self.image_token_id()]
        return kwargs

    def vision_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Model keyword arguments that carry the images into ``forward`` and ``generate``.

        ``pixel_values`` is what :meth:`preprocess_images` made (normalised ``(B, 3, H, W)``, the
        form augmentations work on), one image per row of ``input_ids`` (the prompt ids with the
        image tokens expanded). The default passes the batch as it is. Families whose vision
        input is not such a batch (flattened patches plus a patch grid, per-token modality ids
        for multimodal positions, ...) convert here, so that the DataModule, the augmentations
        and the DPO step stay family-agnostic.
        """
        return {"pixel_values": pixel_values.to(self.compute_dtype)}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """Frozen vision-tower output for ``pixel_values``, computed once per step and handed
        to every :meth:`forward_logits` of the step; ``None`` (this default) when the family
        does not split its vision tower out, and each forward encodes its own images."""
        return None

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        logits_to_keep: int = 0,
        vision_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the active model (policy, or the reference inside ``reference_context``)
        for the last ``logits_to_keep`` positions (0: all). ``vision_features`` is what
        :meth:`encode_images` returned for these rows' images, when it returned something."""
        return self.active_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=logits_to_keep,
            **self.vision_inputs(pixel_values, input_ids),
        ).logits

    # ------------------------------------------------------------------ model construction
    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.hparams.torch_dtype]

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the model's ``from_pretrained``: safetensors weights only (a
        local folder with only ``.bin`` pickles is refused naming the fix), no shipped code
        unless ``trust_remote_code``, dtype and quantisation."""
        path, trust = self.hparams.model_name_or_path, self.hparams.trust_remote_code
        kwargs: dict[str, Any] = {"dtype": self.compute_dtype, **model_kwargs(path, trust)}
        if self.hparams.load_in_4bit and not self._full_precision:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=self.compute_dtype,
                llm_int8_skip_modules=self.quantization_skip_modules(),
            )
            # Quantise straight onto the training device instead of moving packed weights later.
            device = self.trainer.strategy.root_device if self._trainer is not None else "cpu"
            kwargs["device_map"] = {"": str(device)}
        return kwargs

    def configure_model(self) -> None:
        """Load processor and base, freeze the base, attach LoRA. Idempotent."""
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        self.processor = self.load_processor()
        self.model_config = self.load_config()
        check_config(self, self.model_config)  # every config error before the weights load
        base = self.load_model()
        base.requires_grad_(False)
        base.train()  # from_pretrained returns eval mode; Lightning toggles modes from here on
        if self.hparams.gradient_checkpointing:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            base.enable_input_require_grads()
        init_adapter = self.hparams.init_adapter
        if not self.has_adapter:  # finetune: full
            self.unfreeze_for_full_finetune(base)
            self.model = base
        elif init_adapter:
            self.model = load_adapter(base, init_adapter, is_trainable=True)  # safetensors
        else:
            lora = LoraConfig(
                r=self.hparams.lora_r,
                lora_alpha=self.hparams.lora_alpha,
                lora_dropout=self.hparams.lora_dropout,
                target_modules=self.lora_target_regex(),
                modules_to_save=self.hparams.modules_to_save,
                bias="none",
            )
            self.model = get_peft_model(base, lora)
        # Trainable tensors (LoRA, modules_to_save copies) in float32: with a bf16 base and
        # bf16-mixed there is no fp32 master copy, and lr-2e-6 updates would round away.
        for param in self.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        if self.hparams.disable_dropout:
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        if self.hparams.reference == "separate":
            self.reference_model = self._load_reference(init_adapter)
        elif init_adapter:
            log.warning(
                "init_adapter with reference: base compares the policy with the base WITHOUT "
                "%s; set reference: separate to compare with the adapter you start from",
                init_adapter,
            )
        self.preprocessor = self.image_preprocessor()

    def _load_reference(self, init_adapter: str | None) -> nn.Module:
        """A second frozen copy of the base (quantised like the policy's), with the starting
        adapter attached and frozen: the reference for ``reference: separate``."""
        reference = self.load_model()
        if init_adapter:
            reference = load_adapter(reference, init_adapter, is_trainable=False)
        reference.requires_grad_(False)
        # A reference is deterministic: no dropout, whatever the adapter was trained with. It
        # follows the policy's train/eval mode (Lightning toggles both) because bitsandbytes'
        # 4-bit layers use other kernels in eval mode: mixed modes would break ln 2 at step 0.
        for module in reference.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return reference.train()

    @property
    def wants_rollout_logps(self) -> bool:
        """Whether reference rollouts should return the chosen answers' log-probs for reuse."""
        return self.hparams.reuse_rollout_reference_logps and self.loss.needs_reference

    @property
    def active_model(self) -> nn.Module:
        """The model forwards and ``generate`` use: the reference inside
        :meth:`reference_context` when it is a separate model, else the policy."""
        return self.reference_model if self._reference_active else self.model

    def reference_context(self) -> AbstractContextManager:
        """Context in which the forwards compute the reference: the policy with adapters off,
        or the separate frozen reference model."""
        if self.reference_model is None:
            if not self.has_adapter:
                raise ValueError(
                    "model.finetune: full trains the base itself, so there is no adapter to "
                    "disable for the reference (DPO, reference rollouts); set model.reference: "
                    "separate to compare with a frozen copy of model.model_name_or_path"
                )
            return self.model.disable_adapter()
        return self._separate_reference()

    @contextmanager
    def _separate_reference(self):
        self._reference_active = True
        try:
            yield
        finally:
            self._reference_active = False

    # ------------------------------------------------------------ API for DataModule and callbacks
    def preprocess_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 images at native size -> normalised model input on this module's device."""
        self.preprocessor.to(self.device)
        return self.preprocessor([image.to(self.device) for image in images])

    # ------------------------------------------------------------------ DPO maths
    def sequence_logps(
        self,
        batch: PreferenceBatch,
        blocks: tuple[str, ...] = ("chosen", "rejected"),
        vision_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Response log-probs (summed) of the active model for the ``blocks`` asked for, all
        rows in ONE forward: ``chosen`` and ``rejected`` on the clean image, ``chosen_aug`` the
        chosen answer on the augmented image (mDPO's conditional term); plus the mean logits of
        the chosen and rejected rows (``chosen_logits``, ``rejected_logits``).

        ``vision_features``: the :meth:`encode_images` output of ``cat([clean, augmented])``
        (or of the clean images alone), reused instead of encoding again.
        """
        pad, n = self.tokenizer.pad_token_id, len(batch)
        responses = {
            "chosen": (batch.chosen_input_ids, batch.chosen_attention_mask),
            "rejected": (batch.rejected_input_ids, batch.rejected_attention_mask),
            "chosen_aug": (batch.chosen_input_ids, batch.chosen_attention_mask),
        }
        images = {"chosen": batch.pixel_values, "rejected": batch.pixel_values}
        images["chosen_aug"] = batch.aug_pixel_values
        features = {}
        if vision_features is not None:
            clean, augmented = vision_features[:n], vision_features[n:]
            features = {"chosen": clean, "rejected": clean, "chosen_aug": augmented}
        width = max(responses[name][0].shape[1] for name in blocks)

        def widen(t: torch.Tensor, value: int) -> torch.Tensor:
            return nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        input_ids, attention_mask, loss_mask = concat_prompt_response(
            batch.prompt_input_ids.repeat(len(blocks), 1),
            batch.prompt_attention_mask.repeat(len(blocks), 1),
            torch.cat([widen(responses[name][0], pad) for name in blocks]),
            torch.cat([widen(responses[name][1], 0) for name in blocks]),
            pad_id=pad,
        )
        keep = response_logits_to_keep(loss_mask) if self.hparams.response_logits_only else 0
        logits = self.forward_logits(
            input_ids,
            attention_mask,
            torch.cat([images[name] for name in blocks]),
            logits_to_keep=keep,
            vision_features=torch.cat([features[name] for name in blocks]) if features else None,
        )
        logps, mean_logits = sequence_logprobs(logits, input_ids, loss_mask)
        out = {}
        for i, name in enumerate(blocks):
            out[name] = logps[i * n : (i + 1) * n]
            if name in ("chosen", "rejected"):
                out[f"{name}_logits"] = mean_logits[i * n : (i + 1) * n]
        return out

    def preference_step(
        self, batch: PreferenceBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and per-pair metric values of one batch (steps 2-5 of the module docstring)."""
        loss = self.loss
        with_augmented = loss.needs_augmented
        if with_augmented and batch.aug_pixel_values is None:
            raise ValueError(
                f"{type(loss).__name__} scores the chosen answer on the augmented image, but "
                "this batch has none: pairs files without augmentation records (SeVa, TRL) "
                "cannot replay it; use this project's pairs files or roll out online"
            )
        images = batch.pixel_values
        if with_augmented:
            images = torch.cat([images, batch.aug_pixel_values])
        features = self.encode_images(images) if self.hparams.reuse_image_features else None
        augmented = ("chosen_aug",) if with_augmented else ()
        policy = self.sequence_logps(batch, ("chosen", "rejected", *augmented), features)
        reference: dict[str, torch.Tensor] = {}
        if loss.needs_reference:
            blocks = ("chosen", "rejected")
            if batch.reference_chosen_logps is not None and self.wants_rollout_logps:
                # the reference rollout scored the chosen answers already (same tokens)
                blocks = ("rejected",)
                reference["chosen"] = batch.reference_chosen_logps
            if "reference_chosen_aug_logps" in loss.needs:
                blocks += ("chosen_aug",)
            with torch.no_grad(), self.reference_context():
                reference |= self.sequence_logps(batch, blocks, features)
        chosen_lengths = batch.chosen_attention_mask.sum(-1)
        rejected_lengths = batch.rejected_attention_mask.sum(-1)
        out = loss(
            policy["chosen"],
            policy["rejected"],
            reference.get("chosen"),
            reference.get("rejected"),
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            policy_chosen_aug_logps=policy.get("chosen_aug"),
            reference_chosen_aug_logps=reference.get("chosen_aug"),
        )
        values = preference_values(
            out,
            policy["chosen"],
            policy["rejected"],
            policy["chosen_logits"],
            policy["rejected_logits"],
            chosen_lengths,
            rejected_lengths,
        )
        return out.loss, values

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

    def save_adapter(self, path: Any) -> None:
        """PEFT-format adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
        written to a temporary folder beside ``path`` and renamed into place: a kill mid-save
        leaves the previous adapter (or none), never a partial one."""
        if not self.has_adapter:
            raise ValueError(
                f"not writing {path}: model.finetune: full has no adapter; use "
                "export_merged (a plain model folder)"
            )
        self.check_finite(f"the adapter {path}")
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(str(tmp))

    def export_merged(self, path: Any) -> None:
        """A plain transformers checkpoint: the base in ``torch_dtype`` (never 4-bit: merging
        into quantised weights would round the update away) with the adapter and any trained
        ``modules_to_save`` merged in, plus the processor. Loads with ``from_pretrained``.
        With ``finetune: full``: the trained model itself (:meth:`save_full_model`)."""
        from peft import PeftModel

        if not self.has_adapter:
            return self.save_full_model(path)
        with tempfile.TemporaryDirectory() as adapter:
            self.save_adapter(adapter)
            self._full_precision = True
            try:
                base = self.load_model()
            finally:
                self._full_precision = False
            merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        with atomic_dir(path) as tmp:  # all of merged/ or the previous one, as save_adapter
            merged.save_pretrained(str(tmp))
            self.processor.save_pretrained(str(tmp))
