"""Tests of ``vh-lens mask`` and ``vh-lens lens`` on a tiny saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import striped_image

from vh_lens.analysis.logit_lens import LogitLensResult
from vh_lens.cli import main
from vh_lens.visual_heads.masking import MaskingResult
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint):
    """A saved tiny checkpoint, a JSON-lines benchmark with images, and saved head scores."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = tiny_checkpoint
    images = root / "images"
    images.mkdir()
    lines = []
    for i in range(3):
        striped_image((60 + 10 * i, 50), i).save(images / f"img{i}.png")
        lines.append({"image": f"img{i}.png", "question": "what color is the dog", "answer": "AB"[i % 2],
                      "choices": ["red", "blue"]})  # fmt: skip
    lines.append({"image": "img0.png", "question": "how many dogs are there", "answer": "2", "task": "count"})
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    detection = torch.arange(8, dtype=torch.float64).reshape(2, 4)
    scores = VisualHeadScores(
        mean={m: detection.clone() for m in METRICS}, variance={m: torch.zeros(2, 4) for m in METRICS}, count=4
    )
    scores_dir = scores.save(root / "scores")
    return {"model": model_dir, "data": data, "images": images, "scores": scores_dir, "root": root}


def _mask_args(files, out, **over) -> list[str]:
    opts = {
        "--model": files["model"], "--data": files["data"], "--format": "jsonl", "--images": files["images"],
        "--scores": files["scores"], "--out": out,
    } | over  # fmt: skip
    args = ["mask"]
    for key, value in opts.items():
        args += [key, str(value)]
    return args + ["--ks", "1", "2", "--stages", "early", "mid", "--seeds", "0", "1", "--batch-size", "2",
                   "--no-progress"]  # fmt: skip


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_mask_command_writes_table_and_plot(files, capsys) -> None:
    out = files["root"] / "mask_out"
    assert main(_mask_args(files, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "inputs.json",
        "masking.csv",
        "masking.html",
        "masking.json",
        "masking.md",
        "plotly.min.js",
    ]
    result = MaskingResult.load(out)
    assert [(r.stage, r.k) for r in result.rows] == [("early", 1), ("early", 2), ("mid", 1), ("mid", 2)]
    assert result.row("mid", 2).top_heads == ((1, 3), (1, 2))
    assert result.n_samples == 4 and result.seeds == (0, 1)
    assert "| stage | k=1 | k=2 |" in capsys.readouterr().out
    assert "plotly" in (out / "masking.html").read_text()[:5_000_000]
    assert _leftovers(files["root"]) == []

    # A non-empty --out is refused, then replaced with --overwrite.
    assert main(_mask_args(files, out)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*_mask_args(files, out), "--overwrite", "--method", "uniform"]) == 0
    assert MaskingResult.load(out).method == "uniform"
    assert _leftovers(files["root"]) == []


def test_lens_command_writes_result_and_plots(files, capsys) -> None:
    out = files["root"] / "lens_out"
    args = ["lens", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "jsonl",
            "--images", str(files["images"]), "--out", str(out), "--limit", "3", "--top-k", "3",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["inputs.json", "lens", "lens.html", "lens.md", "plotly.min.js"]
    result = LogitLensResult.load(out / "lens")
    assert (result.n_layers, result.n_samples, result.top_k) == (2, 3, 3)
    assert result.has_answers and list(result.answer_tokens) == ["A", "B", "A"]
    assert "answer_rank_mean" in capsys.readouterr().out
    assert _leftovers(files["root"]) == []


def test_missing_data_file_fails_cleanly(files, capsys) -> None:
    out = files["root"] / "never" / "out"
    code = main(_mask_args(files, out, **{"--data": files["root"] / "nope.jsonl"}))
    assert code != 0
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    assert not (files["root"] / "never").exists()
    code = main(["lens", "--model", str(files["model"]), "--data", str(files["root"] / "nope.jsonl"),
                 "--format", "jsonl", "--out", str(out)])  # fmt: skip
    assert code != 0 and "does not exist" in capsys.readouterr().err
    assert not (files["root"] / "never").exists()


def test_failure_during_the_run_leaves_no_output(files, capsys) -> None:
    bad = files["root"] / "bad_scores"
    VisualHeadScores(
        mean={m: torch.zeros(3, 4) for m in METRICS}, variance={m: torch.zeros(3, 4) for m in METRICS}, count=1
    ).save(bad)
    out = files["root"] / "new" / "out"
    assert main(_mask_args(files, out, **{"--scores": bad})) == 1
    assert "3 layers x 4 heads" in capsys.readouterr().err
    assert not (files["root"] / "new").exists()
    assert _leftovers(files["root"]) == []


def test_benchmark_formats_need_images(files, capsys) -> None:
    out = files["root"] / "pope_out"
    args = ["mask", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "pope",
            "--scores", str(files["scores"]), "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    assert "needs --images" in capsys.readouterr().err
    assert not out.exists()
