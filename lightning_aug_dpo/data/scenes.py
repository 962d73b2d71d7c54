"""Drawable scenes of coloured shapes and words: the records the synthetic data writers
(:mod:`.synthetic`, :mod:`.toy_world`) render, so every answer can be derived from the scene that
was drawn. Pure functions of seeded ``random.Random`` streams: the same record gives the same
pixels everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 170),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
# Muted backgrounds, far from every shape colour, so a pixel inside a shape is unambiguous.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (180, 180, 180),
    "beige": (205, 195, 160),
    "light blue": (165, 195, 210),
    "pale green": (185, 210, 175),
}
SHAPES = ("circle", "square", "triangle")
TEXT_FILL = (20, 20, 20)
MIN_SIDE, MAX_SIDE = 48, 128


@dataclass(frozen=True)
class Shape:
    """One filled shape: ``r`` is the half-size, ``(cx, cy)`` is always inside the shape."""

    kind: str
    color: str
    cx: int
    cy: int
    r: int


@dataclass
class Scene:
    """Everything needed to re-render an image exactly (tests re-derive pixels from it)."""

    width: int
    height: int
    background: str
    noise_seed: int | None  # None: plain background; else seed of the light pixel noise
    shapes: list[Shape] = field(default_factory=list)
    texts: list[tuple[str, int, int]] = field(default_factory=list)  # (text, x, y)

    def count(self, kind: str) -> int:
        return sum(s.kind == kind for s in self.shapes)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # The bitmap font renders identically everywhere (no FreeType version dependence);
    # Pillow >= 10.1 returns a FreeType font from load_default(), so prefer the bitmap one.
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return right - left, bottom - top


def _random_size(rng: random.Random, min_w: int = MIN_SIDE) -> tuple[int, int]:
    """Non-square size so pad-to-square code paths are exercised."""
    w = rng.randint(min(max(min_w, MIN_SIDE), MAX_SIDE), MAX_SIDE)
    h = rng.randint(MIN_SIDE, MAX_SIDE)
    while h == w:
        h = rng.randint(MIN_SIDE, MAX_SIDE)
    return w, h


def _place_shapes(
    rng: random.Random, kinds: list[str], box: tuple[int, int, int, int]
) -> list[Shape]:
    """Put each shape in its own vertical strip of ``box`` (x0, y0, x1, y1).

    Strips make shapes never overlap and always strictly ordered left-to-right, so colour,
    count and left/right questions are unambiguous; colours are distinct per scene.
    """
    x0, y0, x1, y1 = box
    strip = (x1 - x0) // len(kinds)
    colors = rng.sample(sorted(COLORS), len(kinds))
    order = rng.sample(kinds, len(kinds))
    # Callers size images so strips are >= 12 px wide and boxes >= 24 px tall (r >= 4).
    max_r = min(strip // 2 - 2, (y1 - y0) // 2 - 2, 20)
    shapes = []
    for i, (kind, color) in enumerate(zip(order, colors, strict=True)):
        r = rng.randint(min(6, max_r), max_r)
        sx0 = x0 + i * strip
        cx = rng.randint(sx0 + r + 1, sx0 + strip - r - 1)
        cy = rng.randint(y0 + r + 1, y1 - r - 1)
        shapes.append(Shape(kind, color, cx, cy, r))
    return shapes


def _new_scene(rng: random.Random, size: tuple[int, int]) -> Scene:
    noise_seed = rng.randrange(2**31) if rng.random() < 0.5 else None
    return Scene(size[0], size[1], rng.choice(sorted(BACKGROUNDS)), noise_seed)


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image (pure function of the scene record)."""
    size = (scene.width, scene.height)
    img = Image.new("RGB", size, BACKGROUNDS[scene.background])
    if scene.noise_seed is not None:
        # Light noise (0..10 per pixel, same on all channels) from a private RNG.
        raw = random.Random(scene.noise_seed).randbytes(size[0] * size[1])
        noise = Image.frombytes("L", size, raw).point(lambda v: v * 10 // 255)
        img = ImageChops.add(img, Image.merge("RGB", (noise, noise, noise)))
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        fill, (cx, cy, r) = COLORS[s.color], (s.cx, s.cy, s.r)
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:  # apex up; the centre (cx, cy) lies inside at half-width r/2
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    for text, x, y in scene.texts:
        draw.text((x, y), text, fill=TEXT_FILL, font=_font())
    return img


def _scene_with_words(rng: random.Random, kinds: list[str], words: list[str]) -> Scene:
    """Shapes above, a single line of words in a band at the bottom (no overlap)."""
    line = " ".join(words)
    tw, th = _text_size(line) if words else (0, 0)
    scene = _new_scene(rng, _random_size(rng, min_w=tw + 8))
    band = th + 6 if words else 0
    if words:
        x = rng.randint(2, scene.width - tw - 2)
        scene.texts.append((line, x, scene.height - band + 2))
    scene.shapes = _place_shapes(rng, kinds, (0, 0, scene.width, scene.height - band))
    return scene


def _random_kinds(rng: random.Random, n: int, pool: tuple[str, ...] = SHAPES) -> list[str]:
    return [rng.choice(pool) for _ in range(n)]
