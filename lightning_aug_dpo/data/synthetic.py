"""Tiny, fully generated stand-ins for LLaVA-1.5 training data and the MM-Vet benchmark.

The demo and the tests need image/instruction data in the real on-disk formats without any
download. Everything here is drawn with PIL from a seeded ``random.Random`` (never the global
random state), so the same seed gives byte-identical JSON and PNG files, and every answer is
true for its image because it is derived from the same scene record that was rendered.

Run ``python -m lightning_aug_dpo.data.synthetic OUT_DIR`` to write ``OUT_DIR/llava`` and
``OUT_DIR/mmvet``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_aug_dpo.data.scenes import COLORS as COLORS  # re-exported: the palette
from lightning_aug_dpo.data.scenes import (
    MAX_SIDE,
    SHAPES,
    Scene,
    Shape,
    _new_scene,
    _place_shapes,
    _random_kinds,
    _scene_with_words,
    _text_size,
    render_scene,
)

WORDS = ("CAT", "DOG", "SUN", "MOON", "STAR", "TREE", "BOAT", "LAKE", "FOX", "BIRD", "RAIN", "GOLD")
FIRST_NAMES = ("ANNA", "LEO", "MAX", "EVA", "SAM", "IDA", "TOM", "ZOE")
LAST_NAMES = ("LEE", "KING", "MOSS", "DAY", "HALE", "WEST", "ROSS", "COLE")
OCR_SUFFIX = "\nAnswer the question using a single word or phrase."
TEXTVQA_PROMPT = "Provide a one-sentence caption for the provided image.\nReference OCR token: "
MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass
class Sample:
    """A generated record (LLaVA row or MM-Vet item) together with its scene."""

    record: dict
    image_path: str
    scene: Scene




def _describe(shapes: list[Shape]) -> str:
    parts = [f"{'an' if s.color == 'orange' else 'a'} {s.color} {s.kind}" for s in shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --- LLaVA question families: each returns (question, answer) or None if not applicable ---
QA = tuple[str, str] | None


def _q_color(rng: random.Random, scene: Scene) -> QA:
    unique = [s for s in scene.shapes if scene.count(s.kind) == 1]
    if not unique:
        return None
    s = rng.choice(unique)
    return f"What color is the {s.kind}?", s.color


def _q_count(rng: random.Random, scene: Scene) -> QA:
    kind = rng.choice([None, *sorted({s.kind for s in scene.shapes})])
    if kind is None:
        return "How many shapes are there?", str(len(scene.shapes))
    return f"How many {kind}s are there?", str(scene.count(kind))


def _q_left_of(rng: random.Random, scene: Scene) -> QA:
    unique = [s for s in scene.shapes if scene.count(s.kind) == 1]
    if len(unique) < 2:
        return None
    a, b = rng.sample(unique, 2)
    return f"Is the {a.kind} to the left of the {b.kind}?", "Yes" if a.cx < b.cx else "No"


def _q_exists(rng: random.Random, scene: Scene) -> QA:
    kind = rng.choice(SHAPES)
    return f"Is there a {kind} in the image?", "Yes" if scene.count(kind) else "No"


def _q_word(rng: random.Random, scene: Scene) -> QA:
    return ("What word is written in the image?", scene.texts[0][0]) if scene.texts else None


CocoFamily = Callable[[random.Random, Scene], QA]
COCO_FAMILIES: tuple[CocoFamily, ...] = (_q_color, _q_count, _q_left_of, _q_exists, _q_word)


def conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """LLaVA-665k ``conversations``: human/gpt turns, ``<image>`` in the first human turn."""
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _row(image_dir: str, ident: str, scene: Scene, turns: list[tuple[str, str]]) -> Sample:
    image = f"{image_dir}/{ident}.png"
    return Sample(
        {"id": ident, "image": image, "conversations": conversation(turns)}, image, scene
    )


def _coco_sample(rng: random.Random, idx: int) -> Sample:
    words = [rng.choice(WORDS)] if rng.random() < 0.3 else []
    scene = _scene_with_words(rng, _random_kinds(rng, rng.randint(1, 4)), words)
    qas = [qa for family in COCO_FAMILIES if (qa := family(rng, scene)) is not None]
    turns = rng.sample(qas, min(len(qas), rng.randint(1, 3)))
    return _row("coco/train2017", f"{idx:012d}", scene, turns)


def _ocr_sample(rng: random.Random, idx: int) -> Sample:
    """A portrait "book cover": title at the top, one decorative shape, author at the bottom."""
    title = " ".join(rng.sample(WORDS, rng.randint(1, 2)))
    author = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    text_w = max(_text_size(title)[0], _text_size(author)[0])
    w = min(MAX_SIDE - 8, max(rng.randint(56, 100), text_w + 8))
    scene = _new_scene(rng, (w, rng.randint(w + 8, MAX_SIDE)))
    th = _text_size("A")[1]
    scene.texts = [
        (title, (w - _text_size(title)[0]) // 2, 4),
        (author, (w - _text_size(author)[0]) // 2, scene.height - th - 5),
    ]
    box = (0, th + 8, w, scene.height - th - 8)
    scene.shapes = _place_shapes(rng, [rng.choice(SHAPES)], box)
    turns = [
        ("Who is the author of this book?", author),
        ("What is the title of this book?", title),
    ]
    turns = [(q + OCR_SUFFIX, a) for q, a in rng.sample(turns, 2)]
    return _row("ocr_vqa/images", f"{idx:010d}", scene, turns)


def _textvqa_sample(rng: random.Random, idx: int) -> Sample:
    words = rng.sample(WORDS, rng.randint(1, 2))
    scene = _scene_with_words(rng, _random_kinds(rng, rng.randint(1, 3)), words)
    quoted = " and ".join(f'"{w}"' for w in words)
    noun = "word" if len(words) == 1 else "words"
    caption = f"A {scene.background} picture of {_describe(scene.shapes)} with the {noun} {quoted}."
    turns = [(TEXTVQA_PROMPT + ", ".join(words), caption)]
    return _row("textvqa/train_images", f"{idx:016x}", scene, turns)


def build_llava_samples(num_images: int = 64, seed: int = 0) -> list[Sample]:
    """Generate the LLaVA-format rows and their scenes in memory (no files written)."""
    rng = random.Random(seed)
    quarter = num_images // 4
    makers = [_ocr_sample] * quarter + [_textvqa_sample] * quarter
    makers += [_coco_sample] * (num_images - 2 * quarter)
    rng.shuffle(makers)  # LLaVA's mix file is shuffled across sources too
    return [make(rng, idx) for idx, make in enumerate(makers)]


def _write_samples(samples: list[Sample], image_root: Path, json_path: Path, data: object) -> None:
    for s in samples:
        path = image_root / s.image_path
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(s.scene).save(path, format="PNG")
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_llava_dataset(out_dir: str | Path, num_images: int = 64, seed: int = 0) -> Path:
    """Write ``out_dir/llava_mix.json`` and PNGs under ``out_dir/images``; return the JSON path.

    Rows follow ``llava_v1_5_mix665k.json``; ``"image"`` is relative to ``out_dir/images`` and
    uses LLaVA's ``coco/train2017/``, ``ocr_vqa/images/`` and ``textvqa/train_images/``
    prefixes (about 1/2, 1/4 and 1/4 of the rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = build_llava_samples(num_images, seed)
    json_path = out / "llava_mix.json"
    _write_samples(samples, out / "images", json_path, [s.record for s in samples])
    return json_path


# --- MM-Vet families: each returns (scene, question, answer, capabilities) ---
MMVetItem = tuple[Scene, str, str, list[str]]


def _mv_shapes(rng: random.Random) -> MMVetItem:
    scene = _scene_with_words(rng, rng.sample(SHAPES, rng.randint(2, 3)), [])
    kinds = sorted({s.kind for s in scene.shapes})
    return scene, "What shapes are in the image?", "<AND>".join(kinds), ["rec"]


def _mv_count(rng: random.Random) -> MMVetItem:
    kind, n = rng.choice(SHAPES), rng.randint(1, 3)
    others = tuple(k for k in SHAPES if k != kind)  # distractors must not change the count
    scene = _scene_with_words(rng, [kind] * n + _random_kinds(rng, rng.randint(0, 1), others), [])
    return scene, f"How many {kind}s are there?", f"{n}<OR>{NUMBER_WORDS[n]}", ["rec", "math"]


def _mv_word(rng: random.Random) -> MMVetItem:
    word = rng.choice(WORDS)
    scene = _scene_with_words(rng, _random_kinds(rng, rng.randint(1, 2)), [word])
    return scene, "What word is written?", word, ["ocr"]


def _mv_letters(rng: random.Random) -> MMVetItem:
    word = rng.choice(WORDS)
    scene = _scene_with_words(rng, _random_kinds(rng, 1), [word])
    q = "What word is written, and how many letters does it have?"
    return scene, q, f"{word}<AND>{len(word)}", ["ocr", "math"]


def _mv_left(rng: random.Random) -> MMVetItem:
    scene = _scene_with_words(rng, rng.sample(SHAPES, 2), [])
    left = min(scene.shapes, key=lambda s: s.cx)
    return scene, "Which shape is on the left?", left.kind, ["rec", "spat"]


def _mv_corners(rng: random.Random) -> MMVetItem:
    scene = _scene_with_words(rng, ["circle", *rng.sample(["square", "triangle"], 2)], [])
    circle = next(s for s in scene.shapes if s.kind == "circle")
    q = "What is the color of the shape that has no corners?"
    return scene, q, circle.color, ["rec", "know"]


def _mv_caption(rng: random.Random) -> MMVetItem:
    scene = _scene_with_words(rng, _random_kinds(rng, rng.randint(1, 2)), [])
    return scene, "Describe the image in one sentence.", _describe(scene.shapes), ["rec", "gen"]


MMVET_FAMILIES = (_mv_shapes, _mv_count, _mv_word, _mv_left, _mv_corners, _mv_letters, _mv_caption)


def build_mmvet_samples(num_questions: int = 24, seed: int = 1) -> list[Sample]:
    """Generate MM-Vet-style items ``v1_0 .. v1_{n-1}`` and their scenes in memory."""
    rng = random.Random(seed)
    samples = []
    for i in range(num_questions):
        # Cycle through families so every capability appears even for small n.
        scene, question, answer, caps = MMVET_FAMILIES[i % len(MMVET_FAMILIES)](rng)
        name = f"v1_{i}.png"
        record = {"imagename": name, "question": question, "answer": answer, "capability": caps}
        samples.append(Sample(record, name, scene))
    return samples


def write_mmvet_benchmark(out_dir: str | Path, num_questions: int = 24, seed: int = 1) -> Path:
    """Write ``out_dir/mm-vet.json`` (dict keyed ``v1_<i>``) and ``out_dir/images/v1_<i>.png``.

    Answers use MM-Vet's ``<AND>``/``<OR>`` ground-truth syntax; returns the JSON path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = build_mmvet_samples(num_questions, seed)
    data = {f"v1_{i}": s.record for i, s in enumerate(samples)}
    json_path = out / "mm-vet.json"
    _write_samples(samples, out / "images", json_path, data)
    return json_path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: write ``OUT_DIR/llava`` and ``OUT_DIR/mmvet``."""
    parser = argparse.ArgumentParser(description="Write a synthetic LLaVA dataset and MM-Vet set.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--num-questions", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    llava = write_llava_dataset(args.out_dir / "llava", args.num_images, args.seed)
    # seed + 1 keeps the defaults of the two writers (0 and 1) and decorrelates their scenes.
    mmvet = write_mmvet_benchmark(args.out_dir / "mmvet", args.num_questions, args.seed + 1)
    print(f"wrote {llava}")
    print(f"wrote {mmvet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
