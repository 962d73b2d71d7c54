"""The tested versions: ``requirements-lock.txt``, and the one command that moves them.

    python tools/lock.py check [--venv .venv]   # the venv holds exactly the lock (make test)
    python tools/lock.py upgrade                # make lock: re-resolve, test, rewrite if green
    python tools/lock.py lowest                 # make test-lowest: setup.cfg's floors, tested

``setup.cfg`` declares ranges (what a plain ``pip install .`` may take); the lock is one exact set
inside them, written from a resolved virtual environment by ``pip freeze`` and used as a pip
constraints file by ``make demo``, ``make test`` and CI. A pip constraints file, not ``uv pip
compile``: the CPU torch build lives as a local wheel that only pip finds (uv would resolve the
multi-GB CUDA build from the index), and a freeze of a venv the suite has just passed in is the
tested set by construction, transitive packages, pip, setuptools and wheel included.

``upgrade`` builds a scratch venv, installs the project with its test extra at the newest versions
``setup.cfg`` allows (torch stays at the lock's version: it moves only by editing the lock), runs
``pytest -m "not slow"`` there and rewrites the lock only if the suite passes. It prints what moved
either way. ``lowest`` installs every direct dependency at its lower bound and runs the suite, so
the ranges' floors are tested too. Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
SETUP_CFG = ROOT / "setup.cfg"
HEADER = """\
# The tested versions: every package `make demo` and `make test` install, at the versions the
# suite last passed with (Python {python}, CPU; torch's CPU build). Installed as pip constraints.
# Written by `make lock` (tools/lock.py) on {date}; do not edit by hand.
"""
PROJECT = "lightning-aug-dpo"

__all__ = ["canonical", "diff", "freeze", "lower_bounds", "parse_pins", "read_lock", "render"]


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a ``==`` pin without a local label matches either build."""
    return version.split("+", 1)[0]


def parse_pins(text: str, source: str = "<text>") -> dict[str, str]:
    """``{canonical name: version}`` of ``name==version`` lines; comments, blanks and pip's
    ``-e`` lines are skipped. Anything else is an error naming the line."""
    pins = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e "):
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{source}:{number}: expected name==version, got {raw!r}")
        pins[canonical(name.strip())] = version.strip()
    return pins


def read_lock(path: Path | None = None) -> dict[str, str]:
    """The lock (default: ``requirements-lock.txt``) as ``{canonical name: version}``."""
    path = path or LOCK
    return parse_pins(path.read_text(), str(path))


def render(pins: dict[str, str], python: str, date: str) -> str:
    """The lock file's text: header, then sorted ``name==version`` lines (public versions)."""
    lines = [f"{name}=={public(version)}" for name, version in sorted(pins.items())]
    return HEADER.format(python=python, date=date) + "\n".join(lines) + "\n"


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package that moved, appeared or went, sorted by name."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None:
            lines.append(f"  + {name} {after}")
        elif after is None:
            lines.append(f"  - {name} {before}")
        elif public(before) != public(after):
            lines.append(f"  ~ {name} {before} -> {after}")
    return lines


def lower_bounds(path: Path = SETUP_CFG, extras: tuple[str, ...] = ("test",)) -> list[str]:
    """``name==floor`` for every direct dependency (``install_requires`` and ``extras``) of
    ``setup.cfg``; a dependency without a ``>=`` floor is an error naming it."""
    cfg = configparser.ConfigParser()
    cfg.read(path)
    specs = cfg["options"]["install_requires"].split("\n")
    for extra in extras:
        specs += cfg["options.extras_require"][extra].split("\n")
    pins = []
    for spec in filter(None, (s.strip() for s in specs)):
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", spec)
        name, extra, rest = match.groups()
        floor = re.search(r">=\s*([^,\s]+)", rest)
        if floor is None:
            raise ValueError(f"{path}: {spec!r} has no lower bound (add >=VERSION)")
        pins.append(f"{name}{extra or ''}=={floor.group(1)}")
    return pins


