"""The docs site's generated pages (docs/hooks/generate.py): the CLI reference covers every command
and option of the real parser, the top-level API page every exported name, and a tutorial's plotly
figure drawn in a browser from the HTML the build makes of it. The whole site is built by
``.ci/run`` (``mkdocs build --strict``); these tests need the docs extra and skip without it."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
from test_browser import chromium  # noqa: F401, F811  (the browser fixture)

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_has_every_command_and_option(generate) -> None:
    from vh_lens.cli import COMMANDS, build_parser

    text = generate.cli_markdown()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    sections = re.split(r"^## vh-lens ", text, flags=re.M)[1:]
    assert [s.split("\n", 1)[0] for s in sections] == list(sub.choices)
    for section, (name, command) in zip(sections, sub.choices.items()):
        for action in command._actions:
            if action.help == argparse.SUPPRESS:  # hidden from --help, so from the reference too
                assert not any(f"`{o}" in section for o in action.option_strings)
                continue
            for option in action.option_strings:
                assert f"`{option}" in section or f", {option}" in section, f"vh-lens {name}: {option} missing"
            if action.choices and action.option_strings:
                assert all(str(c) in section for c in action.choices), f"vh-lens {name}: choices of {action.dest}"
        assert command.format_usage().strip().splitlines()[0] in section


def test_api_page_lists_every_export_once(generate) -> None:
    import vh_lens

    text = generate.api_markdown()
    rows = re.findall(r"^\| \[`(\w+)`\]\[([\w.]+)\] \| `([\w.]+)` \|", text, flags=re.M)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    exported = [n for n in vh_lens.__all__ if getattr(getattr(vh_lens, n), "__name__", None) != f"vh_lens.{n}"]
    assert sorted(names) == sorted(exported)
    for name, target, module in rows:
        assert target == f"{module}.{name}"
        assert getattr(importlib.import_module(module), name) is getattr(vh_lens, name), name
    assert generate.api_markdown() == text  # deterministic


def test_plotly_outputs_become_html(generate) -> None:
    import nbformat
    import plotly.graph_objects as go

    figure = go.Figure(go.Bar(x=[1, 2], y=[3, 4])).to_plotly_json()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/vnd.plotly.v1+json": figure, "text/plain": "Figure()"})])])  # fmt: skip
    assert generate._plotly_to_html(nb) == 1
    data = nb.cells[0].outputs[0].data
    assert set(data) == {"text/html"}
    assert 'class="plotly-graph-div"' in data["text/html"] and "Plotly.newPlot" in data["text/html"]
    assert "<script src" not in data["text/html"]  # plotly.js comes from the site, once


def test_a_converted_figure_draws_in_chromium(generate, chromium, tmp_path) -> None:  # noqa: F811
    """The HTML made of a notebook's plotly output draws with the site's plotly.js loaded in the head."""
    import shutil

    import nbformat
    import plotly
    import plotly.graph_objects as go

    figure = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])).to_plotly_json()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/vnd.plotly.v1+json": figure})])])  # fmt: skip
    generate._plotly_to_html(nb)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp_path / "plotly.min.js")
    page = tmp_path / "page.html"
    page.write_text(f"<html><head><script src='plotly.min.js'></script></head><body>"
                    f"{nb.cells[0].outputs[0].data['text/html']}</body></html>")  # fmt: skip
    seen = chromium.load(page)
    assert seen["errors"] == []
    assert len(seen["figures"]) == 1 and seen["figures"][0]["svg"] > 0 and seen["figures"][0]["traces"] == 1


def test_theme_override_loads_plotly_on_tutorial_pages() -> None:
    """The template that puts the site's plotly.js in the head of the tutorial pages (and only those)."""
    template = (ROOT / "docs" / "overrides" / "main.html").read_text()
    assert "assets/plotly.min.js" in template and 'src_uri.startswith("tutorials/")' in template
    assert "docs/overrides" in (ROOT / "mkdocs.yml").read_text()
