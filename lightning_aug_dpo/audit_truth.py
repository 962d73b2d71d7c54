"""Exact quality of each side of a pair, where scene records exist (the toy world).

The toy world writes ``scenes.json`` (``{image: scene record}``, images relative to its
``images/`` folder) beside its image folder; :func:`~lightning_aug_dpo.eval.toy_world.
score_answer` scores an answer against a scene by parsing (objects named, hallucinated, covered).
:func:`truth_section` scores both answers of every differing pair that has a scene, so that a
shortcut found by the audit (say, "the rejected answer is longer") can be checked against the
truth ("the rejected answer hallucinates more"). Per pair, with ``M`` the distinct kinds an
answer names and ``H`` those absent from the scene (hallucinated)::

    CHAIR_i(side) = sum |H| / sum |M|            coverage(side) = sum |M - H| / sum |objects|
    rejected_names_more = share of pairs with |M_rejected| > |M_chosen|   (fewer: <)
    chosen_fewer_hallucinations = share with |H_chosen| < |H_rejected|    (rejected_...: >)
    rejected_minus_chosen_words = mean of words(rejected) - words(chosen)

over the differing pairs with a scene; ``identical_rate/description`` and ``/question`` are over
all pairs, split by whether the prompt is one of the toy world's description prompts. These are
the statistics ``benchmarks/toy_world.py --stage audit`` reports (:data:`TOY_AUDIT_KEYS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_aug_dpo.audit_stats import PairText
from lightning_aug_dpo.errors import UserInputError

SCENES_FILE = "scenes.json"
TOY_AUDIT_KEYS = (
    "pairs", "identical_rate/description", "identical_rate/question", "chosen_chair_i",
    "rejected_chair_i", "rejected_names_more", "rejected_names_fewer",
    "chosen_fewer_hallucinations", "rejected_fewer_hallucinations", "rejected_minus_chosen_words",
)  # fmt: skip
EXAMPLES = 3  # differing pairs quoted with their scene's objects


def image_key(image: object) -> str:
    # "./pool/a.png", "pool\\a.png" and "pool/a.png" name the same file of the image folder
    return str(PurePosixPath(str(image).replace("\\", "/")))


def find_scenes(*folders: str | Path | None) -> Path | None:
    """The first ``scenes.json`` in one of ``folders`` or beside it (in its parent): the image
    folder of the data, or the folder of a pairs file."""
    for folder in folders:
        if not folder:
            continue
        for candidate in (Path(folder) / SCENES_FILE, Path(folder).parent / SCENES_FILE):
            if candidate.is_file():
                return candidate
    return None


def load_scenes(path: str | Path) -> dict[str, Any]:
    """``{image: ToyScene}`` from a scene file; a file that is not one is a user error."""
    from lightning_aug_dpo.data.toy_world import ToyScene

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(
            f"{path}: scene file not found. Fix: the toy world's scenes.json (beside its images/ "
            "folder), or leave --scenes out"
        ) from None
    except (OSError, ValueError) as err:
        raise UserInputError(f"{path}: not a JSON scene file ({err})") from None
    if not isinstance(data, Mapping):
        raise UserInputError(f"{path}: a scene file is a JSON object {{image: scene record}}")
    scenes = {}
    for image, record in data.items():
        try:
            scenes[image_key(image)] = ToyScene.from_record(record)
        except (KeyError, TypeError, ValueError) as err:
            raise UserInputError(
                f"{path}: the record of {image!r} is not a toy-world scene ({err!r}). Fix: a "
                "scenes.json written by the toy world (python -m lightning_aug_dpo.data.toy_world)"
            ) from None
    return scenes


def scene_of(image: str, scenes: Mapping[str, Any]) -> Any | None:
    """The scene of a pair's image: its path as written, else its longest tail that is a key
    (an absolute ``.../images/pool/a.png`` finds ``pool/a.png``)."""
    key = image_key(image)
    if key in scenes:
        return scenes[key]
    parts = PurePosixPath(key).parts
    for start in range(1, len(parts)):
        tail = str(PurePosixPath(*parts[start:]))
        if tail in scenes:
            return scenes[tail]
    return None


def truth_section(
    pairs: Sequence[PairText], scenes: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[float]]:
    """The exact-quality statistics (module docstring) and, per differing pair with a scene,
    ``objects named by rejected - by chosen`` (the "objects named" feature); ``(None, [])``
    when no pair has a scene."""
    from lightning_aug_dpo.data.toy_world import DESCRIBE_PROMPTS
    from lightning_aug_dpo.eval.toy_world import score_answer

    kinds: dict[str, list[bool]] = {"description": [], "question": []}
    for pair in pairs:
        kind = "description" if pair.prompt in DESCRIBE_PROMPTS else "question"
        kinds[kind].append(pair.identical)
    sums = dict.fromkeys(("c_hall", "r_hall", "c_named", "r_named", "c_cov", "r_cov", "objects",
                          "more", "fewer", "c_better", "r_better", "words"), 0)  # fmt: skip
    named_diffs: list[float] = []
    examples: list[dict[str, Any]] = []
    missing = 0
    for pair in pairs:
        if pair.identical:
            continue
        scene = scene_of(pair.image, scenes)
        if scene is None:
            missing += 1
            continue
        c, r = score_answer(pair.chosen, scene), score_answer(pair.rejected, scene)
        sums["c_hall"] += len(c["hallucinated"])
        sums["r_hall"] += len(r["hallucinated"])
        sums["c_named"] += len(c["mentioned"])
        sums["r_named"] += len(r["mentioned"])
        sums["c_cov"] += c["covered"]
        sums["r_cov"] += r["covered"]
        sums["objects"] += c["objects"]
        sums["more"] += len(r["mentioned"]) > len(c["mentioned"])
        sums["fewer"] += len(r["mentioned"]) < len(c["mentioned"])
        sums["c_better"] += len(c["hallucinated"]) < len(r["hallucinated"])
        sums["r_better"] += len(c["hallucinated"]) > len(r["hallucinated"])
        sums["words"] += r["words"] - c["words"]
        named_diffs.append(float(len(r["mentioned"]) - len(c["mentioned"])))
        if len(examples) < EXAMPLES:
            examples.append({"image": pair.image, "objects": [o.name for o in scene.objects],
                             "prompt": pair.prompt, "chosen": pair.chosen,
                             "rejected": pair.rejected})  # fmt: skip
    scored = len(named_diffs)
    if not scored:
        return None, []
    n = max(scored, 1)
    stats: dict[str, Any] = {"pairs": len(pairs)}
    for kind, same in kinds.items():
        stats[f"identical_rate/{kind}"] = sum(same) / len(same) if same else 0.0
    stats.update({
        "chosen_chair_i": sums["c_hall"] / max(sums["c_named"], 1),
        "rejected_chair_i": sums["r_hall"] / max(sums["r_named"], 1),
        "rejected_names_more": sums["more"] / n, "rejected_names_fewer": sums["fewer"] / n,
        "chosen_fewer_hallucinations": sums["c_better"] / n,
        "rejected_fewer_hallucinations": sums["r_better"] / n,
        "rejected_minus_chosen_words": sums["words"] / n,
        "chosen_coverage": sums["c_cov"] / max(sums["objects"], 1),
        "rejected_coverage": sums["r_cov"] / max(sums["objects"], 1),
        "chosen_objects_named": sums["c_named"] / n, "rejected_objects_named": sums["r_named"] / n,
        "pairs_scored": scored, "pairs_without_scene": missing,
    })  # fmt: skip
    return {"stats": stats, "examples": examples}, named_diffs


def truth_line(truth: Mapping[str, Any]) -> str:
    """One sentence on the exact quality of the two sides."""
    st = truth["stats"]
    return (
        f"Exact quality ({st['pairs_scored']:,} differing pairs scored against their scenes): "
        f"the chosen answer hallucinates fewer objects in {st['chosen_fewer_hallucinations']:.0%}"
        f" of them, more in {st['rejected_fewer_hallucinations']:.0%}; CHAIR_i chosen "
        f"{st['chosen_chair_i']:.0%}, rejected {st['rejected_chair_i']:.0%}; the rejected answer "
        f"names more objects in {st['rejected_names_more']:.0%}, fewer in "
        f"{st['rejected_names_fewer']:.0%}."
    )
