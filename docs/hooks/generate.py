"""MkDocs hooks: the pages generated at build time, so they never drift from the code.

- ``index.md``: the README, as it is.
- ``cli.md``: the command-line reference, from ``vh_lens.cli.build_parser()``.
- ``api/vh_lens.md``: the top-level API, one entry per name in ``vh_lens.__all__``, documented
  where it is defined (a new export appears by itself).
- ``tutorials/*.ipynb``: the tutorials executed (cells run from ``tutorials/``, as nbmake runs
  them), cached under ``.cache/docs`` by a hash of the notebook and of the package's sources, and
  with plotly figures turned into HTML that draws with the site's one copy of plotly.js
  (``assets/plotly.min.js``, loaded by ``docs/overrides/main.html`` on tutorial pages only).
  ``VH_LENS_DOCS_EXECUTE=0`` renders the notebooks as stored (no outputs) for a quick build.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "docs"
TUTORIALS = ROOT / "tutorials"
CELL_TIMEOUT_S = 600
log = logging.getLogger("mkdocs.hooks.vh_lens")


def use_this_tree() -> None:
    """The site documents the tree it is built from (a worktree, a clone), whichever vh_lens is
    installed: this process and the notebooks' kernels import vh_lens from ROOT. (Called from the
    hooks: mkdocs restores ``sys.path`` after loading this file.)"""
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep)[:1]:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    loaded = sys.modules.get("vh_lens")
    if loaded is not None and not Path(loaded.__file__).resolve().is_relative_to(ROOT):
        raise RuntimeError(
            f"vh_lens was imported from {loaded.__file__}, not from the tree the docs are built from ({ROOT})"
        )


# --- the command-line reference ----------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _action_rows(parser: argparse.ArgumentParser, group) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in group._group_actions:
        if action.help == argparse.SUPPRESS:
            continue
        invocation = formatter._format_action_invocation(action)
        meaning = formatter._expand_help(action) if action.help else ""
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            meaning += f" (one of: {', '.join(map(str, action.choices))})"
        if action.required:
            meaning += " **required**"
        rows.append(f"| `{_cell(invocation)}` | {_cell(meaning)} |")
    return rows


def cli_markdown() -> str:
    """The reference of every ``vh-lens`` subcommand: usage, description, options by group."""
    import vh_lens.cli

    os.environ.setdefault("COLUMNS", "100")
    parser = vh_lens.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command line", "", "Generated from the argparse parsers (`vh_lens.cli.build_parser()`).", "",
             (vh_lens.cli.__doc__ or "").strip(), "", "Commands: " + ", ".join(f"[`{n}`](#vh-lens-{n})" for n in sub.choices), ""]  # fmt: skip
    for name, command in sub.choices.items():
        lines += [
            f"## vh-lens {name}",
            "",
            command.description or "",
            "",
            "```text",
            command.format_usage().strip(),
            "```",
            "",
        ]
        for group in command._action_groups:
            rows = _action_rows(command, group)
            if not rows:
                continue
            title = group.title if group.title not in ("options", "optional arguments") else "options"
            lines += [f"**{title}**" + (f": {group.description}" if group.description else ""), "",
                      "| option | meaning |", "|---|---|", *rows, ""]  # fmt: skip
    return "\n".join(lines) + "\n"


# --- the top-level API -------------------------------------------------------------------------


def _definitions():
    """Every public object defined (not imported) in a public module of vh_lens: name -> [griffe objects]."""
    import griffe

    found: dict[str, list] = {}

    def walk(module) -> None:
        for name, member in module.members.items():
            if member.is_alias or name.startswith("_"):
                continue
            if member.is_module:
                walk(member)
            else:
                found.setdefault(name, []).append(member)

    walk(griffe.load("vh_lens", search_paths=[str(ROOT)], docstring_parser="google"))
    return found


def api_markdown() -> str:
    """``vh_lens``'s top-level names: a table linking each to its documentation on its package's page."""
    import importlib

    import vh_lens

    definitions = _definitions()
    lines = ["# vh_lens (top level)", "", (vh_lens.__doc__ or "").strip(), "",
             "Every name below is importable as `vh_lens.NAME`; the link leads to its documentation where "
             "it is defined.", "", "| name | defined in | summary |", "|---|---|---|"]  # fmt: skip
    subpackages = []
    for name in vh_lens.__all__:
        obj = getattr(vh_lens, name)
        if getattr(obj, "__name__", None) == f"vh_lens.{name}":  # a subpackage: has its own page
            subpackages.append(name)
            continue
        candidates = definitions.get(name, [])
        module = getattr(obj, "__module__", None) if callable(obj) else None
        found = next((c for c in candidates if c.parent.path == module), None)
        if found is None:
            found = next(
                (c for c in candidates if getattr(importlib.import_module(c.parent.path), name, None) is obj), None
            )
        if found is None:
            raise RuntimeError(f"vh_lens.{name}: its definition was not found in any vh_lens module")
        summary = found.docstring.value.strip().split("\n\n")[0] if found.docstring else ""
        lines.append(f"| [`{name}`][{found.path}] | `{found.parent.path}` | {_cell(summary)} |")
    lines += ["", "Subpackages reachable as attributes: " + ", ".join(f"`vh_lens.{n}`" for n in subpackages), ""]
    return "\n".join(lines) + "\n"


# --- the tutorials -----------------------------------------------------------------------------


def _sources_hash(notebook: Path) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    for path in sorted((ROOT / "vh_lens").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".safetensors", ".txt", ".model"):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _plotly_to_html(nb) -> int:
    """Plotly outputs (``application/vnd.plotly.v1+json``) as HTML drawn by the page's plotly.js."""
    import plotly.io

    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            figure = data.pop("application/vnd.plotly.v1+json", None)
            if figure is None:
                continue
            html = plotly.io.to_html(figure, full_html=False, include_plotlyjs=False, config={"responsive": True})
            data["text/html"] = html
            data.pop("text/plain", None)
            count += 1
    return count


