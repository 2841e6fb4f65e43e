"""One HTML page template for every report the package writes.

:func:`write_report` renders ``templates/page.html.j2`` (jinja2): a title, notes, the run's
settings (a collapsed table), the figures, then the tables, and a navigation bar linking the
other report pages of the same folder. When a folder holds two or more report pages an
``index.html`` (the same template, listing them) is written too, and the navigation bars of the
pages already there are brought up to date. Output folders side by side under one parent are
linked with each other by :mod:`vh_lens.reports.outputs` (the bar then also lists the sibling
folders' pages, :func:`nav_bar`).

plotly.js is loaded once per page in ``<head>``, in one of three ways (``plotlyjs``):

- ``"file"`` (default): a shared ``plotly.min.js`` next to the pages, referenced relatively;
- ``"cdn"``: from ``cdn.plot.ly`` (the version this plotly ships), nothing written;
- ``"inline"``: embedded in the page (about 4.8 MB; works offline as a single file).

Table cells are rounded (:func:`format_cell`) and figures are capped at :data:`MAX_FIGURE_WIDTH`
pixels.
"""

from __future__ import annotations

import html as _html
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from markupsafe import Markup

from vh_lens.core.io import write_text

__all__ = [
    "MAX_FIGURE_WIDTH",
    "PLOTLYJS_CHOICES",
    "PLOTLYJS_FILE",
    "INDEX_FILE",
    "Table",
    "command_settings",
    "flatten_settings",
    "markdown_table",
    "rows_table",
    "format_cell",
    "nav_bar",
    "page_info",
    "refresh_nav",
    "render_page",
    "report_pages",
    "write_index",
    "write_report",
]

MAX_FIGURE_WIDTH = 1400
"""Widest figure a page holds, in pixels (wider figures are narrowed to this)."""
PLOTLYJS_CHOICES = ("file", "cdn", "inline")
PLOTLYJS_FILE = "plotly.min.js"
INDEX_FILE = "index.html"
_MARKER = '<meta name="generator" content="vh-lens report">'
_NAV = re.compile(r"<!--vh-lens-nav-->.*?<!--/vh-lens-nav-->", re.S)
_TITLE = re.compile(r"<title>(.*?)</title>", re.S)
_KIND = re.compile(r'<meta name="vh-lens-page" content="([^"]*)">')
_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.html$")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Table:
    """A table of a report page: ``rows`` are lists of cells, rounded by :func:`format_cell`.

    Args:
        title: the heading above the table.
        header: the column names.
        rows: the rows (each as long as ``header``).
        note: a line of text under the heading.
        name: the table's id on the page (``table-<name>``); default: from the title.
    """

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str | None = None
    name: str | None = None
    digits: int = field(default=4)

    def __post_init__(self) -> None:
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.header)]
        if bad:
            raise ValueError(f"table {self.title!r}: rows {bad} do not have {len(self.header)} cells")


