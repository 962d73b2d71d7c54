"""A griffe extension for the API reference: the project's docstrings use a few reStructuredText
forms (``.. math::`` blocks, ``:math:`` and ``:class:`` roles, simple ``====`` tables, ``::``
literal blocks) that Markdown does not know. This rewrites them into the Markdown the site renders
(``$$ ... $$`` and ``$ ... $`` for MathJax through ``pymdownx.arithmatex``, code spans, pipe
tables, indented code blocks) before the docstrings are parsed. The source files stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|obj|exc|py:\w+):`~?([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(lines: list[str]) -> list[str]:
    """``.. math::`` + an indented block -> ``$$`` + the block + ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            base = _indent(line)
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                body.append(lines[i].strip())
                i += 1
            pad = " " * base
            groups: list[list[str]] = [[]]
            for b in body:  # a blank line inside the block separates two displayed equations
                if b:
                    groups[-1].append(b)
                elif groups[-1]:
                    groups.append([])
            for group in filter(None, groups):
                out += [f"{pad}$$", *(f"{pad}{b}" for b in group), f"{pad}$$", ""]
            continue
        out.append(line)
        i += 1
    return out


def _tables(lines: list[str]) -> list[str]:
    """A simple reST table (``====  ====`` rules) -> a Markdown pipe table."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        rule = lines[i]
        starts = [m.start() for m in re.finditer(r"=+", rule)]
        rows: list[list[str]] = []
        i += 1
        rules_seen = 1
        while i < len(lines) and rules_seen < 3:
            if RULE.match(lines[i]):
                rules_seen += 1
            elif lines[i].strip():
                cells = [
                    lines[i][a:b].strip()
                    for a, b in zip(starts, [*starts[1:], len(lines[i]) + 1], strict=False)
                ]
                rows.append([c.replace("|", r"\|") for c in cells])
            i += 1
        if rows:
            pad = " " * _indent(rule)
            out.append(f"{pad}| " + " | ".join(rows[0]) + " |")
            out.append(f"{pad}|" + "---|" * len(rows[0]))
            out += [f"{pad}| " + " | ".join(r) + " |" for r in rows[1:]]
            out.append("")
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reStructuredText forms in Markdown."""
    lines = _tables(_math_blocks(text.splitlines()))
    text = "\n".join(lines)
    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    text = ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    # "Example::" / "YAML::" ends a paragraph that introduces a literal block
    text = re.sub(r"(\S)::\n", r"\1:\n", text)
    return text


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring's reStructuredText forms once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
