"""Download the wheels a bare GPU machine lacks into ``.whl/`` (``make gpu-wheels``).

    python3 benchmarks/gpu_wheels.py                 # benchmarks/gpu_wheels.txt -> .whl/
    python3 benchmarks/gpu_wheels.py --dest DIR --bnb-keep cpu cuda130 cuda132

Run it where pip reaches the package index. It downloads the packages named in
``benchmarks/gpu_wheels.txt`` at the versions of ``requirements-lock.txt`` (the tested set; a name
the lock lacks is an error) for CPython 3.12 on manylinux x86-64 (``--no-deps``: that list
already names the dependencies the machine lacks), removes other versions of those packages
from the folder (two versions of one package stop ``pip install``), and slims bitsandbytes'
wheel to the native libraries named by ``--bnb-keep`` (its CPU one and CUDA 13.x's by default,
for a torch 2.11+cu130 machine; the full wheel is 43 MB, most of it for CUDA versions that
machine does not use). Nothing else is changed: the slimmed wheel keeps its name, and its
RECORD lists exactly the files left.

Then, on the GPU machine, ``python3 benchmarks/gpu_check.py`` (``make gpu-check``) installs the
folder with ``pip install --no-index --no-deps --target`` into a site directory and puts it on
``PYTHONPATH`` itself. Copy ``.whl/`` (git-ignored) into the checkout there first.
Standard library only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = Path(__file__).resolve().parent / "gpu_wheels.txt"
sys.path.insert(0, str(ROOT / "tools"))
from lock import LOCK, canonical, read_lock  # noqa: E402

GLIBC = (17, 24, 27, 28, 31, 34, 35)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in GLIBC] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
BNB_KEEP = ("cpu", "cuda130", "cuda132")
BNB_LIB = re.compile(r"bitsandbytes/libbitsandbytes_([a-z0-9]+)\.(so|dll|dylib)$")

__all__ = ["canonical", "download", "main", "read_pins", "slim_bitsandbytes"]


def read_pins(path: Path = LIST, lock: Path | None = None) -> dict[str, str]:
    """``{name: version}``: each name of ``path`` (one per line, comments skipped) at its version
    in ``lock``. A name the lock lacks, or a line that pins a version itself, is an error."""
    lock = lock or LOCK
    versions = read_lock(lock)
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"{path}:{number}: expected a package name (the version comes from "
                             f"{lock.name}), got {raw!r}")
        if canonical(name) not in versions:
            raise ValueError(f"{path}:{number}: {name} is not in {lock}: add it to setup.cfg's "
                             "requirements and run make lock, or drop it here")
        pins[name] = versions[canonical(name)].split("+", 1)[0]
    return pins


def wheel_name(path: Path) -> tuple[str, str]:
    """``(canonical name, version)`` from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def download(pins: dict[str, str], dest: Path, python_version: str = "3.12") -> None:
    """``pip download`` of every pin into ``dest`` for CPython ``python_version``, manylinux."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += ["-d", str(dest), *(f"{name}=={version}" for name, version in pins.items())]
    subprocess.run(command, check=True)


def remove_other_versions(pins: dict[str, str], dest: Path) -> list[str]:
    """Delete wheels of pinned packages at other versions; the names removed."""
    wanted = {canonical(n): v for n, v in pins.items()}
    removed = []
    for path in sorted(dest.glob("*.whl")):
        name, version = wheel_name(path)
        if name in wanted and version != wanted[name]:
            path.unlink()
            removed.append(path.name)
    return removed


def slim_bitsandbytes(path: Path, keep: tuple[str, ...] = BNB_KEEP) -> tuple[int, int]:
    """Rewrite the bitsandbytes wheel at ``path`` without the native libraries not in ``keep``
    (``cpu``, ``cuda130``, ...); RECORD loses their lines. ``(bytes before, bytes after)``."""
    before = path.stat().st_size
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = set()
        for info in src.infolist():
            match = BNB_LIB.search(info.filename)
            if match and match.group(1) not in keep:
                dropped.add(info.filename)
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(
                    line + "\n" for line in lines if line.split(",", 1)[0] not in dropped
                ).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="wheel folder")
    parser.add_argument("--list", type=Path, default=LIST, help="name==version lines")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument(
        "--bnb-keep", nargs="+", default=list(BNB_KEEP), metavar="LIB",
        help="bitsandbytes native libraries to keep (libbitsandbytes_LIB.so); 'all' keeps all",
    )  # fmt: skip
    args = parser.parse_args(argv)
    pins = read_pins(args.list)
    args.dest.mkdir(parents=True, exist_ok=True)
    removed = remove_other_versions(pins, args.dest)
    if removed:
        print(f"removed other versions: {', '.join(removed)}")
    download(pins, args.dest, args.python_version)
    if "all" not in args.bnb_keep:
        for path in args.dest.glob("bitsandbytes-*.whl"):
            before, after = slim_bitsandbytes(path, tuple(args.bnb_keep))
            if before != after:
                print(f"slimmed {path.name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    wheels = sorted(args.dest.glob("*.whl"))
    have = {wheel_name(p)[0] for p in wheels}
    missing = [n for n in pins if canonical(n) not in have]
    if missing:
        print(f"missing after download: {', '.join(missing)}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")
    if total > 48 * 2**20:
        print("warning: over 48 MiB of wheels to copy to the GPU machine", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