def format_cell(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats to ``digits`` significant digits, ``None`` as ``"-"``.

    Integers and strings are kept; numpy and torch scalars are read with ``.item()``; lists
    and tuples are formatted item by item.

    Example:
        >>> format_cell(0.699999988079071), format_cell(12345.678), format_cell(None), format_cell(True)
        ('0.7', '12346', '-', 'True')
    """
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None:
        return "-"
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and 10**digits <= abs(value) < 1e15:
            return str(round(value))
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_cell(v, digits) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {format_cell(v, digits)}" for k, v in value.items()) + "}"
    return str(value)


def flatten_settings(settings: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """``[(key, text), ...]`` of a (nested) settings mapping; nested keys joined by ``"."``.

    Example:
        >>> flatten_settings({"model": "toy", "inputs": {"n": 3, "w": 0.25}})
        [('model', 'toy'), ('inputs.n', '3'), ('inputs.w', '0.25')]
    """
    out: list[tuple[str, str]] = []
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += flatten_settings(value, prefix=f"{name}.")
        else:
            out.append((name, format_cell(value)))
    return out


def rows_table(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    note: str | None = None,
    name: str | None = None,
) -> Table:
    """A :class:`Table` of dict rows (``columns``: which keys, in order; default the first row's).

    Example:
        >>> rows_table("t", [{"a": 1, "b": 0.125}]).header
        ['a', 'b']
    """
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    missing = sorted({c for row in rows for c in columns if c not in row})
    if missing:
        raise ValueError(f"table {title!r}: rows lack the columns {missing}")
    return Table(title, columns, [[row[c] for c in columns] for row in rows], note=note, name=name)


def markdown_table(title: str, text: str, *, note: str | None = None, name: str | None = None) -> Table:
    """A :class:`Table` of the first markdown table (``| a | b |`` lines) in ``text``; lines before it
    that are not part of a table become the note when ``note`` is not given."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None:
        raise ValueError(f"table {title!r}: no markdown table in the text")
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        block.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, body = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
    lead = " ".join(line.strip() for line in lines[:start] if line.strip())
    return Table(title, header, body, note=note if note is not None else (lead or None), name=name)


def command_settings(args: Any, command: str | None = None) -> dict[str, Any]:
    """The settings of a command-line run: ``vars(args)`` without callables, paths as text."""
    out: dict[str, Any] = {"command": command} if command else {}
    for key, value in sorted(vars(args).items()):
        if callable(value):
            continue
        out[key] = str(value) if isinstance(value, os.PathLike) else value
    return out


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("vh_lens.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default_for_string=True, default=True),
        trim_blocks=False,
        keep_trailing_newline=True,
    )


def _plotly_script(plotlyjs: str, folder: Path) -> str:
    import plotly.offline

    if plotlyjs == "inline":
        return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
    if plotlyjs == "cdn":
        version = plotly.offline.get_plotlyjs_version()
        return f'<script src="https://cdn.plot.ly/plotly-{version}.min.js" charset="utf-8"></script>'
    if plotlyjs == "file":
        code = plotly.offline.get_plotlyjs()
        target = folder / PLOTLYJS_FILE
        if not target.is_file() or target.stat().st_size != len(code.encode("utf-8")):
            write_text(target, code)
        return f'<script src="{PLOTLYJS_FILE}" charset="utf-8"></script>'
    raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS_CHOICES)}, got {plotlyjs!r}")


def _round_text(fig: go.Figure) -> None:
    """Float ``text`` arrays of traces (drawn as labels, e.g. heatmap cells) as rounded strings."""
    import numpy as np

    for trace in fig.data:
        text = getattr(trace, "text", None)
        if text is None or isinstance(text, str):
            continue
        array = np.asarray(text)
        if array.dtype.kind == "f":
            trace.text = np.vectorize(lambda v: format_cell(float(v), 3), otypes=[object])(array).tolist()


def _compact(fig: go.Figure) -> None:
    """Make a figure small on the page: pixel images as PNG sources, float64 heatmaps as float32."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    for trace in fig.data:
        if trace.type == "image" and trace.z is not None and trace.source is None:
            z = np.asarray(trace.z)
            model = trace.colormodel or ("rgba" if z.ndim == 3 and z.shape[-1] == 4 else "rgb")
            if z.dtype == np.uint8 and z.ndim == 3 and z.shape[-1] == len(model) and model in ("rgb", "rgba"):
                buf = io.BytesIO()
                Image.fromarray(z, mode=model.upper()).save(buf, format="PNG", optimize=True)
                trace.source = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
                trace.z = None
        elif trace.type == "heatmap" and trace.z is not None:
            z = np.asarray(trace.z)
            if z.dtype == np.float64:
                trace.z = None  # plotly skips an assignment of equal values, whatever their dtype
                trace.z = z.astype(np.float32)


def _figure_html(name: str, figure: go.Figure) -> str:
    fig = go.Figure(figure)
    _round_text(fig)
    _compact(fig)
    width = fig.layout.width
    if width is not None and width > MAX_FIGURE_WIDTH:
        fig.update_layout(width=MAX_FIGURE_WIDTH)
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
        config={"displaylogo": False, "responsive": True},
    )  # fmt: skip


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug if slug and slug[0].isalpha() else f"t-{slug}"


def page_info(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(title, kind)`` of a page written by this template, or ``None`` for any other file.

    The page is recognised by the template's marker, its ``<meta name="generator">`` tag, in
    the first 4 KB (never by its name or place).
    """
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    if _MARKER not in head:
        return None
    title = _TITLE.search(head)
    kind = _KIND.search(head)
    return (_html.unescape(title.group(1)) if title else path.name, kind.group(1) if kind else "")


