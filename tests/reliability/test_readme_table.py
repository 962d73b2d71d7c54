"""The documentation's reliability table (docs/reliability.md) and this folder agree: every row
names tests that exist, and every test file here is named by a row (so a guarantee cannot lose its
test unnoticed). A reference is relative to this folder (``../test_x.py`` for the suite's own)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "reliability.md"
SECTION = "## Guarantees and their tests"


def table_rows() -> list[tuple[str, str]]:
    """``(guarantee, test cell)`` of each row of the table under :data:`SECTION`."""
    text = PAGE.read_text(encoding="utf-8")
    assert SECTION in text, f"{PAGE} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0] not in ("area", "---|---|---") and "---" not in line:
            rows.append((cells[1], cells[2]))
    return rows


def named_tests(cell: str) -> list[tuple[str, str | None]]:
    """``test_x.py::name`` -> (file, name); ``::name`` continues the previous file; a bare
    ``test_x.py`` names the whole file (name None)."""
    out: list[tuple[str, str | None]] = []
    current = None
    for ref in re.findall(r"`([^`]+)`", cell):
        file, _, name = ref.partition("::")
        current = file or current
        assert current, f"{ref!r} continues no file"
        out.append((current, name or None))
    return out


def test_every_row_names_an_existing_test() -> None:
    rows = table_rows()
    assert len(rows) >= 8  # the table was found (one row per point of the issue at least)
    for guarantee, cell in rows:
        tests = named_tests(cell)
        assert tests, f"the row {guarantee[:60]!r}... names no test"
        for file, name in tests:
            path = HERE / file
            assert path.is_file(), f"{file} (row {guarantee[:40]!r}) is not in {HERE}"
            if name is not None:
                assert re.search(rf"^def {name}\(", path.read_text(), re.M), f"{file}::{name}"


def test_every_reliability_test_file_is_in_the_table() -> None:
    named = {file for _, cell in table_rows() for file, _ in named_tests(cell)}
    files = {p.name for p in HERE.glob("test_*.py")} - {Path(__file__).name}
    assert files <= named, f"not in the table of {PAGE.name}: {sorted(files - named)}"
