"""The CLI's argument parser: short error messages that name the file, the key and the fix.

jsonargparse reports a mistake after the whole usage (50+ lines for ``fit``), a YAML syntax error
as ``in "<unicode string>", line 4`` without the file's name, and an unknown key without saying
what was meant. :class:`AugDPOArgumentParser` keeps jsonargparse's parsing and changes only what
it prints when parsing stops: one message, the closest valid key (difflib) where there is one, and
where to read the options; the exit status stays 2.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["AugDPOArgumentParser", "closest", "explain_parse_error", "yaml_error_message"]

UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
NOT_ACCEPTED = re.compile(r"does not accept option '([^']+)'")  # a config file's unknown key
INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


class AugDPOArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one short message (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config_files: list[str] = []  # the config file being read, for its errors

    def parse_path(self, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        self._config_files.append(os.fspath(path))
        try:
            return super().parse_path(path, *args, **kwargs)
        finally:
            self._config_files.pop()

    def _load_config_parser_mode(self, content: str, path: Any = "", *args: Any) -> Any:
        try:
            return super()._load_config_parser_mode(content, path, *args)
        except TypeError as err:
            if not isinstance(err.__cause__, yaml.YAMLError):
                raise
            name = self._config_files[-1] if self._config_files else os.fspath(path or "")
            raise TypeError(yaml_error_message(name or "config", content, err.__cause__)) from err

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse also reports mistakes it recovers from through error() (trying each
        # type of a Union): only the final report, the one that would exit, is reworded
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {explain_parse_error(message, parser, prog)}\n")
        self.exit(2)


def yaml_error_message(path: str, content: str, error: yaml.YAMLError) -> str:
    """``FILE, line L, column C: problem``, with what to fix for the usual indentation slips."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"cannot read config file {path}: {problem}"
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
    lines = content.splitlines()
    text = lines[mark.line] if mark.line < len(lines) else ""
    if "\t" in text[: mark.column + 1] or "'\\t'" in problem:
        fix = "YAML indents with spaces only: replace the tab by spaces"
    elif "mapping values are not allowed" in problem or "expected <block end>" in problem:
        fix = "check this line's indentation against the lines above it"
    else:
        fix = "check the YAML syntax at that place"
    shown = f"\n    {text.rstrip()}\n    {' ' * mark.column}^" if text.strip() else ""
    return f"cannot read config file {where}: {problem}{shown}\n  Fix: {fix}"


def closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (difflib), or ``None`` when none is close."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def class_options(class_path: str) -> list[str]:
    """The init arguments the parser accepts for ``class_path`` (those its ``**kwargs`` pass on
    to a base class included, as jsonargparse resolves them); empty if it cannot be loaded."""
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except Exception:  # a message is being built for another error: never raise a new one
        return []
    return top_level_keys(parser)


def top_level_keys(parser: Any) -> list[str]:
    """First key segment of every parser option: ``lora_r``, ``loss`` (not ``loss.init_args``)."""
    keys = []
    for action in parser._actions:
        first = action.dest.split(".")[0]
        if first not in ("help", "config", "print_config") and first not in keys:
            keys.append(first)
    return keys


def explain_parse_error(message: str, parser: Any, prog: str) -> str:
    """jsonargparse's ``message`` reworded where it is an unknown key: the key, where it was
    looked for, the closest valid key and the help that lists them all."""
    options = UNKNOWN_OPTION.search(message)
    if options is not None:
        key = options.group(1)
        before = message[: options.start()]
        classes = CLASS_PATH.findall(before)
        nesting = PARSER_KEY.findall(before)
        if classes:
            choices = class_options(classes[-1])
            place = classes[-1]
            show = f"{prog} --{'.'.join(nesting)}.help {classes[-1]}" if nesting else None
        else:
            choices, place, show = top_level_keys(parser), "this command", f"{prog} --help"
        return unknown_key_message(key, place, choices, show)
    unrecognized = UNRECOGNIZED.search(message)
    if unrecognized is not None:
        key = unrecognized.group(1).split("=")[0]
        choices = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        return unknown_key_message(key, "this command", choices, f"{prog} --help")
    not_accepted = NOT_ACCEPTED.search(message)
    if not_accepted is not None:
        choices = [a.dest for a in parser._actions]
        return unknown_key_message(not_accepted.group(1), "this command", choices, f"{prog} --help")
    invalid = INVALID_CHOICE.search(message)
    if invalid is not None:
        guess = closest(invalid.group(1), re.findall(r"'([^']*)'", invalid.group(2)))
        if guess is not None:
            return f"{message}; did you mean {guess!r}?\n  (options: {prog} --help)"
    inner = innermost_problem(message, prog)
    return inner if inner is not None else f"{message}\n  (options: {prog} --help)"


def innermost_problem(message: str, prog: str) -> str | None:
    """A value the class named last in ``message`` refused, without the Union bookkeeping
    around it (the subtypes tried, the given value's Python type); ``None`` if not that."""
    found = list(CLASS_PATH.finditer(message))
    if not found:
        return None
    lines = []
    for line in message[found[-1].end() :].splitlines()[1:]:
        if line.strip().startswith(("- ", "Given value", "Subtypes:", "Errors:")):
            break
        lines.append(line.strip())
    if not lines or len(lines) > 4 or "Union subtypes" in lines[-1]:  # the detail is deeper
        return None
    class_path = found[-1].group(1)
    nesting = PARSER_KEY.findall(message[: found[-1].start()])
    where = f" (--{'.'.join(nesting)})" if nesting else ""
    text = f"in {class_path}{where}: {' '.join(lines)}"
    if nesting:
        text += f"\n  Its options: {prog} --{'.'.join(nesting)}.help {class_path}"
    return text


def unknown_key_message(key: str, place: str, choices: list[str], show: str | None) -> str:
    guess = closest(key, choices)
    text = f"{key!r} is not an option of {place}"
    if guess is not None:
        text += f"; did you mean {guess!r}?"
    if show is not None:
        text += f"\n  Its options: {show}"
    return text
