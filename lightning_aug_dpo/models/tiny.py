"""Write a tiny, random, but *real* LLaVA checkpoint directory.

The demo and the test-suite need a model that goes through exactly the code paths of
``llava-hf/llava-1.5-7b-hf``: ``LlavaForConditionalGeneration.from_pretrained``,
``AutoProcessor.from_pretrained``, the chat template, the ``<image>`` token expansion, PEFT and
bitsandbytes. Nothing may be downloaded, so this module builds every part offline:

* a byte-level BPE tokenizer trained with ``tokenizers`` on a fixed word list (deterministic),
  padded to exactly ``vocab_size`` entries so that every id the model can emit decodes;
* a CLIP vision tower + Llama text model from config, random weights from a fixed seed;
* LLaVA-1.5's vicuna-style chat template (``USER: <image>\\n... ASSISTANT:``);
* a CLIP image processor config (pad-to-square is done by this project's device preprocessing).

Every Linear layer has dimensions that are multiples of 64 (vocab a multiple of 32) because
bitsandbytes' CPU 4-bit kernels require ``in % 64 == 0`` and ``out % 32 == 0``.

Usage: ``python -m lightning_aug_dpo.models.tiny OUT_DIR [--hidden-size 128 --patch-size 8 ...]``
(one option per :class:`TinyLlavaSpec` field; ``--help`` lists them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from lightning_aug_dpo.models.tiny_tokenizer import train_bpe

Spec = TypeVar("Spec")

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

# The LLaVA-1.5 conversation format of llava-hf's processors (vicuna v1 without system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _opt(default: int, help: str) -> Any:
    """A spec field with its ``--flag`` help text (read by :func:`add_spec_arguments`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the tiny model. Defaults keep a CPU forward under a few milliseconds.

    Keep Linear dimensions multiples of 64 (bitsandbytes' CPU 4-bit kernels).
    """

    vocab_size: int = _opt(512, "tokenizer entries; a multiple of 64 (lm_head rule)")
    hidden_size: int = _opt(64, "text model width (Llama hidden_size)")
    intermediate_size: int = _opt(128, "text model MLP width")
    num_hidden_layers: int = _opt(2, "text model layers")
    num_attention_heads: int = _opt(4, "text model attention heads")
    num_key_value_heads: int = _opt(4, "text model key/value heads (grouped-query attention)")
    vision_hidden_size: int = _opt(64, "CLIP vision tower width")
    vision_intermediate_size: int = _opt(128, "CLIP vision tower MLP width")
    vision_layers: int = _opt(2, "CLIP vision tower layers")
    vision_heads: int = _opt(4, "CLIP vision tower attention heads")
    image_size: int = _opt(64, "input image side in pixels")
    patch_size: int = _opt(16, "CLIP patch side; (image_size / patch_size)^2 image tokens")
    max_position_embeddings: int = _opt(512, "text model context length")
    seed: int = _opt(0, "weight initialisation seed")


def add_spec_arguments(parser: argparse.ArgumentParser, spec_type: type) -> None:
    """One ``--field-name`` option per field of the spec dataclass ``spec_type``, with the
    field's default and help, so that new spec fields reach the command line by themselves."""
    group = parser.add_argument_group("model sizes")
    for f in fields(spec_type):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', f.name)} (default: {f.default})"
        group.add_argument(flag, dest=f.name, type=type(f.default), default=f.default,
                           help=help_text, metavar="N")  # fmt: skip


def spec_from_args(spec_type: type[Spec], args: argparse.Namespace) -> Spec:
    """The spec dataclass ``spec_type`` built from the options of :func:`add_spec_arguments`."""
    return spec_type(**{f.name: getattr(args, f.name) for f in fields(spec_type)})


def writer_main(
    argv: list[str] | None,
    doc: str,
    spec_type: type[Spec],
    write: Callable[[str, Spec], Path],
    label: str,
) -> int:
    """The command line of a tiny checkpoint writer: ``OUT_DIR`` and one option per field of
    ``spec_type``; ``write(out_dir, spec)`` writes the checkpoint, ``label`` names it in the
    message. ``doc``'s first paragraph (the writer module's docstring) describes the command."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the checkpoint into")
    add_spec_arguments(parser, spec_type)
    args = parser.parse_args(argv)
    path = write(args.out_dir, spec_from_args(spec_type, args))
    print(f"tiny {label} written to {path}")
    return 0


def point_auto_processor(out: Path, processor_class: str) -> None:
    """Name ``processor_class`` in the saved image processor and tokenizer configs, as the hub
    repos do, so that ``AutoProcessor`` loads ``out`` (for processors this project cannot build
    here: their video processor needs torchvision)."""
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        path = out / name
        data = json.loads(path.read_text())
        data["processor_class"] = processor_class
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` entries, offline."""
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size, SPECIAL_TOKENS, unk_token="<unk>")
    tok.decoder = decoders.ByteLevel()
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=2048,
    )


def write_tiny_llava(out_dir: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, processor and chat template to ``out_dir``.

    The result loads with ``LlavaForConditionalGeneration.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` without network access. Deterministic per spec.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = spec or TinyLlavaSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text_config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        attention_dropout=0.0,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size,
    )
    num_patches = (spec.image_size // spec.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids[IMAGE_TOKEN],
        image_seq_length=num_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    config.pad_token_id = ids["<pad>"]
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    model.save_pretrained(out)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    processor.save_pretrained(out)
    (out / "tiny_llava_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_main(argv, __doc__, TinyLlavaSpec, write_tiny_llava, "LLaVA")


if __name__ == "__main__":
    raise SystemExit(main())
