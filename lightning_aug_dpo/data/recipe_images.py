"""Check, before any GPU time, that every image a prompt list needs is present and decodes.

``python -m lightning_aug_dpo.data.seva_recipe --check --image-folder DIR --prompts FILE`` (or
``--llava-json FILE``: the images of the recipe it would sample) runs :func:`check_images` and
prints :func:`report_lines`: counts per subset, the first problems, and which public archive
holds each folder. Exit status 1 when any image is missing or unreadable, 0 when all are fine.

What "readable" means: the file exists, is not empty, PIL identifies it, its header declares no
more than ``max_pixels`` pixels, and its compressed data decodes to the end: a download cut
short opens and passes ``Image.verify()`` but fails in training, so headers are not enough.
JPEGs decode at 1/8 scale (``Image.draft``): every byte is still read and entropy-decoded, so a
truncated file fails, at less cost. Measured on the 2-core development machine (one thread,
other jobs running), 500 1024x768 JPEGs of ~250 KB each: headers only 0.1 ms, 1/8-scale decode
2.3 ms, full decode 3.7 ms per image, so the recipe's ~12,000 images take about half a minute.
PIL releases the GIL while decoding, so a thread pool uses every core (``--workers``).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Where the recipe's image folders come from (LLaVA-1.5's data instructions name the same
# archives); keyed by the subset names of ``seva_recipe``.
SOURCES = {
    "ocrvqa": (
        "ocr_vqa/images/",
        "OCR-VQA's book covers: run the OCR-VQA download script linked from LLaVA-1.5's data "
        "instructions (github.com/haotian-liu/LLaVA, 'Visual Instruction Tuning' data; the "
        "OCR-VQA dataset: ocr-vqa.github.io), saving every cover as .jpg; it fetches each cover "
        "from its web link, and links that no longer resolve leave gaps: fetch those again or "
        "drop their prompts",
    ),
    "textcaps": (
        "textvqa/train_images/",
        "TextVQA's training images (TextCaps uses them): train_val_images.zip from textvqa.org "
        "(dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip), unzipped so that its "
        "train_images/ folder sits at textvqa/train_images/",
    ),
}
OTHER_FIX = "put the files at the paths shown, or fix the image paths in the prompt file"
# SeVa's own lists name bare files: TextVQA ids are 16 hex digits, OCR-VQA covers are ISBN/ASINs.
_BARE = ((re.compile(r"[0-9a-f]{16}\.\w+"), "textcaps"), (re.compile(r"[0-9A-Z]+\.\w+"), "ocrvqa"))
PROGRESS_EVERY = 1000  # images between progress lines (only for lists at least this long)


def subset_of(image: str) -> str:
    """``ocrvqa`` / ``textcaps`` for the recipe's folders (or SeVa's bare file names), else
    ``other``."""
    for subset, (prefix, _) in SOURCES.items():
        if image.startswith(prefix):
            return subset
    if "/" not in image:
        for pattern, subset in _BARE:
            if pattern.fullmatch(image):
                return subset
    return "other"


def image_problem(path: Path, max_pixels: int | None = None, decode: bool = True) -> str | None:
    """Why ``path`` cannot be trained on (``missing``, ``empty file``, ``not an image``,
    ``truncated``, ...), or ``None`` when it is fine; ``decode=False`` reads headers only."""
    try:
        if not path.is_file():
            return "is a directory" if path.is_dir() else "missing"
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too large (over PIL's pixel limit)"
    except OSError as err:  # e.g. a file cut short inside its header
        kind = "truncated" if "truncated" in str(err).lower() else "unreadable"
        return f"{kind} ({type(err).__name__}: {err})"
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            return f"too large ({width}x{height} pixels > {max_pixels})"
        if not decode:
            return None
        try:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # smallest DCT scale; the whole stream is still read
            image.load()
        # Decoders raise a zoo of exceptions on corrupt data; any of them means a bad file.
        except Exception as err:
            if "truncated" in str(err).lower():
                return "truncated"
            return f"corrupt ({type(err).__name__}: {err})"
    return None


@dataclass(frozen=True)
class ImageProblem:
    """One image a prompt list needs that training could not use."""

    image: str  # as written in the prompt list
    path: Path
    reason: str
    prompts: int  # prompts that use it


@dataclass
class ImageCheck:
    """Result of :func:`check_images`: images per subset, problems in list order, seconds."""

    folder: Path
    prompts: int
    images: Counter = field(default_factory=Counter)
    problems: list[ImageProblem] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self, subset: str) -> tuple[int, int]:
        """``(missing, unreadable)`` images of one subset."""
        bad = [p for p in self.problems if subset_of(p.image) == subset]
        missing = sum(p.reason == "missing" for p in bad)
        return missing, len(bad) - missing


def check_images(
    images: Iterable[str],
    folder: str | Path,
    workers: int | None = None,
    max_pixels: int | None = None,
    decode: bool = True,
    progress: Callable[[int, int, int], None] | None = None,
) -> ImageCheck:
    """Check each distinct image of ``images`` (paths relative to ``folder``, one per prompt)
    with :func:`image_problem` on ``workers`` threads (default: the CPU count, at most 16);
    ``progress(done, total, problems)`` is called every ``PROGRESS_EVERY`` images."""
    start = time.perf_counter()
    folder = Path(folder)
    uses = Counter(images)
    check = ImageCheck(folder, prompts=sum(uses.values()))
    check.images.update(subset_of(image) for image in uses)
    ordered = list(uses)
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(lambda i: image_problem(folder / i, max_pixels, decode), ordered)
        for done, (image, reason) in enumerate(zip(ordered, reasons, strict=True), start=1):
            if reason is not None:
                check.problems.append(ImageProblem(image, folder / image, reason, uses[image]))
            if progress and done % PROGRESS_EVERY == 0:
                progress(done, len(ordered), len(check.problems))
    check.seconds = time.perf_counter() - start
    return check


def print_progress(done: int, total: int, problems: int) -> None:
    """Progress on stderr, so that stdout stays the report."""
    print(f"checked {done:,}/{total:,} images ({problems:,} problems so far)", file=sys.stderr)


def report_lines(check: ImageCheck, show: int = 20) -> list[str]:
    """The report: totals, per-subset counts, the first ``show`` problems, the fixes."""
    total = sum(check.images.values())
    lines = [
        f"checked {total:,} images for {check.prompts:,} prompts under {check.folder} in "
        f"{check.seconds:.1f} s: {len(check.problems):,} missing or unreadable"
    ]
    for subset in [*SOURCES, "other"]:
        if check.images[subset]:
            missing, unreadable = check.counts(subset)
            where = SOURCES[subset][0] if subset in SOURCES else "other paths"
            lines.append(
                f"  {subset} ({where}): {check.images[subset]:,} images, {missing:,} missing, "
                f"{unreadable:,} unreadable"
            )
    if not check.problems:
        return [*lines, "all images present and readable"]
    lines.append(f"first {min(show, len(check.problems))} of {len(check.problems):,}:")
    for problem in check.problems[:show]:
        used = f" ({problem.prompts} prompts)" if problem.prompts > 1 else ""
        lines.append(f"  {problem.path}: {problem.reason}{used}")
    lines.append("fix:")
    for subset in [*SOURCES, "other"]:
        missing, unreadable = check.counts(subset)
        if not missing + unreadable:
            continue
        if subset in SOURCES:
            prefix, fix = SOURCES[subset]
            folder = check.folder / prefix
            nested = any(p.image.startswith(prefix) for p in check.problems)
            absent = f" ({folder} does not exist)" if nested and not folder.is_dir() else ""
            lines.append(f"  {subset}{absent}: {fix}")
        else:
            lines.append(f"  {subset}: {OTHER_FIX}")
    lines.append("  or train without them: data.on_bad_image: skip drops and counts each bad image")
    fixes = lines.index("fix:") + 1
    wrap = textwrap.TextWrapper(100, subsequent_indent="    ", break_on_hyphens=False)
    wrapped = [wrap.fill(line) for line in lines[fixes:]]
    return lines[:fixes] + "\n".join(wrapped).splitlines()
