"""The shared report template: plotly.js modes, sizes, sibling links, index, rounding, widths, settings."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import plotly.offline
import pytest
import torch
from pagecheck import cells, figure_specs, links, long_numbers

from vh_lens.reports.page import (
    INDEX_FILE,
    MAX_FIGURE_WIDTH,
    PLOTLYJS_FILE,
    Table,
    command_settings,
    flatten_settings,
    format_cell,
    markdown_table,
    report_pages,
    rows_table,
    write_report,
)

MB = 1_000_000


def _figure(width: int | None = None, n: int = 50) -> go.Figure:
    fig = go.Figure(go.Scatter(x=np.arange(n), y=np.linspace(0, 1, n)))
    if width is not None:
        fig.update_layout(width=width)
    return fig


def _page(path, **kw):
    kw.setdefault("title", f"page {path.stem}")
    kw.setdefault("figures", {"curve": _figure()})
    return write_report(path, **kw)


@pytest.mark.parametrize("mode", ["file", "cdn"])
def test_page_is_small_and_loads_plotly_once(tmp_path, mode) -> None:
    page = _page(tmp_path / "a.html", figures={"one": _figure(), "two": _figure()}, plotlyjs=mode)
    text = page.read_text()
    assert page.stat().st_size < MB
    scripts = re.findall(r"<script src=\"([^\"]+)\"", text)
    assert text.count("plotly.js v") == 0  # the library itself is not in the page
    if mode == "file":
        assert scripts == [PLOTLYJS_FILE]  # relative: the folder can be moved
        shared = tmp_path / PLOTLYJS_FILE
        assert shared.read_text() == plotly.offline.get_plotlyjs()
        _page(tmp_path / "b.html", plotlyjs=mode)
        assert sorted(p.name for p in tmp_path.glob("*.js")) == [PLOTLYJS_FILE]  # once per folder
    else:
        assert scripts == [f"https://cdn.plot.ly/plotly-{plotly.offline.get_plotlyjs_version()}.min.js"]
        assert not (tmp_path / PLOTLYJS_FILE).exists()
    assert text.index(scripts[0]) < text.index("</head>") < text.index("Plotly.newPlot")


def test_inline_page_embeds_plotly_once(tmp_path) -> None:
    page = _page(tmp_path / "a.html", figures={"one": _figure(), "two": _figure()}, plotlyjs="inline")
    text = page.read_text()
    assert page.stat().st_size > 4 * MB and not (tmp_path / PLOTLYJS_FILE).exists()
    assert text.count(plotly.offline.get_plotlyjs()[:200]) == 1 and "<script src=" not in text


def test_pages_link_their_siblings_and_the_index_lists_them(tmp_path) -> None:
    a = _page(tmp_path / "a.html", title="Scan <A>")
    assert links(a.read_text()) == set() and not (tmp_path / INDEX_FILE).exists()  # alone: no bar, no index
    b = _page(tmp_path / "b.html", title="Mask B")
    (tmp_path / "foreign.html").write_text("<html>not ours</html>")
    c = _page(tmp_path / "c.html", title="Lens C", plotlyjs="cdn")
    for page, others in ((a, {"b.html", "c.html"}), (b, {"a.html", "c.html"}), (c, {"a.html", "b.html"})):
        assert links(page.read_text()) == others | {INDEX_FILE}, page.name  # earlier pages were brought up to date
    index = (tmp_path / INDEX_FILE).read_text()
    listed = re.findall(r'<li><a href="([^"]+)">(.*?)</a>', index)
    assert listed == [("a.html", "Scan &lt;A&gt;"), ("b.html", "Mask B"), ("c.html", "Lens C")]
    assert links(index) == {"a.html", "b.html", "c.html"}
    assert [p[0] for p in report_pages(tmp_path)] == ["a.html", "b.html", "c.html"]
    assert "Plotly" not in index  # no figures, no script
    # Rewriting a page keeps one entry for it.
    _page(tmp_path / "b.html", title="Mask B again")
    assert re.findall(r'<li><a href="([^"]+)">', (tmp_path / INDEX_FILE).read_text()) == ["a.html", "b.html", "c.html"]
    assert "Mask B again" in a.read_text()


def test_table_numbers_are_rounded_and_tables_wrap(tmp_path) -> None:
    rows = [[0.699999988079071, 12345.678, torch.tensor(0.123456789), np.float32(1 / 3), None, float("nan"), 7, "x"]]
    page = _page(tmp_path / "t.html", tables=[Table("numbers", list("abcdefgh"), rows)],
                 settings={"lr": 0.10000000149011612})  # fmt: skip
    text = page.read_text()
    values = cells(text)
    assert ["0.7", "12346", "0.1235", "0.3333", "-", "nan", "7", "x"] == values[-8:]
    assert "0.1" in values and long_numbers(values) == []
    assert long_numbers(["0.699999988079071", "0.0009619"]) == ["0.699999988079071"]  # the check can fail
    assert '<div class="table-wrap">' in text and "overflow-x:auto" in text


def test_format_cell_cases() -> None:
    assert format_cell(0.699999988079071) == "0.7"
    assert format_cell(1e-7) == "1e-07" and format_cell(-2.5e20) == "-2.5e+20"
    assert format_cell(float("inf")) == "inf" and format_cell(True) == "True"
    assert format_cell([0.25, (1, 0.3333333)]) == "[0.25, [1, 0.3333]]"
    assert format_cell(0.123456, digits=2) == "0.12"


def test_figures_are_capped_in_width_and_have_ids(tmp_path) -> None:
    wide, narrow, auto = _figure(2160), _figure(800), _figure()
    page = _page(tmp_path / "w.html", figures={"wide": wide, "narrow": narrow, "auto": auto})
    specs = figure_specs(page.read_text())
    assert list(specs) == ["fig-wide", "fig-narrow", "fig-auto"]
    widths = {k: v["layout"].get("width") for k, v in specs.items()}
    assert widths == {"fig-wide": MAX_FIGURE_WIDTH, "fig-narrow": 800, "fig-auto": None}
    assert wide.layout.width == 2160  # the caller's figure is not changed
    for name in ("wide", "narrow", "auto"):
        assert f'<div id="fig-{name}" class="plotly-graph-div"' in page.read_text()


def test_figures_come_before_tables(tmp_path) -> None:
    text = _page(tmp_path / "o.html", tables=[Table("t", ["a"], [[1]])], settings={"k": 1}).read_text()
    assert (
        text.index("<h1>") < text.index('id="settings"') < text.index("plotly-graph-div") < text.index('id="table-t"')
    )


def test_template_renders_settings_escaped(tmp_path) -> None:
    settings = {"model": "<b>toy</b>", "inputs": {"n_images": 3, "digest": "abc"}, "ks": [1, 2], "lr": 0.5}
    text = _page(tmp_path / "s.html", settings=settings, notes=["careful & <slow>"]).read_text()
    block = text[text.index('id="settings"') : text.index("</table>", text.index('id="settings"'))]
    pairs = re.findall(r'<tr><td class="text">(.*?)</td><td class="text">(.*?)</td></tr>', block)
    assert pairs == [("model", "&lt;b&gt;toy&lt;/b&gt;"), ("inputs.n_images", "3"), ("inputs.digest", "abc"),
                     ("ks", "[1, 2]"), ("lr", "0.5")]  # fmt: skip
    assert "Run settings (5)" in text and '<p class="note">careful &amp; &lt;slow&gt;</p>' in text
    assert "<title>page s</title>" in text and "<h1>page s</h1>" in text


def test_helpers() -> None:
    assert flatten_settings({"a": {"b": {"c": 1}}, "e": {}}) == [("a.b.c", "1"), ("e", "{}")]
    table = markdown_table("m", "lead line\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter")
    assert (table.header, table.rows, table.note) == (["a", "b"], [["1", "2"]], "lead line")
    assert rows_table("r", [{"a": 1, "b": 2}], ["b"]).rows == [[2]]
    with pytest.raises(ValueError, match="lack the columns"):
        rows_table("r", [{"a": 1}], ["z"])
    import argparse
    from pathlib import Path

    args = argparse.Namespace(out=Path("x"), k=3, func=print)
    assert command_settings(args, "vh-lens mask") == {"command": "vh-lens mask", "k": 3, "out": "x"}


def test_bad_input_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="plotlyjs"):
        _page(tmp_path / "a.html", plotlyjs="embed")
    with pytest.raises(ValueError, match="figure names"):
        _page(tmp_path / "a.html", figures=[("x", _figure()), ("x", _figure())])
    with pytest.raises(ValueError, match="figure names"):
        _page(tmp_path / "a.html", figures={"has space": _figure()})
    with pytest.raises(ValueError, match="index.html"):
        _page(tmp_path / INDEX_FILE)
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        Table("t", ["a", "b"], [[1]])
    assert list(tmp_path.iterdir()) == []


def test_float_labels_in_figures_are_rounded(tmp_path) -> None:
    z = np.array([[1 / 3, 0.0], [0.33000001311302185, 1.0]], dtype=np.float32)
    fig = go.Figure(go.Heatmap(z=z, text=np.round(z, 2), texttemplate="%{text}"))
    spec = figure_specs(_page(tmp_path / "h.html", figures={"h": fig}).read_text())["fig-h"]
    assert spec["data"][0]["text"] == [["0.33", "0"], ["0.33", "1"]]  # not 0.33000001311302185
    assert isinstance(fig.data[0].text, np.ndarray)  # the caller's figure is not changed


def test_pixel_images_become_png_and_heatmaps_float32(tmp_path) -> None:
    rng = np.random.default_rng(0)
    picture = np.zeros((200, 300, 3), dtype=np.uint8)
    picture[50:150, 100:200] = [255, 0, 0]
    heat = rng.random((200, 300)).astype(np.float32).astype(np.float64)  # float32 values held as float64
    fig = go.Figure([go.Image(z=picture), go.Heatmap(z=heat)])
    page = _page(tmp_path / "i.html", figures={"i": fig})
    data = figure_specs(page.read_text())["fig-i"]["data"]
    assert "z" not in data[0] and data[0]["source"].startswith("data:image/png;base64,")
    import base64
    import io

    from PIL import Image

    png = Image.open(io.BytesIO(base64.b64decode(data[0]["source"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(png.convert("RGB")), picture)  # lossless
    assert data[1]["z"]["dtype"] == "f4"
    assert page.stat().st_size < 0.6 * (picture.nbytes * 4 / 3 + heat.nbytes * 4 / 3)