def executed_notebook(notebook: Path, sources_hash: str) -> Path:
    """The executed copy of ``notebook`` (from the cache when the notebook and package are unchanged)."""
    import nbclient
    import nbformat

    out = CACHE / "tutorials" / notebook.name
    key = out.with_suffix(".key")
    if out.exists() and key.exists() and key.read_text() == sources_hash:
        return out
    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()  # fmt: skip
    figures = _plotly_to_html(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    key.write_text(sources_hash)
    log.info("executed %s in %.1f s (%d figures)", notebook.name, time.perf_counter() - start, figures)
    return out


def _tutorial_files(config) -> list[File]:
    execute = os.environ.get("VH_LENS_DOCS_EXECUTE", "1") != "0"
    files = []
    for notebook in sorted(TUTORIALS.glob("*.ipynb")):
        if execute:
            source = executed_notebook(notebook, _sources_hash(notebook))
        else:
            source = CACHE / "stored" / "tutorials" / notebook.name
            source.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(notebook, source)
        files.append(File(f"tutorials/{notebook.name}", str(source.parents[1]), config["site_dir"],
                          config["use_directory_urls"]))  # fmt: skip
    return files


# --- the hooks ---------------------------------------------------------------------------------


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    use_this_tree()
    generated = {
        "index.md": (ROOT / "README.md").read_text(encoding="utf-8").replace("](docs/", "]("),
        "cli.md": cli_markdown(),
        "api/vh_lens.md": api_markdown(),
    }
    if files.get_file_from_path("architecture.md") is None:  # written by another change; until it lands
        generated["architecture.md"] = "# Architecture\n\nThis page (docs/architecture.md) is not written yet.\n"
    for path, content in generated.items():
        if files.get_file_from_path(path) is not None:
            raise RuntimeError(f"docs/{path} is generated at build time: remove the file from docs/")
        files.append(File.generated(config, path, content=content))
    for file in _tutorial_files(config):
        files.append(file)
    return files


def on_post_build(config):
    import plotly

    target = Path(config["site_dir"]) / "assets" / "plotly.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", target)
