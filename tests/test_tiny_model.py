"""The tiny checkpoint is a real, loadable LLaVA with bitsandbytes-friendly shapes."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn
from transformers import AutoProcessor, LlavaForConditionalGeneration

from lightning_aug_dpo.models.tiny import (
    IMAGE_TOKEN,
    TinyLlavaSpec,
    add_spec_arguments,
    main,
    write_tiny_llava,
)


def test_loads_with_from_pretrained_and_auto_processor(tiny_llava_dir: Path) -> None:
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    assert type(processor).__name__ == "LlavaProcessor"
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 512
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (tiny_llava_dir / name).is_file(), name


def test_every_linear_dim_is_bitsandbytes_friendly(tiny_llava_dir: Path) -> None:
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) > 20
    for layer in linears:
        assert layer.in_features % 64 == 0 and layer.out_features % 32 == 0, layer


def test_chat_template_and_image_token_expansion(tiny_llava_dir: Path) -> None:
    from PIL import Image

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nHi? ASSISTANT:"
    enc = processor(text=prompt, images=Image.new("RGB", (80, 50)), return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((enc.input_ids == image_id).sum()) == (64 // 16) ** 2
    assert tuple(enc.pixel_values.shape) == (1, 3, 64, 64)


def test_tokenizer_round_trips_text(tiny_llava_dir: Path) -> None:
    tok = AutoProcessor.from_pretrained(tiny_llava_dir).tokenizer
    text = "What color is the circle? It is red, and 3 squares."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok(text).input_ids[0] == tok.bos_token_id


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_llava(tmp_path / "a")
    b = write_tiny_llava(tmp_path / "b")
    c = write_tiny_llava(tmp_path / "c", TinyLlavaSpec(seed=1))
    load = LlavaForConditionalGeneration.from_pretrained
    wa, wb, wc = (load(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_cli_flags_cover_the_spec_and_reach_config_json(tmp_path: Path) -> None:
    out = tmp_path / "wide"
    args = [str(out), "--hidden-size", "128", "--patch-size", "8", "--image-size", "64",
            "--num-hidden-layers", "1", "--seed", "3"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["text_config"]["num_hidden_layers"] == 1
    assert config["vision_config"]["patch_size"] == 8
    assert config["image_seq_length"] == (64 // 8) ** 2
    assert json.loads((out / "processor_config.json").read_text())["patch_size"] == 8
    spec = json.loads((out / "tiny_llava_spec.json").read_text())
    expected = asdict(TinyLlavaSpec(hidden_size=128, patch_size=8, num_hidden_layers=1, seed=3))
    assert spec == expected
    # every spec field has a flag with help text, so a new field cannot be left out
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser, TinyLlavaSpec)
    flags = {a.dest: a for a in parser._actions if a.dest in expected}
    assert set(flags) == set(expected)
    assert all(a.help and a.default == expected_default(a.dest) for a in flags.values())


def expected_default(name: str) -> int:
    return next(f.default for f in fields(TinyLlavaSpec) if f.name == name)


def test_qwen2_vl_cli_flags_reach_config_json(tmp_path: Path) -> None:
    from lightning_aug_dpo.models.tiny_qwen2_vl import TinyQwen2VLSpec
    from lightning_aug_dpo.models.tiny_qwen2_vl import main as qwen_main

    out = tmp_path / "qwen"
    args = [str(out), "--hidden-size", "128", "--vision-depth", "1", "--image-size", "112"]
    assert qwen_main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128
    assert config["vision_config"]["depth"] == 1
    assert config["vision_config"]["hidden_size"] == 128  # the merger follows the text width
    spec = json.loads((out / "tiny_qwen2_vl_spec.json").read_text())
    assert spec == asdict(TinyQwen2VLSpec(hidden_size=128, vision_depth=1, image_size=112))
    pixels = json.loads((out / "preprocessor_config.json").read_text())["size"]
    assert pixels == {"shortest_edge": 112**2, "longest_edge": 112**2}
