"""A judge running a local Hugging Face causal LM (any ``from_pretrained`` path or hub id)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lightning_aug_dpo.eval.judges import ChatJudge, ChatReply, JudgeError
from lightning_aug_dpo.safe_loading import model_kwargs


class HFJudge(ChatJudge):
    """Judge with ``AutoModelForCausalLM`` + ``AutoTokenizer``, loaded on first use.

    The messages go through the tokenizer's chat template when it has one (else they are joined
    with blank lines). Temperature 0 decodes greedily; a higher temperature samples with
    ``torch.manual_seed(seed)``, the grading-run index, so reruns reproduce. Calls are
    serialised (one model, one device): ``concurrency`` is 1.

    Args:
        model_name_or_path: local checkpoint directory or hub id of a causal LM.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        name: the model name recorded in grade files (default: the directory name).
        trust_remote_code: run code shipped with the checkpoint; off unless you trust it.
            Weights are read from safetensors only.
        **kwargs: prompt files, cache and protocol options of :class:`ChatJudge`.
    """

    concurrency = 1

    def __init__(
        self,
        model_name_or_path: str,
        device: str = "cpu",
        dtype: str = "float32",
        name: str | None = None,
        mmvet_prompt_file: str | None = None,
        llava_rule_file: str | None = None,
        cache_path: str | None = None,
        max_attempts: int = 5,
        llava_temperature: float = 0.2,
        llava_max_tokens: int = 1024,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(
            mmvet_prompt_file,
            llava_rule_file,
            cache_path,
            max_attempts,
            llava_temperature,
            llava_max_tokens,
        )
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or Path(self.model_name_or_path.rstrip("/")).name
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def endpoint(self) -> str:
        return f"hf:{self.model_name_or_path}"

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            path, trust = self.model_name_or_path, self.trust_remote_code
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            self._model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, self.dtype), **model_kwargs(path, trust)
            )
        except (OSError, ValueError) as err:
            raise JudgeError(
                f"{self.model_name_or_path}: cannot load a causal LM judge ({err}); give a "
                "checkpoint directory or hub id that AutoModelForCausalLM loads"
            ) from err
        self._model.to(self.device).eval()

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def chat(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int
    ) -> ChatReply:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            tok = self._tokenizer
            enc = tok(self._prompt(messages), return_tensors="pt").to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
            if temperature > 0:
                kwargs["temperature"] = temperature
                torch.manual_seed(seed)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.no_grad():
                out = self._model.generate(**enc, pad_token_id=pad, **kwargs)
            text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return ChatReply(text.strip(), self.name)
