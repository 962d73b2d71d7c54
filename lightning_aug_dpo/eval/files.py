"""Small file helpers shared by the benchmark loaders: strict JSON / JSONL with clear errors.

Every error names the file, the line or row, and what the row should look like, because these
files come from downloads a user can get wrong (a truncated file, the wrong folder, a mix of
benchmark versions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_aug_dpo import atomic
from lightning_aug_dpo.atomic import write_json as write_json  # re-exported for eval modules


def id_sort_key(qid: str) -> tuple[str, int]:
    """Sort ``v1_2`` before ``v1_10`` (numeric suffix order), as the official files do."""
    match = re.fullmatch(r"(.*?)(\d+)", str(qid))
    return (match.group(1), int(match.group(2))) if match else (str(qid), -1)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=id_sort_key)


def name_ids(ids: Sequence[Any]) -> str:
    """``'a', 'b', ... (7 in all)``: at most five ids, then the count."""
    shown = ", ".join(repr(q) for q in ids[:5])
    return f"{shown}{', ...' if len(ids) > 5 else ''} ({len(ids)} in all)"


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming it, what it is and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; {fix}")
    return path


def read_json_dict(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object file; ``ValueError`` naming the file and position for bad JSON."""
    path = require_file(path, what, "check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg}); "
            f"expected {what}"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is {type(data).__name__}; expected {what}")
    return data


def read_jsonl(path: str | Path, what: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped), each an object with ``required`` keys.

    Raises ``ValueError`` naming the file and the 1-based line for bad JSON, a non-object row
    or a missing key.
    """
    path = require_file(path, what, "check the data folder")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}: line {number} is not valid JSON ({err.msg}); expected {what}, "
                    "one JSON object per line"
                ) from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is {type(row).__name__}, not an object")
            for key in required:
                if key not in row:
                    raise ValueError(
                        f"{path}: line {number} lacks {key!r}; each row of {what} needs "
                        f"{', '.join(required)}"
                    )
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (UTF-8), written to a temporary file and renamed."""
    atomic.write_lines(path, (json.dumps(dict(row), ensure_ascii=False) for row in rows))


def check_images(
    image_dir: Path, names: Mapping[Any, str], source: Path, fix: str = ""
) -> dict[Any, Path]:
    """``{id: image path}``; ``FileNotFoundError`` naming the first missing images and ids."""
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{image_dir}: image folder not found (the images of {source}); "
            f"{fix or 'unpack the benchmark images there'}"
        )
    paths = {qid: image_dir / name for qid, name in names.items()}
    missing = [qid for qid, p in paths.items() if not p.is_file()]
    if missing:
        first = missing[0]
        raise FileNotFoundError(
            f"{paths[first]}: image of {source} row {first!r} not found; "
            f"{len(missing)} rows lack their image (ids {name_ids(missing)}); "
            f"{fix or 'check that the images folder is complete'}"
        )
    return paths
