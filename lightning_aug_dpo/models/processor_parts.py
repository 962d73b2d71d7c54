"""``TokenizerAndImageProcessor``: a processor made of its two parts, for families whose own
processor class cannot be built here (Qwen2-VL, InternVL and SmolVLM processors also build a
video processor, which needs torchvision) and whose modules need only the tokenizer (with its
chat template) and the image processor's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TokenizerAndImageProcessor:
    """The parts of a multimodal processor a family module uses, loaded on their own."""

    tokenizer: Any
    image_processor: Any

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """The prompt text, as the processor's ``apply_chat_template`` renders it."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def save_pretrained(self, path: str) -> None:
        """Both parts into ``path`` (merged exports), where the family's ``load_processor``
        and transformers' ``AutoTokenizer`` / ``AutoImageProcessor`` find them."""
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
