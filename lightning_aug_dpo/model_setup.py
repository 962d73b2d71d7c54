"""``ModelSetupMixin``: building the models of :class:`AugDPOModule` in ``configure_model``
(processor, config checks, the frozen and optionally 4-bit base, LoRA or full fine-tuning, the
separate reference) and choosing which model a forward runs (policy or reference).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from lightning_aug_dpo.safe_loading import load_adapter, model_kwargs
from lightning_aug_dpo.validation import check_config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelSetupMixin:
    """Model construction for :class:`~lightning_aug_dpo.module.AugDPOModule`."""

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
            # Quantise straight onto the training device instead of moving packed weights later
            # (on CPU, bitsandbytes takes minutes to quantise a 7B model). Without a Trainer:
            # the module's device, so `module.to("cuda")` BEFORE `configure_model()` loads the
            # 4-bit base (and `load_model()`'s copies, e.g. TRL's) straight onto the GPU.
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            kwargs["device_map"] = {"": str(device)}
        elif self._trainer is None and self.device.type != "cpu":
            # Moved to an accelerator before configure_model(): load there, no host copy.
            kwargs["device_map"] = {"": str(self.device)}
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
        if self.compute_dtype != torch.float32:
            for module in self.model.modules():
                copies = getattr(module, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper
                if isinstance(copies, nn.ModuleDict):
                    for trained in copies.values():
                        cast_at_boundaries(trained)
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


def cast_at_boundaries(module: nn.Module) -> None:
    """Run a float32 module inside a lower-precision model: floating inputs are cast to float32
    and the output back to the input's dtype. Without it a trained ``modules_to_save`` copy
    (kept in float32, see ``configure_model``) fails on bf16 inputs outside autocast (a
    bf16 rollout or step without ``precision: bf16-mixed``); under autocast it changes no value,
    since bf16 -> float32 -> bf16 is exact and autocast picks the matmul dtype either way."""

    def up(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        floats = [a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()]
        mod._boundary_dtype = floats[0] if floats else None

        def cast(t: Any) -> Any:
            return t.float() if torch.is_tensor(t) and t.is_floating_point() else t

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def down(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        dtype = mod._boundary_dtype
        if dtype is None or not torch.is_tensor(output) or not output.is_floating_point():
            return output
        return output.to(dtype)

    module.register_forward_pre_hook(up, with_kwargs=True)
    module.register_forward_hook(down, with_kwargs=True)
