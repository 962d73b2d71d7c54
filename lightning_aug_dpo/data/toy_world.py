"""The toy world: scenes of coloured shapes with long-form instructions and exact scene records.

A world small enough to train a VLM on one CPU, built so that SeVa has something to fix:

* a scene holds 1-3 shapes (18 kinds: 6 colours x circle/square/triangle), each ``small`` or
  ``large``, each in its own column (``on the left``, ``in the middle``, ``on the right``);
* the SFT split carries **co-occurrence priors**: each anchor kind (``PRIOR_PAIRS``) comes with
  its partner in ``prior_strength`` of its scenes (0.9), as COCO's dining tables come with chairs.
  Validation and test scenes break the prior half of the time (``prior_strength`` 0.5), so a
  model that answers from the prior names an absent partner: a hallucinated object;
* instructions ask for long answers ("Describe the image in detail.", "What is in the picture
  and where?", questions answered in a sentence), rendered from varied templates; the answer of
  every SFT row is derived from the same scene record that was drawn, so it is true;
* splits are seeded separately: ``train`` (SFT conversations, LLaVA-665k format), ``pool``
  (SeVa's unlabelled prompts: ``{image, text}`` rows, answers never written), ``val`` (choosing
  settings) and ``test`` (read once per reported setting). ``val`` and ``test`` hold
  ``descriptions.jsonl`` (long-form prompts with their scenes, scored by
  :mod:`lightning_aug_dpo.eval.toy_world`) and POPE question files
  (``pope/coco_pope_{random,popular,adversarial}.json``) that the project's POPE loader reads.

Everything is drawn from seeded ``random.Random`` streams, so a seed gives byte-identical files.
``python -m lightning_aug_dpo.data.toy_world OUT_DIR`` writes the world (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_aug_dpo.atomic import write_lines
from lightning_aug_dpo.data.scenes import Scene, Shape, render_scene
from lightning_aug_dpo.data.synthetic import conversation

IMAGE_SIZE = 64
TOY_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
TOY_SHAPES = ("circle", "square", "triangle")
KINDS: tuple[tuple[str, str], ...] = tuple((c, s) for c in TOY_COLORS for s in TOY_SHAPES)
COLUMNS = ("on the left", "in the middle", "on the right")
SIZES = {"small": (5, 6), "large": (9, 10)}  # half-sizes in pixels at 64 px
NUMBERS = ("zero", "one", "two", "three")
# anchor -> partner: in the SFT split the partner appears with the anchor in 90% of its scenes
PRIOR_PAIRS: dict[tuple[str, str], tuple[str, str]] = {
    ("red", "circle"): ("blue", "square"),
    ("yellow", "triangle"): ("green", "circle"),
    ("purple", "square"): ("orange", "triangle"),
    ("green", "square"): ("red", "triangle"),
}
DESCRIBE_PROMPTS = (
    "Describe the image in detail.",
    "What is in the picture and where?",
    "Describe this picture.",
    "What do you see in this image?",
    "Give a detailed description of the image.",
    "List the shapes in the image and where they are.",
)
SPLIT_SEEDS = {"train": 101, "pool": 202, "val": 303, "test": 404}
DEFAULT_SIZES = {"train": 6000, "pool": 1024, "val": 200, "test": 400}
PRIOR_STRENGTH = {"train": 0.9, "pool": 0.9, "val": 0.5, "test": 0.5}
ANCHOR_RATE = {"train": 0.3, "pool": 0.3, "val": 0.5, "test": 0.5}


@dataclass(frozen=True)
class ToyObject:
    color: str
    kind: str
    size: str  # "small" | "large"
    column: int  # 0 left, 1 middle, 2 right

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    def phrase(self, with_position: bool = True) -> str:
        article = "an" if self.size[0] in "aeiou" else "a"
        where = f" {COLUMNS[self.column]}" if with_position else ""
        return f"{article} {self.size} {self.color} {self.kind}{where}"


@dataclass(frozen=True)
class ToyScene:
    """Objects ordered left to right, plus what re-renders the image exactly."""

    objects: tuple[ToyObject, ...]
    cy: tuple[int, ...]  # vertical centre of each object
    cx_jitter: tuple[int, ...]
    noise_seed: int

    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def to_record(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "cy": list(self.cy),
                "cx_jitter": list(self.cx_jitter), "noise_seed": self.noise_seed}

    @classmethod
    def from_record(cls, record: dict) -> ToyScene:
        return cls(tuple(ToyObject(**o) for o in record["objects"]), tuple(record["cy"]),
                   tuple(record["cx_jitter"]), int(record["noise_seed"]))


def sample_scene(rng: random.Random, prior_strength: float, anchor_rate: float) -> ToyScene:
    """1-3 distinct kinds in distinct columns.

    The first kind is an anchor with probability ``anchor_rate`` (else any kind). An anchor
    brings its partner with probability ``prior_strength``; otherwise the partner is kept out of
    the scene. An anchor is only drawn where there is room for its partner, so the prior holds
    exactly as configured.
    """
    n = rng.choices((1, 2, 3), weights=(2, 4, 4))[0]
    anchors = sorted(PRIOR_PAIRS)
    kinds: list[tuple[str, str]] = []
    banned: set[tuple[str, str]] = set()
    while len(kinds) < n:
        if not kinds and n > 1 and rng.random() < anchor_rate:
            kind = rng.choice(anchors)
        else:
            room = n - len(kinds) >= 2
            kind = rng.choice([
                k for k in KINDS
                if k not in kinds and k not in banned
                and (room or k not in PRIOR_PAIRS or PRIOR_PAIRS[k] in kinds)
            ])
        kinds.append(kind)
        partner = PRIOR_PAIRS.get(kind)
        if partner is not None and partner not in kinds:
            if rng.random() < prior_strength:
                kinds.append(partner)
            else:
                banned.add(partner)
    rng.shuffle(kinds)
    columns = sorted(rng.sample(range(3), len(kinds)))
    objects = tuple(
        ToyObject(c, s, rng.choice(sorted(SIZES)), col)
        for (c, s), col in zip(kinds, columns, strict=True)
    )
    cy = tuple(rng.randint(14, IMAGE_SIZE - 14) for _ in objects)
    jitter = tuple(rng.randint(-2, 2) for _ in objects)
    return ToyScene(objects, cy, jitter, rng.randrange(2**31))


def render_toy_scene(scene: ToyScene) -> Scene:
    """The scene as :mod:`.synthetic`'s drawable record (gray background, light noise)."""
    strip = IMAGE_SIZE / 3
    shapes = []
    for obj, cy, dx in zip(scene.objects, scene.cy, scene.cx_jitter, strict=True):
        r = SIZES[obj.size][0] if obj.kind != "triangle" else SIZES[obj.size][1]
        cx = int(strip * obj.column + strip / 2) + dx
        shapes.append(Shape(obj.kind, obj.color, cx, cy, r))
    return Scene(IMAGE_SIZE, IMAGE_SIZE, "gray", scene.noise_seed, shapes)


