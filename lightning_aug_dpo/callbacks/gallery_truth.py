"""The ground truth of a gallery image: what a reader checks the chosen and rejected answers
against.

A truth file is JSON ``{image: truth}``, keyed by the image path as the prompt source names it
(relative to the data's image folder). A truth is a text, or a toy-world scene record
(``{"objects": [...], ...}``, :class:`~lightning_aug_dpo.data.toy_world.ToyScene`), shown as its
objects left to right: ``small red circle (left), large blue square (right)``. The toy world
writer leaves such a file, ``scenes.json``, beside its image folder; for other data a user can
write one, or the DataModule can put a ``truth`` text in the pair rows. Images without a truth
are shown without one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_aug_dpo.audit_truth import find_scenes, image_key
from lightning_aug_dpo.data.toy_world import ToyScene
from lightning_aug_dpo.eval.toy_world import truth_text

AUTO = "auto"  # find the toy world's scenes.json beside the data's image folder


def as_truth_text(value: Any) -> str | None:
    """A truth file's value as the text shown: a text as it is, a toy-world scene record as
    its objects; ``None`` for anything else (shown without a truth, not an error)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Mapping) and "objects" in value:
        try:
            return truth_text(ToyScene.from_record(dict(value)))
        except (KeyError, TypeError, ValueError):
            return None
    return None


def load_truth(path: str | Path) -> dict[str, str]:
    """``{image: truth text}`` from a truth file; a clear error for a file that is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{path}: ground-truth file not found; set PairGalleryCallback's truth_from to a JSON "
            "file {image: truth}, to 'auto' or to null"
        ) from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a JSON ground-truth file ({err})") from err
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{path}: a ground-truth file is a JSON object {{image: truth}}, not a "
            f"{type(data).__name__}"
        )
    texts = {image_key(image): as_truth_text(value) for image, value in data.items()}
    return {image: text for image, text in texts.items() if text is not None}


def truth_file(truth_from: str | None, trainer: Any) -> Path | None:
    """The truth file to read: ``truth_from`` itself; for ``"auto"`` the ``scenes.json`` in or
    beside the image folder of the trainer's datamodule (``hparams.image_folder``), if any."""
    if truth_from is None:
        return None
    if truth_from != AUTO:
        return Path(truth_from)
    hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None)
    return find_scenes(getattr(hparams, "image_folder", None))


def truth_of(row: Mapping[str, Any], truth: Mapping[str, str]) -> dict[str, Any]:
    """A copy of a pair row with its ``truth`` text: the row's own, else the truth file's for
    its image; rows with neither are returned without one."""
    out = dict(row)
    if not out.get("truth") and row.get("image") is not None:
        text = truth.get(image_key(row["image"]))
        if text is not None:
            out["truth"] = text
    return out
