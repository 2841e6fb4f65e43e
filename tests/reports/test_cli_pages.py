"""``--plotlyjs`` on every command that writes a page, and the demo scan's page through the CLI."""

from __future__ import annotations

import pytest
from pagecheck import figure_specs, links

from vh_lens.cli import build_parser, main
from vh_lens.reports.page import MAX_FIGURE_WIDTH, PLOTLYJS_FILE

COMMANDS = {
    "scan": [],
    "mask": ["--model", "m", "--data", "d", "--format", "jsonl", "--scores", "s", "--out", "o"],
    "lens": ["--model", "m", "--data", "d", "--format", "jsonl", "--out", "o"],
    "probe": ["--model", "m", "--data", "d", "--out", "o"],
    "patch": ["--out", "o"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_page_writing_command_takes_plotlyjs(command) -> None:
    parser = build_parser()
    assert parser.parse_args([command, *COMMANDS[command]]).plotlyjs == "file"
    assert parser.parse_args([command, *COMMANDS[command], "--plotlyjs", "cdn"]).plotlyjs == "cdn"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *COMMANDS[command], "--plotlyjs", "embed"])


@pytest.mark.parametrize("mode", ["file", "cdn"])
def test_demo_scan_page(tmp_path, mode) -> None:
    out = tmp_path / "out"
    assert main(["scan", "--n-samples", "6", "--out", str(out), "--no-progress", "--plotlyjs", mode]) == 0
    page = out / "report.html"
    text = page.read_text()
    assert page.stat().st_size < 1_000_000
    assert (out / PLOTLYJS_FILE).is_file() == (mode == "file")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoint", "report.html", "scores"] + ([PLOTLYJS_FILE] if mode == "file" else [])
    )
    specs = figure_specs(text)
    assert "fig-attention-on-images" in specs and "fig-layer-totals" in specs
    assert all((s["layout"].get("width") or 0) <= MAX_FIGURE_WIDTH for s in specs.values())
    assert links(text) == set()  # the only page of its folder
    assert "vh-lens scan" in text  # the run's settings (the scores' metadata)
