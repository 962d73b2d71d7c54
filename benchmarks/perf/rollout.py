"""Rollout throughput: greedy generation and pair making through the project's real path.

    python benchmarks/perf/rollout.py                          # tiny + llava-shaped, batch 1-32
    python benchmarks/perf/rollout.py --models tiny --batch-sizes 1 8 --max-new-tokens 16

Models (random weights, written to a temporary directory, nothing downloaded):

* ``tiny``: the test-suite checkpoint of ``lightning_aug_dpo.models.tiny`` (64-wide, 2 layers,
  vocab 512, 64 px / patch 16 = 16 image tokens);
* ``llava-shaped``: LLaVA-1.5's *shapes* where they set the sequence and output size: CLIP at
  336 px / patch 14 = 576 image tokens, a 32000-entry vocabulary (the tiny BPE tokenizer padded
  with decodable filler entries) and the 2-layer GELU projector; width and depth scaled down for
  a CPU (text 256 wide, 4 layers, 2 heads of 128 as LLaVA's; vision 128 wide, 2 layers).
* ``body-heavy`` (opt-in, ``--models body-heavy``; made for the DPO step benchmark): the same
  576 image tokens and vision tower, text 512 wide x 8 layers (4 heads of 128, MLP 1376) and a
  2048-entry vocabulary, so that the transformer body costs >= 20x the LM head per token.
* ``--model-path DIR`` instead: any LLaVA checkpoint directory, e.g. the 7B-shaped one of
  ``benchmarks/perf/shaped_llava.py`` (``make gpu-check`` runs it at batch 8 / 16 / 32).

Each is loaded by ``LlavaDPOModule.configure_model()`` (LoRA r=8 attached through peft) with
``--dtype`` (float32 on CPU, bfloat16 on CUDA). Per batch size ``B`` it times, after
``--warmup`` untimed calls, ``--iters`` calls of:

* **rollout**: ``module.rollout(pixels, questions, N, use_reference=True)`` on a ready normalised
  batch (adapters disabled = the reference, the default ``rollout_model``): tokenisation of the
  576-token-expanded prompts, ``generate`` (prefill + ``N`` greedy steps) and decoding.
  **tok/s** counts generated tokens per row up to and including the first EOS (pad after EOS is
  not counted); **prompts/s** is ``B`` per call.
* **pairs**: ``AugPairDataModule.make_pairs`` on a ``PromptBatch`` of ``B`` random uint8 images
  of mixed sizes about 1.5x the model input (504 x 672, 672 x 504, 504 x 504, 336 x 504 for the
  336 px model), already on the device: preprocessing, diffusion noise (t=500), the clean and
  augmented rollouts in ONE ``generate`` call of ``2B`` rows, identical-pair dropping and
  tokenisation. **pairs/s** counts kept pairs, **pair prompts/s** prompts (each costs two
  rollouts). Comparing ``rollout ms/batch`` at ``2B`` with twice that at ``B`` shows what the
  single call saves over two separate ones.

By default ``min_new_tokens = N`` is added to the module's ``generation_kwargs`` so every row runs
the full ``N`` tokens (a random model would otherwise stop at a random EOS and the token counts
would not compare); ``--no-force-length`` keeps the module's own kwargs, and the token count then
reports what was really generated. CUDA calls are synchronised around each timed call; on CUDA
each measurement also records its peak ``torch.cuda.max_memory_allocated`` (``peak_mib``, the
model included). One run; prints a markdown table and writes JSON (machine, settings, model
shapes, results) to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import torch

from lightning_aug_dpo.atomic import write_json
from lightning_aug_dpo.data.datamodule import AugPairDataModule
from lightning_aug_dpo.models.llava import LlavaDPOModule
from lightning_aug_dpo.models.tiny import TinyLlavaSpec, write_tiny_llava
from lightning_aug_dpo.types import PromptBatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import machine_info  # beside this script

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "rollout.json"
MODELS = ("tiny", "llava-shaped")  # the default run; ALL_MODELS adds the opt-in shapes
ALL_MODELS = (*MODELS, "body-heavy")
LLAVA_VOCAB = 32000
# LLaVA-1.5-7B: CLIP-L/14 at 336 px (1024 wide, 24 layers), vicuna-7B (4096 wide, 32 layers,
# 32 heads of 128). Kept: image size, patch, vocab, head size; scaled: widths and depths.
LLAVA_SHAPED = TinyLlavaSpec(
    vocab_size=512,  # the trained BPE part; padded to LLAVA_VOCAB by pad_vocabulary()
    hidden_size=256,
    intermediate_size=704,  # 11008 / 16, rounded to a multiple of 64
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=2,
    vision_hidden_size=128,
    vision_intermediate_size=512,
    vision_layers=2,
    vision_heads=2,
    image_size=336,
    patch_size=14,
    max_position_embeddings=2048,
)
# The DPO step benchmark's body-heavy shape: LLaVA's 576 image tokens (CLIP 336 px / patch 14),
# the same small vision tower, and a text model whose transformer body costs >= 20x its LM head
# per token, as at 7B (~49x there): linear-layer FLOPs L * (4 h^2 + 3 h i) against h * V,
# 8 * (4 * 512 + 3 * 1376) / 2048 = 24.1 (benchmarks/perf/dpo_step.py computes and reports it).
BODY_HEAVY_VOCAB = 2048
BODY_HEAVY = TinyLlavaSpec(
    vocab_size=512,  # the trained BPE part; padded to BODY_HEAVY_VOCAB by pad_vocabulary()
    hidden_size=512,
    intermediate_size=1376,  # LLaVA-7B's MLP ratio 11008 / 4096 at width 512
    num_hidden_layers=8,
    num_attention_heads=4,  # 4 heads of 128, as LLaVA's
    num_key_value_heads=4,
    vision_hidden_size=128,
    vision_intermediate_size=512,
    vision_layers=2,
    vision_heads=2,
    image_size=336,
    patch_size=14,
    max_position_embeddings=2048,
)
SPECS = {"llava-shaped": LLAVA_SHAPED, "body-heavy": BODY_HEAVY}  # tiny: TinyLlavaSpec()
VOCABS = {"llava-shaped": LLAVA_VOCAB, "body-heavy": BODY_HEAVY_VOCAB}  # after pad_vocabulary
QUESTIONS = (
    "What is the color of the object in the middle?",
    "Describe the image in detail.",
    "How many people are there in the picture?",
    "What is written on the sign?",
    "Is there a dog on the left?",
    "Provide a short caption for this photo.",
)

__all__ = ["ALL_MODELS", "llava_shaped_config", "main", "run_benchmark", "write_model"]


def llava_shaped_config(name: str = "llava-shaped") -> Any:
    """The ``LlavaConfig`` of the llava-shaped (or body-heavy) model (cheap: builds no weights)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    s = SPECS[name]
    text = LlamaConfig(
        vocab_size=VOCABS[name], hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        max_position_embeddings=s.max_position_embeddings,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        hidden_size=s.vision_hidden_size, intermediate_size=s.vision_intermediate_size,
        num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
        image_size=s.image_size, patch_size=s.patch_size, projection_dim=s.vision_hidden_size,
    )  # fmt: skip
    seq = (s.image_size // s.patch_size) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_seq_length=seq)


def pad_tokenizer(model_dir: Path, size: int) -> None:
    """Pad ``tokenizer.json``'s BPE vocabulary to ``size`` with filler entries (no merges: never
    produced by encoding, but every id the model emits decodes)."""
    path = model_dir / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    for i in range(len(vocab), size):
        vocab[f"w{i}"] = i
    path.write_text(json.dumps(tok))


def pad_vocabulary(model_dir: Path, size: int) -> None:
    """:func:`pad_tokenizer`, then rebuild the weights for that vocabulary from the saved
    config."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    pad_tokenizer(model_dir, size)
    config = LlavaConfig.from_pretrained(model_dir)
    config.text_config.vocab_size = size
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    old = LlavaForConditionalGeneration.from_pretrained(model_dir)
    model.generation_config = old.generation_config
    model.save_pretrained(model_dir)


def write_model(name: str, out_dir: Path) -> Path:
    """Write checkpoint ``name`` (see module docstring) to ``out_dir``."""
    if name == "tiny":
        return write_tiny_llava(out_dir)
    if name in SPECS:
        write_tiny_llava(out_dir, SPECS[name])
        pad_vocabulary(out_dir, VOCABS[name])
        return out_dir
    raise ValueError(f"unknown model {name!r}; choose from {ALL_MODELS}")


class _BenchModule(LlavaDPOModule):
    """``LlavaDPOModule`` that can force full-length rollouts."""

    force_length = True

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        kwargs = super().generation_kwargs(max_new_tokens)
        if self.force_length:
            kwargs["min_new_tokens"] = max_new_tokens
        return kwargs


def random_images(batch: int, seed: int, size: int) -> list[torch.Tensor]:
    """``batch`` random uint8 ``(3, H, W)`` images of mixed aspect ratios around ``size``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = ((3, 4), (4, 3), (1, 1), (2, 3))
    out = []
    for i in range(batch):
        h, w = shapes[i % len(shapes)]
        hw = (max(8, size * h // 3), max(8, size * w // 3))
        out.append(torch.randint(0, 256, (3, *hw), generator=gen, dtype=torch.uint8))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset (CUDA only), MiB."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _time(step: Any, iters: int, warmup: int, device: torch.device) -> list[float]:
    for i in range(warmup):
        step(i)
    _sync(device)
    times = []
    for i in range(warmup, warmup + iters):
        t0 = time.perf_counter()
        step(i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure(
    module: _BenchModule, batch: int, max_new_tokens: int, iters: int, warmup: int
) -> dict[str, Any]:
    """Rollout and pair-making throughput of one batch size (see module docstring)."""
    device = module.device
    size = int(module.preprocessor.size)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    pixels = module.preprocess_images(random_images(batch, 0, size))

    answers = []

    def rollout(_: int) -> None:
        answers[:] = module.rollout(pixels, questions, max_new_tokens, use_reference=True)

    _reset_peak(device)
    times = _time(rollout, iters, warmup, device)
    total = sum(times)
    tokens = iters * sum(a.num_tokens for a in answers)  # same inputs every call: greedy is fixed
    row: dict[str, Any] = {
        "rollout": {
            "tokens_per_s": tokens / total, "prompts_per_s": batch * iters / total,
            "ms_per_batch": 1000 * total / iters, "ms_per_batch_median": 1000 * median(times),
            "tokens_per_batch": tokens / iters,
            "finished_rows_per_batch": sum(a.finished for a in answers),
            "peak_mib": _peak_mib(device),
        }
    }  # fmt: skip

    data = AugPairDataModule(data_path="-", image_folder="-", max_new_tokens=max_new_tokens)
    kept = identical = 0

    def pairs(i: int) -> None:
        nonlocal kept, identical
        images = random_images(batch, 1 + i, size * 3 // 2)  # 336 -> 504 x 672 etc.
        prompts = PromptBatch(
            ids=[f"{i}-{j}" for j in range(batch)],
            indices=list(range(i * batch, (i + 1) * batch)),
            image_paths=[f"{i}-{j}.jpg" for j in range(batch)],
            images=[t.to(device) for t in images],
            questions=questions,
        )
        stats = data.make_pairs(prompts, module, epoch=0).meta["stats"]
        if i >= warmup:
            kept, identical = kept + stats.kept, identical + stats.identical

    _reset_peak(device)
    times = _time(pairs, iters, warmup, device)
    total = sum(times)
    row["pairs"] = {
        "pairs_per_s": kept / total, "prompts_per_s": batch * iters / total,
        "ms_per_batch": 1000 * total / iters, "ms_per_batch_median": 1000 * median(times),
        "kept": kept, "identical": identical, "peak_mib": _peak_mib(device),
    }  # fmt: skip
    return row


def run_benchmark(
    models: list[str],
    batch_sizes: list[int],
    max_new_tokens: int,
    iters: int,
    warmup: int,
    device: torch.device,
    dtype: str,
    force_length: bool = True,
    model_path: Path | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Model shapes and one result row per (model, batch size); ``model_path``: load that
    checkpoint (named ``models[0]``) instead of writing one."""
    shapes: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in models:
        with tempfile.TemporaryDirectory(prefix="rollout-") as tmp:
            path = model_path or write_model(name, Path(tmp))
            torch.manual_seed(0)
            module = _BenchModule(str(path), lora_r=8, lora_alpha=16, torch_dtype=dtype)
            module.force_length = force_length
            module.to(device)  # first: the weights load straight onto the device
            module.configure_model()
            module.to(device)
            shapes[name] = model_shape(name, module)
            for batch in batch_sizes:
                row = {"model": name, "batch_size": batch}
                row |= measure(module, batch, max_new_tokens, iters, warmup)
                rows.append(row)
                print(f"  {_cells(row)}", file=sys.stderr, flush=True)
            del module
    return shapes, rows


def model_shape(name: str, module: LlavaDPOModule) -> dict[str, Any]:
    """Sizes of a loaded model: its spec (a named model) or its config's (``--model-path``)."""
    config = module.model.config
    base = SPECS.get(name, TinyLlavaSpec() if name == "tiny" else None)
    if base is not None:
        spec = asdict(replace(base, vocab_size=config.text_config.vocab_size))
    else:
        text, vision = config.text_config, config.vision_config
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        spec = {key: getattr(text, key) for key in (*keys, "num_attention_heads")}
        spec |= {f"vision_{key}": getattr(vision, key) for key in keys[1:]}
        spec |= {"image_size": vision.image_size, "patch_size": vision.patch_size}
    return {
        **spec, "image_tokens": module.num_image_tokens(),
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }  # fmt: skip


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}


def _cells(row: dict[str, Any]) -> str:
    r, p = row["rollout"], row["pairs"]
    cells = [row["model"], str(row["batch_size"]), f"{r['tokens_per_s']:.1f}"]
    cells += [f"{r['prompts_per_s']:.2f}", f"{r['ms_per_batch']:.0f}", f"{p['pairs_per_s']:.2f}"]
    cells += [f"{p['prompts_per_s']:.2f}", f"{p['kept']}/{p['kept'] + p['identical']}"]
    return " | ".join([*cells, f"{p['ms_per_batch']:.0f}"])


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table (one row per model and batch size)."""
    head = ["model", "batch", "rollout tok/s", "rollout prompts/s", "rollout ms/batch"]
    head += ["pairs/s", "pair prompts/s", "kept pairs", "pairs ms/batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [f"| {_cells(row)} |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=ALL_MODELS)
    parser.add_argument(
        "--model-path", type=Path, help="an existing LLaVA checkpoint directory instead of --models"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=32, help="rollout length N")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="base weights' dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--no-force-length",
        action="store_true",
        help="do not add min_new_tokens: rows stop at their own EOS",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.iters < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        parser.error("--iters and --max-new-tokens must be >= 1, --warmup >= 0")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be >= 1")

    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if args.model_path is not None:
        args.models = [str(args.model_path)]
    settings = {
        "models": list(args.models), "batch_sizes": list(args.batch_sizes),
        "max_new_tokens": args.max_new_tokens, "iters": args.iters, "warmup": args.warmup,
        "device": str(device), "dtype": dtype, "force_length": not args.no_force_length,
        "use_reference": True, "augmentation": "DiffusionNoise(noise_step=500)", "lora_r": 8,
    }  # fmt: skip
    print(f"rollout throughput: {settings}", file=sys.stderr, flush=True)
    load_before, started = os.getloadavg(), time.perf_counter()
    shapes, rows = run_benchmark(
        args.models,
        args.batch_sizes,
        args.max_new_tokens,
        args.iters,
        args.warmup,
        device,
        dtype,
        not args.no_force_length,
        args.model_path,
    )
    report = {
        "benchmark": "rollout",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/perf/rollout.py", *given]),
        "machine": {**machine_info(device), **_versions()},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - started,
        "settings": settings,
        "models": shapes,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)  # atomic: an interrupted run keeps the old report
    print(format_table(rows))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
