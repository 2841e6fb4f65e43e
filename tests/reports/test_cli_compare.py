"""``vh-lens scan --compare`` (the plain vs visual-prompt pair) and ``--lens`` (rank traces) on the
tiny checkpoint's files of ``tests/commands/test_cli_scan.py``; the folders side by side are linked."""

from __future__ import annotations

import re

import torch
from pagecheck import figure_specs, links
from test_cli_scan import files, one_thread  # noqa: F401  (fixtures)

from vh_lens.cli import main
from vh_lens.visual_heads.scores import VisualHeadScores


def _args(paths, out, *extra: str, data: str = "data", fmt: str = "jsonl") -> list[str]:
    return ["scan", "--model", str(paths["model"]), "--data", str(paths[data]), "--format", fmt,
            "--images", str(paths["images"]), "--out", str(out), "--batch-size", "2", "--no-progress",
            *extra]  # fmt: skip


def test_compare_and_lens_add_the_pair_and_rank_traces_to_the_report(files, tmp_path, capsys) -> None:  # noqa: F811
    runs = tmp_path / "runs"
    looktwice = {"data": "looktwice", "fmt": "looktwice"}
    assert main(_args(files, runs / "plain", "--question", "super", **looktwice)) == 0
    lens_args = ["lens", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "jsonl",
                 "--images", str(files["images"]), "--no-progress", "--out", str(runs / "lens")]  # fmt: skip
    assert main(lens_args) == 0
    args = _args(files, runs / "visual", "--question", "super", "--visual-prompt", "--compare", str(runs / "plain"),
                 "--lens", str(runs / "lens"), **looktwice)  # fmt: skip
    assert main(args) == 0
    plain, visual = VisualHeadScores.load(runs / "plain" / "scores"), VisualHeadScores.load(runs / "visual" / "scores")
    assert (plain.metadata["visual_prompt"], visual.metadata["visual_prompt"]) == (False, True)
    assert plain.metadata["question"] == visual.metadata["question"] == "super"
    text = (runs / "visual" / "report.html").read_text()
    specs = figure_specs(text)
    assert {"fig-prompt-comparison", "fig-lens-rank-final", "fig-lens-rank-answer"} <= set(specs)
    lines = specs["fig-prompt-comparison"]["data"][:2]
    for trace, scores in zip(lines, (plain, visual), strict=True):  # per-layer totals: plain first, then visual
        y = trace["y"]
        values = y if isinstance(y, list) else None
        if values is None:  # plotly's typed-array encoding
            import base64

            import numpy as np

            values = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64),
                                   scores.region_weight.sum(1).double(), atol=1e-6, rtol=0)  # fmt: skip
    assert "plain (n=5)" in lines[0]["name"] and "visual prompt (n=5)" in lines[1]["name"]
    # The three folders side by side: each page links the others, the parent's index lists them.
    assert links(text) == {"../index.html", "../plain/report.html", "../lens/lens.html"}
    index = (runs / "index.html").read_text()
    assert ["lens/lens.html", "plain/report.html", "visual/report.html"] == re.findall(r'<li><a href="([^"]+)">', index)
    assert "../visual/report.html" in links((runs / "plain" / "report.html").read_text())
    capsys.readouterr()


def test_compare_and_lens_are_refused_before_anything_is_written(files, tmp_path, capsys) -> None:  # noqa: F811
    looktwice = {"data": "looktwice", "fmt": "looktwice"}
    plain = tmp_path / "plain"
    assert main(_args(files, plain, "--question", "super", **looktwice)) == 0
    capsys.readouterr()
    out = tmp_path / "new" / "visual"
    cases = [
        (["--visual-prompt", "--compare", str(tmp_path / "nothing")], "--compare"),  # no scores there
        (["--compare", str(plain)], "neither of the scans has the visual prompt"),  # plain and plain
        (["--visual-prompt", "--question", "object", "--compare", str(plain)], "different question types"),
        (["--visual-prompt", "--limit", "3", "--compare", str(plain)], "different numbers of samples: 3 and 5"),
        (["--visual-prompt", "--lens", str(plain)], "--lens"),  # a scan folder is no lens result
    ]
    for extra, message in cases:
        base = ["--question", "super"] if "--question" not in extra else []
        assert main(_args(files, out, *base, *extra, **looktwice)) == 1, extra
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the line naming the model and data
        assert err.startswith("vh-lens scan: error:") and message in err, (extra, err)
        assert not (tmp_path / "new").exists(), extra
    other = tmp_path / "other_data"  # the same questions from another data file
    assert main(_args(files, other, "--visual-prompt", data="data", fmt="jsonl")) == 0
    capsys.readouterr()
    assert main(_args(files, out, "--compare", str(other), data="data", fmt="jsonl")) == 0  # jsonl pair: fine
    capsys.readouterr()
    assert main(_args(files, tmp_path / "new2", "--question", "super", "--visual-prompt", "--compare", str(other),
                      **looktwice)) == 1  # fmt: skip
    assert "different data files" in capsys.readouterr().err
