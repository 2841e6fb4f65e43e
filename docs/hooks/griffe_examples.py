"""A griffe extension for the API reference: the project's docstrings head their doctest blocks
``Example:`` (one example); Google style as griffe reads it calls that section ``Examples:``
(``Example:`` would be a plain admonition, its ``>>>`` lines rendered as Markdown text). The
section title is read as ``Examples:`` here, so the blocks render as code; the sources stay as
they are."""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