def freeze(python: Path) -> dict[str, str]:
    """``pip freeze --all`` of the venv of ``python``, without the project itself."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    pins = parse_pins(out, f"pip freeze of {python}")
    pins.pop(canonical(PROJECT), None)
    return pins


def check(venv: Path, allow_extra: bool = False) -> int:
    """0 when the venv holds exactly the lock (public versions); else each difference."""
    lock, have = read_lock(), freeze(venv / "bin" / "python")
    if allow_extra:  # CUDA machines: torch's own nvidia-* and triton wheels come beside it
        have = {name: version for name, version in have.items() if name in lock}
    problems = diff(lock, have)
    if problems:
        print(f"{venv} differs from {LOCK.name} (- only in the lock, + only in the venv):")
        print("\n".join(problems))
        print("Fix: rm -rf .venv and rerun make; or, to move the lock on purpose, make lock.")
        return 1
    print(f"{venv}: {len(have)} packages, exactly {LOCK.name}")
    return 0


def _run(command: list[str], **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def scratch_venv(where: Path, requirements: list[str], constraints: Path | None) -> Path:
    """A new venv under ``where`` with the project (editable, test extra) and ``requirements``;
    its python."""
    _run([sys.executable, "-m", "venv", str(where)])
    python = where / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    lock = read_lock()
    _run([*pip, "--upgrade", "pip", "setuptools", "wheel"])
    _run([*pip, f"torch=={public(lock['torch'])}"])  # first, alone: never a CUDA build on CPU
    extra = ["-c", str(constraints)] if constraints else []
    _run([*pip, *extra, "-e", f"{ROOT}[test]", f"torch=={public(lock['torch'])}", *requirements])
    return python


def run_suite(python: Path, pytest_args: list[str]) -> bool:
    command = [str(python), "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider"]
    print("+", " ".join(command + pytest_args), flush=True)
    return subprocess.run(command + pytest_args, cwd=ROOT).returncode == 0


def upgrade(pytest_args: list[str], keep: Path | None) -> int:
    old = read_lock()
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        where = keep or Path(tmp) / "venv"
        python = scratch_venv(where, [], None)
        new = freeze(python)
        moved = diff(old, new)
        print("What moved:" if moved else "Nothing moved: the lock already holds the newest.")
        print("\n".join(moved))
        if not moved:
            return 0
        version = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        before = LOCK.read_text()
        # the candidate is in place while the suite runs: its own tests read the lock file
        LOCK.write_text(render(new, version, datetime.date.today().isoformat()))
        passed = False
        try:
            passed = run_suite(python, pytest_args)
        finally:
            if not passed:  # failed or interrupted: the old lock back
                LOCK.write_text(before)
        if not passed:
            print(f"The suite failed on these versions: {LOCK.name} is unchanged.")
            return 1
        print(f"The suite passed: {LOCK.name} rewritten ({len(new)} packages).")
        return 0


def lowest(pytest_args: list[str], keep: Path | None) -> int:
    floors = lower_bounds()
    print("Lower bounds:", ", ".join(floors))
    with tempfile.TemporaryDirectory(prefix="lowest-") as tmp:
        python = scratch_venv(keep or Path(tmp) / "venv", floors, None)
        passed = run_suite(python, pytest_args)
        print(f"The suite {'passed' if passed else 'FAILED'} at setup.cfg's lower bounds.")
        return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    checking = sub.add_parser("check", help="the venv holds exactly the lock")
    checking.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the venv to compare")
    checking.add_argument(
        "--allow-extra",
        action="store_true",
        help="ignore packages the lock does not name (CUDA torch's own wheels)",
    )
    for name, text in (("upgrade", "re-resolve, test, rewrite"), ("lowest", "test the floors")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--keep", type=Path, help="build the scratch venv here and keep it")
        command.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.venv, args.allow_extra)
    return (upgrade if args.command == "upgrade" else lowest)(args.pytest_args, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
