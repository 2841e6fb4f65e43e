"""Helpers that read back a report page: its figures' specs, table cells, links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_NEW_PLOT = "Plotly.newPlot("


def figure_specs(text: str) -> dict[str, dict[str, Any]]:
    """``{div_id: {"data": [...], "layout": {...}}}`` of every ``Plotly.newPlot`` call on the page."""
    decoder = json.JSONDecoder()
    specs: dict[str, dict[str, Any]] = {}
    start = 0
    while (i := text.find(_NEW_PLOT, start)) != -1:
        j = i + len(_NEW_PLOT)
        values = []
        for _ in range(3):
            while text[j] in " \n\t,":
                j += 1
            value, j = decoder.raw_decode(text, j)
            values.append(value)
        specs[values[0]] = {"data": values[1], "layout": values[2]}
        start = j
    return specs


def cells(text: str) -> list[str]:
    """The text of every ``<td>`` on the page."""
    return re.findall(r"<td[^>]*>(.*?)</td>", text, re.S)


def links(text: str) -> set[str]:
    """The ``href`` of every link of the page's navigation bar."""
    nav = re.search(r"<nav[^>]*>(.*?)</nav>", text, re.S)
    return set(re.findall(r'href="([^"]+)"', nav.group(1))) if nav else set()


def size(path: Path) -> int:
    return path.stat().st_size


def long_numbers(texts: list[str], digits: int = 4) -> list[str]:
    """The decimal numbers in ``texts`` written with more than ``digits`` significant digits."""
    out = []
    for text in texts:
        for number in re.findall(r"\d+\.\d+", text):
            significant = number.replace(".", "").lstrip("0")
            if len(significant) > digits:
                out.append(number)
    return out