def report_pages(folder: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """The report pages of ``folder`` other than the index: ``[(file, title, kind), ...]`` by file name.

    A report page is an ``.html`` file written by :func:`write_report` (:func:`page_info`).
    """
    pages = []
    folder = Path(folder)
    if not folder.is_dir():
        return pages
    for path in sorted(folder.glob("*.html")):
        if path.name == INDEX_FILE:
            continue
        info = page_info(path)
        if info is not None:
            pages.append((path.name, *info))
    return pages


def _nav(current: str, pages: Sequence[tuple[str, str, str]], others: Sequence[tuple[str, str]] = ()) -> str:
    links = []
    entries = [(INDEX_FILE, "index")] if len(pages) >= 2 else []
    entries += [(file, title) for file, title, _ in pages]
    for file, title in entries:
        label = _html.escape(title)
        if file == current:
            links.append(f'<span class="here">{label}</span>')
        else:
            links.append(f'<a href="{_html.escape(file)}">{label}</a>')
    if others:
        links.append('<span class="sep">other outputs:</span>')
        links += [f'<a class="other" href="{_html.escape(href)}">{_html.escape(label)}</a>' for href, label in others]
    return f'<nav id="pages-nav">{"".join(links)}</nav>' if len(entries) >= 2 or others else ""


def nav_bar(folder: str | os.PathLike[str], current: str, pages: Sequence[tuple[str, str, str]] | None = None) -> str:
    """The navigation bar of page ``current`` of ``folder``: the folder's report pages (and its index
    when it has two or more), then the pages of the sibling output folders when their parent
    holds a vh-lens outputs index (:func:`vh_lens.reports.outputs.sibling_links`)."""
    from vh_lens.reports.outputs import sibling_links

    folder = Path(folder)
    pages = report_pages(folder) if pages is None else pages
    return _nav(current, pages, sibling_links(folder))


def refresh_nav(path: str | os.PathLike[str], pages: Sequence[tuple[str, str, str]] | None = None) -> bool:
    """Rewrite the navigation bar of the report page ``path`` (atomically) to :func:`nav_bar`.

    Returns:
        Whether the page changed (a file that is not a report page is left alone: ``False``).
    """
    path = Path(path)
    if page_info(path) is None:
        return False
    text = path.read_text(encoding="utf-8")
    bar = nav_bar(path.parent, path.name, pages)
    new = _NAV.sub(lambda _: f"<!--vh-lens-nav-->{bar}<!--/vh-lens-nav-->", text, count=1)
    if new != text:
        write_text(path, new)
    return new != text


def _refresh_siblings(folder: Path, pages: Sequence[tuple[str, str, str]], skip: str) -> None:
    """Rewrite the navigation bar of each report page of ``folder`` but ``skip``; write the index."""
    for file, _, _ in pages:
        if file != skip:
            refresh_nav(folder / file, pages)
    if len(pages) >= 2:
        write_index(folder, pages=pages)


def render_page(**fields: Any) -> str:
    """The template rendered with ``fields`` (``kind``, ``title``, ``notes``, ``warnings``, ``settings``,
    ``figures``, ``tables``, ``pages``, ``groups``, ``plotly_script``, ``nav``); for the index pages."""
    fields.setdefault("groups", [])
    return _environment().get_template("page.html.j2").render(**fields)


def write_index(
    folder: str | os.PathLike[str], *, pages: Sequence[tuple[str, str, str]] | None = None, plotlyjs: str = "file"
) -> Path:
    """Write ``folder/index.html``: the same template, listing the folder's report pages.

    Args:
        folder: the output folder.
        pages: ``[(file, title, kind), ...]`` (default: :func:`report_pages`).
        plotlyjs: unused by the index (it has no figures); accepted for symmetry.

    Returns:
        The index path.
    """
    folder = Path(folder)
    pages = report_pages(folder) if pages is None else list(pages)
    page_list = [{"file": file, "title": title} for file, title, _ in pages]
    text = render_page(
        kind="index", title=f"vh-lens reports in {folder.name}", notes=[], warnings=[], settings=[], figures=[], tables=[],
        pages=page_list, plotly_script="", nav=Markup(nav_bar(folder, INDEX_FILE, pages)),
    )  # fmt: skip
    path = folder / INDEX_FILE
    write_text(path, text)
    return path


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    settings: Mapping[str, Any] | None = None,
    figures: Mapping[str, go.Figure] | Iterable[tuple[str, go.Figure]] = (),
    tables: Sequence[Table] = (),
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    captions: Mapping[str, str] | None = None,
    kind: str | None = None,
    plotlyjs: str = "file",
) -> Path:
    """Write one report page (atomically) with the shared template; link it with its siblings.

    Args:
        path: the page, e.g. ``out/report.html`` (a plain ``NAME.html`` file name).
        title: the page title (also its ``<h1>`` and its label in the other pages' links).
        settings: the run's settings (nested mappings are flattened), shown in a table.
        figures: ``{name: figure}`` in page order; each figure's div id is ``fig-<name>``.
        tables: the tables, after the figures.
        notes: remarks shown under the title.
        warnings: shown under the title, each as "Warning: ..." (before the notes).
        captions: ``{name: text}`` shown above a figure.
        kind: a word for the page (``"scan"``, ``"mask"``, ...); default the file's stem.
        plotlyjs: ``"file"`` (a shared ``plotly.min.js`` beside the page), ``"cdn"`` or
            ``"inline"``.

    Returns:
        The path written.

    Example:
        >>> write_report("out/page.html", title="demo", settings={"k": 3}, figures={"bars": fig},
        ...              tables=[Table("top", ["a", "b"], [[1, 0.5]])], plotlyjs="cdn")  # doctest: +SKIP
    """
    path = Path(path)
    if not _NAME.match(path.name) or path.name == INDEX_FILE:
        raise ValueError(f"path must name a NAME.html file other than {INDEX_FILE}, got {path.name!r}")
    if plotlyjs not in PLOTLYJS_CHOICES:
        raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS_CHOICES)}, got {plotlyjs!r}")
    items = list(figures.items() if isinstance(figures, Mapping) else figures)
    names = [name for name, _ in items]
    bad = [name for name in names if not _ID.match(name)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"figure names must be unique ids (letters, digits, '-', '_'), got {names}")
    captions = dict(captions or {})
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    script = _plotly_script(plotlyjs, folder) if items else ""
    kind = kind or path.stem
    others = [p for p in report_pages(folder) if p[0] != path.name]
    pages = sorted([*others, (path.name, title, kind)])
    seen: set[str] = set()
    table_fields = []
    for table in tables:
        name = table.name or _slug(table.title)
        while name in seen:
            name += "-x"
        seen.add(name)
        rows = [[format_cell(cell, table.digits) for cell in row] for row in table.rows]
        table_fields.append({"name": name, "title": table.title, "note": table.note, "header": list(table.header),
                             "rows": rows})  # fmt: skip
    figure_fields = [{"name": n, "html": Markup(_figure_html(n, f)), "caption": captions.get(n)} for n, f in items]
    text = render_page(
        kind=kind, title=title, notes=list(notes), warnings=list(warnings), settings=flatten_settings(settings), figures=figure_fields,
        tables=table_fields, pages=[], plotly_script=Markup(script), nav=Markup(nav_bar(folder, path.name, pages)),
    )  # fmt: skip
    write_text(path, text)
    _refresh_siblings(folder, pages, skip=path.name)
    return path
