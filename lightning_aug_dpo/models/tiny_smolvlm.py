"""Write a tiny, random, but *real* SmolVLM2 (Idefics3 architecture) checkpoint directory.

SmolVLM2's counterpart of ``models/tiny.py``: a checkpoint laid out as
``HuggingFaceTB/SmolVLM2-2.2B-Instruct`` is (``SmolVLMForConditionalGeneration``: a SigLIP-style
vision tower, Idefics3's pixel-shuffle connector, a Llama text model), so that tests and examples
go through the real code paths without downloading anything:

* a byte-level BPE (GPT-2 style, as SmolLM2's), trained offline on a fixed word list and wrapped
  in ``GPT2Tokenizer``, exactly ``vocab_size`` entries, with Idefics3's image tokens
  (``<fake_token_around_image>``, ``<global-img>``, ``<image>``) and ``<end_of_utterance>``;
* the SmolVLM2-Instruct chat template (``User:`` / ``Assistant:`` turns);
* ``SmolVLMImageProcessorPil`` (no torchvision) with ``size.longest_edge ==
  max_image_size.longest_edge == image_size`` and ``do_image_splitting: false``, so the processor
  makes ONE ``image_size`` view per image, as
  :class:`~lightning_aug_dpo.models.smolvlm.SmolVLMDPOModule` does. ``SmolVLMProcessor`` itself
  needs a video processor (torchvision) and ``num2words``, so it is not saved; the
  ``processor_class`` entries and ``processor_config.json`` (``image_seq_len``) are written as
  in the hub repos (no video processor config: ``AutoProcessor`` is not expected to load it).

Every Linear layer of the text model and the LM head has dimensions that are multiples of 64 in
and 32 out, for bitsandbytes' CPU 4-bit kernels.

Usage: ``python -m lightning_aug_dpo.models.tiny_smolvlm OUT_DIR [--hidden-size 128 ...]``
(one option per :class:`TinySmolVLMSpec` field; ``--help`` lists them;
``--architecture idefics3`` writes the same model as ``Idefics3ForConditionalGeneration``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_aug_dpo.models.tiny import (
    _opt,
    add_spec_arguments,
    point_auto_processor,
    spec_from_args,
)
from lightning_aug_dpo.models.tiny_tokenizer import train_bpe, vocab_and_merges

FAKE_TOKEN, GLOBAL_TOKEN, IMAGE_TOKEN = "<fake_token_around_image>", "<global-img>", "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",  # pad, as in SmolVLM2's tokenizer
    FAKE_TOKEN,
    IMAGE_TOKEN,
    GLOBAL_TOKEN,
    END_OF_UTTERANCE,  # end of a turn: the EOS of chat generation
]

# HuggingFaceTB/SmolVLM2-*-Instruct's chat template (transformers' SmolVLM default), verbatim.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySmolVLMSpec:
    """Sizes of the tiny model. ``image_size / patch_size`` must be a multiple of
    ``scale_factor`` (the connector's pixel shuffle)."""

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Llama hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(2, "text model key/value heads (grouped-query)")
    vision_hidden_size: int = _opt(64, "vision tower width")
    vision_intermediate_size: int = _opt(128, "vision tower MLP width")
    vision_layers: int = _opt(1, "vision tower layers")
    vision_heads: int = _opt(4, "vision tower attention heads")
    # 32 px: 4x4 patches of 8 px, pixel-shuffled 2x2 -> 4 image tokens
    image_size: int = _opt(32, "input image side in pixels (the tower's fixed size)")
    patch_size: int = _opt(8, "vision patch side")
    scale_factor: int = _opt(2, "pixel-shuffle factor of the connector")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def build_smolvlm_tokenizer(vocab_size: int) -> Any:
    """A ``GPT2Tokenizer`` of exactly ``vocab_size`` entries, trained offline (deterministic)."""
    from transformers import GPT2Tokenizer

    bpe = train_bpe(
        vocab_size,
        SPECIAL_TOKENS,
        template_text=["User: Assistant:\n"],
        label="tiny SmolVLM tokenizer",
        writer="tiny_smolvlm.py",
    )
    vocab, merges = vocab_and_merges(bpe)
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token=END_OF_UTTERANCE,
        pad_token="<|im_end|>",
        extra_special_tokens={
            "fake_image_token": FAKE_TOKEN,
            "image_token": IMAGE_TOKEN,
            "global_image_token": GLOBAL_TOKEN,
            "end_of_utterance_token": END_OF_UTTERANCE,
        },
        model_max_length=2048,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|endoftext|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


ARCHITECTURES = ("smolvlm", "idefics3")


def _classes(architecture: str) -> tuple[Any, Any, Any, str]:
    """Config, model and PIL image processor classes and the processor class name."""
    if architecture == "smolvlm":
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
        from transformers.models.smolvlm.image_processing_pil_smolvlm import (
            SmolVLMImageProcessorPil,
        )

        return SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, "SmolVLM"
    if architecture == "idefics3":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil,
        )

        return (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            "Idefics3",
        )
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def write_tiny_smolvlm(
    out_dir: str | Path, spec: TinySmolVLMSpec | None = None, architecture: str = "smolvlm"
) -> Path:
    """Write config, safetensors weights, tokenizer, chat template and image processor config.

    The result loads with ``SmolVLMForConditionalGeneration.from_pretrained(out_dir)`` (or
    ``Idefics3ForConditionalGeneration`` for ``architecture="idefics3"``: the same modules,
    another ``model_type``), ``AutoTokenizer`` and ``AutoImageProcessor`` without network access.
    Deterministic per spec.
    """
    config_class, model_class, image_processor_class, name = _classes(architecture)
    spec = spec or TinySmolVLMSpec()
    patches = spec.image_size // spec.patch_size
    if spec.image_size % spec.patch_size or patches % spec.scale_factor:
        raise ValueError(
            f"image_size / patch_size ({spec.image_size} / {spec.patch_size}) must be a whole "
            f"multiple of scale_factor ({spec.scale_factor})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_smolvlm_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text_config = dict(
        model_type="llama",
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids[END_OF_UTTERANCE],
        pad_token_id=ids["<|im_end|>"],
        attention_dropout=0.0,
    )
    vision_config = dict(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=spec.scale_factor,
        image_token_id=ids[IMAGE_TOKEN],
        pad_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(spec.seed)
    model = model_class(config).eval()
    generation = model.generation_config
    generation.pad_token_id = ids["<|im_end|>"]
    generation.bos_token_id = ids["<|im_start|>"]
    generation.eos_token_id = [ids[END_OF_UTTERANCE], ids["<|im_end|>"]]
    model.save_pretrained(out)

    image_processor = image_processor_class(
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_seq_len = patches**2 // spec.scale_factor**2
    point_auto_processor(out, f"{name}Processor")
    (out / "processor_config.json").write_text(
        json.dumps({"image_seq_len": image_seq_len, "processor_class": f"{name}Processor"}) + "\n"
    )
    (out / "tiny_smolvlm_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the checkpoint into")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="smolvlm")
    add_spec_arguments(parser, TinySmolVLMSpec)
    args = parser.parse_args(argv)
    spec = spec_from_args(TinySmolVLMSpec, args)
    path = write_tiny_smolvlm(args.out_dir, spec, args.architecture)
    print(f"tiny {args.architecture} written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
