"""Atomic outputs: a file or folder appears under its final name complete, or not at all.

Every output that a later step loads (adapters, checkpoints, pairs files, benchmark answers,
grades and scores, the run summary, the gallery) is written under a hidden temporary name beside
its destination, flushed to disk and renamed into place. The temporary name is in the same folder
so that the rename is a rename on the same filesystem, never a copy into the final name (which a
temporary file under ``/tmp`` on another disk would be, and a kill could then cut it short).

A process killed mid-write therefore leaves the previous version (or nothing) under the final
name, plus a hidden ``.NAME.tmp-<pid>-<random hex>`` leftover that the next write of that name
removes.

Folders cannot be renamed over a non-empty folder, so replacing one takes two renames: the old
folder to ``.NAME.old-<pid>-<random hex>``, then the new one into place. A kill between the two
leaves no ``NAME`` for a moment; the next write (or :func:`remove_leftovers`) puts the old one back
first.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# This process's temporary names still being written: a leftover with this process's PID that
# is not one of them was left by a killed process that had the same PID (a restarted container).
_IN_FLIGHT: set[str] = set()


def _sibling(path: Path, kind: str) -> Path:
    """``.NAME.KIND-PID-RANDOM`` beside ``path``: hidden, unique, and never matching a glob such
    as ``*.ckpt`` that looks for finished outputs. Registered in ``_IN_FLIGHT`` until the
    caller discards it."""
    sibling = path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
    _IN_FLIGHT.add(str(sibling))
    return sibling


def _writer_alive(leftover: Path, pid: int) -> bool:
    if pid == os.getpid():
        return str(leftover) in _IN_FLIGHT
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(path: str | Path) -> None:
    """Clean up after writers of ``path`` that were killed (their process is gone from this
    machine): delete their temporary files or folders, and put back an old folder whose
    replacement never arrived (a kill between the two renames of :func:`atomic_dir`)."""
    path = Path(path)
    pattern = glob.escape(str(path.parent / f".{path.name}.")) + "*-*-*"
    for leftover in sorted(Path(p) for p in glob.glob(pattern)):
        kind, _, rest = leftover.name[len(path.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _writer_alive(leftover, int(pid)):
            continue
        if kind == "old" and not (path.exists() or path.is_symlink()):
            os.rename(leftover, path)  # the replacement never arrived: the old one is current
        else:
            _remove(leftover)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; some filesystems cannot sync a folder: then skip."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; when the block ends without an error the
    file is synced to disk and renamed to ``path`` (replacing an older one in one step).

    On an error the temporary file is removed and ``path`` is left as it was. Parent folders
    are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        _fsync_file(tmp)  # the data must be on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _IN_FLIGHT.discard(str(tmp))
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """``data`` as UTF-8 JSON (plus a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Each of ``lines`` (strings without ``\\n``) as one line of ``path``, atomically."""
    write_text(path, "".join(f"{line}\n" for line in lines))


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``, moving an existing ``path`` (folder,
    file or link) aside first and deleting it once the new one is in place."""
    old = None
    if path.exists() or path.is_symlink():
        old = _sibling(path, "old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)  # put the previous one back
            _IN_FLIGHT.discard(str(old))
        raise
    _fsync_dir(path.parent)
    if old is not None:
        _remove(old)
        _IN_FLIGHT.discard(str(old))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an error
    its files are synced and the folder takes the name ``path``, replacing an older one.

    On an error the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_dir(Path(root))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _IN_FLIGHT.discard(str(tmp))
