"""Lazy re-exports (PEP 562) for the package's ``__init__`` files: no work at import time.

A package lists ``{name: module}``; :func:`lazy_exports` gives it the ``__getattr__`` and
``__dir__`` that import the module on first use of a name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], moved: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` re-exporting ``exports`` (``{name: module}``).

    ``moved`` (``{name: module}``) names that are no longer exported here: asking for one raises
    an ``AttributeError`` saying where it lives now.
    """
    exports = dict(exports)
    moved = dict(moved or {})
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        if name in moved:
            raise AttributeError(f"{package}.{name} is not a top-level name: use `from {moved[name]} import {name}`")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