# ------------------------------------------------------------------ answers (templates)
def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _count(n: int) -> str:
    return f"{NUMBERS[n]} shape" + ("" if n == 1 else "s")


def describe(scene: ToyScene, rng: random.Random) -> str:
    """A long-form description naming every object with size, colour, shape and position."""
    objs, n = scene.objects, len(scene.objects)
    style = rng.randrange(3)
    if style == 0:
        verb = "is" if n == 1 else "are"
        return f"There {verb} {_count(n)} in the image: {_join([o.phrase() for o in objs])}."
    if style == 1:
        sentences = " ".join(f"There is {o.phrase()}." for o in objs)
        return f"The image shows {_count(n)}. {sentences}"
    return f"I can see {_join([o.phrase() for o in objs])}."


def answer_count(scene: ToyScene, rng: random.Random) -> tuple[str, str]:
    objs, n = scene.objects, len(scene.objects)
    q = rng.choice(("How many shapes are there?", "How many shapes can you see in the image?"))
    verb = "is" if n == 1 else "are"
    return q, f"There {verb} {_count(n)}: {_join([o.phrase(False) for o in objs])}."


def answer_column(scene: ToyScene, rng: random.Random) -> tuple[str, str]:
    col = rng.randrange(3)
    side = ("left side", "middle", "right side")[col]
    q = f"What is in the {side} of the image?"
    here = [o for o in scene.objects if o.column == col]
    if not here:
        return q, f"There is no shape {COLUMNS[col]}."
    return q, f"{COLUMNS[col].capitalize()} there is {here[0].phrase(False)}."


