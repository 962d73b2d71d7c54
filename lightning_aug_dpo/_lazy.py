"""Package attributes that load on first use (PEP 562).

A package ``__init__`` that imports its submodules eagerly makes ``python -m package.submodule``
warn (runpy finds the submodule already imported) and run the module's code twice. The packages
that hold ``python -m`` entry points (the top level, ``data``, ``models``) export their names
through :func:`attach` instead: ``package.Name`` and ``from package import Name`` import the
defining submodule then, and only then.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attach(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``exports`` maps a submodule (relative
    name) to the names it defines; any submodule is reachable as an attribute too."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise  # a missing dependency of an existing submodule: its own message
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
