"""Output folders side by side: links between the report pages of sibling ``--out`` folders.

Each command writes its own ``--out`` folder. When several are written side by side under one
parent (``runs/scan``, ``runs/mask``, ``runs/lens``, ...), :func:`link_output_folder` (run by each
command once its folder is published) writes ``runs/index.html``, listing every report page of
every vh-lens output folder there, and brings the navigation bar of each of those pages up to
date: after the folder's own pages, "other outputs:" links to the pages of the sibling folders
(``../mask/masking.html``) and to the parent's index.

An output folder is a non-hidden sub-folder holding a page of the report template
(:func:`vh_lens.reports.page.page_info`, recognised by the marker the template writes, never
by names). The parent index is written only where two or more such folders are, or where it
was written before, and never over an ``index.html`` that vh-lens did not write. The work is
done under an exclusive lock on the parent folder (``flock``, where the platform has it), and
every file is replaced atomically, so commands finishing at once leave every page and the
index listing all of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

from vh_lens.core.io import write_text
from vh_lens.reports.page import (
    INDEX_FILE,
    page_info,
    refresh_nav,
    render_page,
    report_pages,
)

__all__ = ["OUTPUTS_KIND", "link_output_folder", "output_folders", "sibling_links", "write_outputs_index"]

OUTPUTS_KIND = "outputs"
"""The ``vh-lens-page`` kind of a parent folder's index (:func:`write_outputs_index`)."""


def _is_outputs_index(path: Path) -> bool:
    info = page_info(path)
    return info is not None and info[1] == OUTPUTS_KIND


def output_folders(parent: str | os.PathLike[str]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The vh-lens output folders directly in ``parent``: ``[(name, report_pages), ...]`` by name.

    Hidden folders (a run's temporary ``.NAME.*.partial`` folders) are left out.
    """
    parent = Path(parent)
    out = []
    try:
        children = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        pages = report_pages(child)
        if pages:
            out.append((child.name, pages))
    return out


def sibling_links(folder: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``[(href, label), ...]``: the parent's index and the report pages of ``folder``'s sibling
    output folders, relative to ``folder``; empty unless the parent holds an outputs index."""
    folder = Path(folder).absolute()
    parent = folder.parent
    if folder.name.startswith(".") or not _is_outputs_index(parent / INDEX_FILE):
        return []
    links = [(f"../{INDEX_FILE}", "all outputs")]
    for name, pages in output_folders(parent):
        if name != folder.name:
            links += [(f"../{quote(name)}/{file}", f"{name}: {title}") for file, title, _ in pages]
    return links


def write_outputs_index(parent: str | os.PathLike[str]) -> Path:
    """Write ``parent/index.html`` (atomically): every output folder of ``parent`` and its pages.

    Raises:
        ValueError: ``parent/index.html`` exists and was not written as an outputs index.
    """
    parent = Path(parent).absolute()
    path = parent / INDEX_FILE
    if path.exists() and not _is_outputs_index(path):
        raise ValueError(f"{path} exists and was not written by vh-lens as an outputs index; not replaced")
    folders = output_folders(parent)
    groups = [
        {"folder": name, "id": f"{i + 1}", "pages": [{"file": f"{quote(name)}/{file}", "title": title} for file, title, _ in pages]}
        for i, (name, pages) in enumerate(folders)
    ]  # fmt: skip
    text = render_page(
        kind=OUTPUTS_KIND, title=f"vh-lens outputs in {parent.name}", notes=[], warnings=[], settings=[], figures=[],
        tables=[], pages=[], groups=groups, plotly_script="", nav=Markup(""),
    )  # fmt: skip
    write_text(path, text)
    return path


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): atomic replaces only
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def link_output_folder(folder: str | os.PathLike[str], *, quiet: bool = False) -> Path | None:
    """Link the report pages of ``folder`` with those of its sibling output folders.

    Where ``folder``'s parent holds two or more output folders (:func:`output_folders`), or an
    outputs index already: (re)write ``parent/index.html`` and the navigation bar of every report
    page (and folder index) of every output folder there. Else nothing is written. A file that
    cannot be read or written (``OSError``) is reported in one line on stderr, not raised: the
    command's own output is complete either way.

    Args:
        folder: an output folder a command has just published.
        quiet: do not print the one line that says a foreign ``index.html`` blocked the index.

    Returns:
        The parent's index, or ``None`` when none was written.
    """
    folder = Path(folder).absolute()
    parent = folder.parent
    if folder.name.startswith(".") or not report_pages(folder) or not parent.is_dir():
        return None
    try:
        return _link(parent, quiet)
    except OSError as err:  # the command's own output is published already: say so, do not fail it
        print(f"vh-lens: warning: the output folders in {parent} could not be linked: {err}", file=sys.stderr)
        return None


def _link(parent: Path, quiet: bool) -> Path | None:
    index = parent / INDEX_FILE
    with _locked(parent):
        folders = output_folders(parent)
        if not _is_outputs_index(index):
            if len(folders) < 2:
                return None
            if index.exists():
                if not quiet:
                    print(f"vh-lens: {index} was not written by vh-lens: the output folders there are not linked",
                          file=sys.stderr)  # fmt: skip
                return None
        write_outputs_index(parent)
        for name, pages in folders:
            for file, _, _ in pages:
                refresh_nav(parent / name / file, pages)
            if _is_own_index(parent / name / INDEX_FILE):
                refresh_nav(parent / name / INDEX_FILE, pages)
    return index


def _is_own_index(path: Path) -> bool:
    info = page_info(path)
    return info is not None and info[1] == "index"
