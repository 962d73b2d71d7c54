"""Disk cache of judge replies, keyed by the full request.

One JSON-lines file, appended to after every reply and flushed, so that an interrupted grading
loses at most the request in flight and a rerun with the same answers, prompts, judge model and
settings sends nothing. The key is the sha256 of the canonical JSON of the request (endpoint,
model, messages, temperature, max_tokens, seed/run) and never includes credentials: API keys live
in headers, which are not part of it. A torn last line (a killed process) is dropped on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe append-only ``{key: value}`` store in ``path`` (JSON lines)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        """Read the complete lines. A torn last line (no final newline: the process was killed
        while appending) is cut off the file, so that the next append starts a fresh line
        instead of gluing a reply onto the fragment; its request is simply sent again."""
        data = self.path.read_bytes()
        complete, _, torn = data.rpartition(b"\n")
        if torn:
            os.truncate(self.path, len(data) - len(torn))
        for line in complete.split(b"\n"):
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # a damaged line (edited by hand?): its request is sent again
            if isinstance(row, dict) and "key" in row and isinstance(row.get("value"), dict):
                self._data[row["key"]] = row["value"]

    def __len__(self) -> int:
        return len(self._data)

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        key = request_key(request)
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, request: dict[str, Any], value: dict[str, Any]) -> None:
        key = request_key(request)
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n"
        with self._lock:
            self._data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