def probe_question(color: str, kind: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"Is there {article} {color} {kind} in the image?"


def answer_probe(scene: ToyScene, color: str, kind: str) -> str:
    for obj in scene.objects:
        if obj.color == color and obj.kind == kind:
            return f"Yes, there is {obj.phrase()}."
    return f"No, there is no {color} {kind} in the image."


def sft_turns(scene: ToyScene, rng: random.Random) -> list[tuple[str, str]]:
    """1-3 turns: a description first (mostly), then count / column / yes-no questions."""
    turns = [(rng.choice(DESCRIBE_PROMPTS), describe(scene, rng))]
    extra = [answer_count(scene, rng), answer_column(scene, rng)]
    present = rng.choice(scene.objects)
    absent = rng.choice([k for k in KINDS if f"{k[0]} {k[1]}" not in scene.names()])
    for color, kind in (((present.color, present.kind)), absent):
        extra.append((probe_question(color, kind), answer_probe(scene, color, kind)))
    rng.shuffle(extra)
    turns += extra[: rng.choice((0, 1, 2))]
    if rng.random() < 0.25:  # some conversations open with a short question instead
        turns = turns[1:] + turns[:1] if len(turns) > 1 else turns
    return turns


# ------------------------------------------------------------------ splits on disk
@dataclass(frozen=True)
class ToyImage:
    id: str
    image: str  # relative to the world's image folder
    scene: ToyScene


def build_split(split: str, num_images: int, seed_offset: int = 0) -> list[ToyImage]:
    """The images of one split; a split's stream depends only on its own seed."""
    rng = random.Random(SPLIT_SEEDS[split] + 1000 * seed_offset)
    out = []
    for i in range(num_images):
        scene = sample_scene(rng, PRIOR_STRENGTH[split], ANCHOR_RATE[split])
        ident = f"{split}_{i:05d}"
        out.append(ToyImage(ident, f"{split}/{ident}.png", scene))
    return out


def kind_statistics(images: list[ToyImage]) -> tuple[Counter, Counter]:
    """Frequency of each kind and of each (present kind, other kind) co-occurrence."""
    freq: Counter = Counter()
    pairs: Counter = Counter()
    for item in images:
        names = sorted(item.scene.names())
        freq.update(names)
        pairs.update((a, b) for a in names for b in names if a != b)
    return freq, pairs


def pope_probes(
    images: list[ToyImage], freq: Counter, pairs: Counter, seed: int
) -> dict[str, list[dict]]:
    """POPE's three negative samplings, one positive and one negative question per image:
    ``random`` (any absent kind), ``popular`` (the absent kind most frequent in the SFT split),
    ``adversarial`` (the absent kind that co-occurs most with the image's kinds in the SFT split:
    the prior partner where there is one)."""
    rng = random.Random(seed)
    names = [f"{c} {s}" for c, s in KINDS]
    out: dict[str, list[dict]] = {"random": [], "popular": [], "adversarial": []}
    for item in images:
        present = item.scene.names()
        absent = [n for n in names if n not in present]
        positive = rng.choice(sorted(present))
        negatives = {
            "random": rng.choice(absent),
            "popular": max(absent, key=lambda n: (freq[n], n)),
            "adversarial": max(absent, key=lambda n: (sum(pairs[(p, n)] for p in present), n)),
        }
        for split, negative in negatives.items():
            for label, name in (("yes", positive), ("no", negative)):
                color, kind = name.split()
                out[split].append({
                    "question_id": f"{item.id}/{label}", "image": item.image,
                    "text": probe_question(color, kind), "label": label,
                })
    return out


def _write_images(root: Path, images: list[ToyImage]) -> None:
    for item in images:
        path = root / item.image
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(render_toy_scene(item.scene)).save(path, format="PNG")


def write_toy_world(
    out_dir: str | Path,
    sizes: dict[str, int] | None = None,
    splits: tuple[str, ...] = ("train", "pool", "val", "test"),
) -> dict[str, Path]:
    """Write the splits under ``out_dir``; returns the paths configs read.

    ``images/<split>/*.png``; ``train.json`` (LLaVA-665k conversations); ``pool.jsonl``
    (``{image, text}`` prompts, no answers); ``<val|test>/descriptions.jsonl`` (``{question_id,
    image, text, scene}``) and ``<val|test>/pope/coco_pope_<split>.json``; ``scenes.json`` (every
    image's scene record) and ``world.json`` (sizes, priors, seeds).
    """
    out = Path(out_dir)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    # The SFT split's statistics define POPE's popular/adversarial negatives, as COCO's do.
    reference = build_split("train", DEFAULT_SIZES["train"])
    freq, pairs = kind_statistics(reference)
    scenes: dict[str, dict] = {}
    paths: dict[str, Path] = {"root": out, "images": out / "images"}
    for split in splits:
        images = build_split(split, sizes[split])
        rng = random.Random(SPLIT_SEEDS[split] + 7)
        _write_images(out / "images", images)
        scenes.update({item.image: item.scene.to_record() for item in images})
        if split == "train":
            rows = [
                {"id": item.id, "image": item.image,
                 "conversations": conversation(sft_turns(item.scene, rng))}
                for item in images
            ]
            paths["train"] = out / "train.json"
            paths["train"].write_text(json.dumps(rows) + "\n", encoding="utf-8")
        elif split == "pool":
            rows = [{"image": item.image, "text": _pool_question(item.scene, rng)}
                    for item in images]
            paths["pool"] = out / "pool.jsonl"
            write_lines(paths["pool"], map(json.dumps, rows))
        else:
            rows = [
                {"question_id": item.id, "image": item.image,
                 "text": rng.choice(DESCRIBE_PROMPTS), "scene": item.scene.to_record()}
                for item in images
            ]
            paths[split] = out / split
            write_lines(out / split / "descriptions.jsonl", map(json.dumps, rows))
            probes = pope_probes(images, freq, pairs, SPLIT_SEEDS[split] + 11)
            for name, probe_rows in probes.items():
                probe_file = out / split / "pope" / f"coco_pope_{name}.json"
                write_lines(probe_file, map(json.dumps, probe_rows))
    (out / "scenes.json").write_text(json.dumps(scenes) + "\n", encoding="utf-8")
    world = {"sizes": {s: sizes[s] for s in splits}, "seeds": SPLIT_SEEDS,
             "prior_strength": PRIOR_STRENGTH, "anchor_rate": ANCHOR_RATE,
             "prior_pairs": {" ".join(a): " ".join(b) for a, b in PRIOR_PAIRS.items()}}
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return paths


def _pool_question(scene: ToyScene, rng: random.Random) -> str:
    """SeVa's prompts: mostly long-form descriptions, some sentence-answer questions."""
    if rng.random() < 0.75:
        return rng.choice(DESCRIBE_PROMPTS)
    return rng.choice((answer_count, answer_column))(scene, rng)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the toy world's splits.")
    parser.add_argument("out_dir", type=Path)
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"{split} images")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SIZES),
                        choices=list(DEFAULT_SIZES), help="splits to write")
    args = parser.parse_args(argv)
    sizes = {s: getattr(args, s) for s in DEFAULT_SIZES}
    for name, path in write_toy_world(args.out_dir, sizes, tuple(args.splits)).items():
        print(f"{name:>7}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
