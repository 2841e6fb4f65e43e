"""Tests of ``vh-lens probe`` on a tiny saved checkpoint and a CogQA-format file."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import tiny_pair
from test_functional import write_cogqa_file

from vh_lens.cli import main
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.functional_heads.probes import ProbeResult
from vh_lens.functional_heads.report import FunctionInterventionReport


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_probe")
    hf, processor = tiny_pair("llava", "llama")
    model_dir = root / "model"
    hf.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return {"model": model_dir, "data": write_cogqa_file(root / "cogqa.json", n_items=10), "root": root}


def _args(files, out, *extra: str) -> list[str]:
    return ["probe", "--model", str(files["model"]), "--data", str(files["data"]), "--out", str(out),
            "--no-progress", "--batch-size", "8", *extra]  # fmt: skip


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_probe_command_writes_probes_tables_report_and_interventions(files, capsys) -> None:
    out = files["root"] / "out"
    code = main(_args(files, out, "--k", "2", "--intervene", "remove", "--seeds", "0", "--max-new-tokens", "2",
                      "--save-activations", "--limit", "8"))  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "activations", "functional_heads.csv", "head_scores.csv", "heads_per_layer.csv", "interventions",
        "overlap.csv", "plotly.min.js", "probe", "report.html", "run.json", "sparsity.csv", "summary.md",
    ]  # fmt: skip
    result = ProbeResult.load(out / "probe")
    assert set(result.functions) == {"Retrieval", "Math Calculation", "Inference"}
    assert (result.n_layers, result.n_heads) == (2, 4) and result.multiclass_accuracy is not None
    acts = HeadActivations.load(out / "activations")
    assert acts.n_samples == 8 * 3 and acts.metadata["position"] == "last_prompt"

    with open(out / "functional_heads.csv") as fh:
        top = list(csv.DictReader(fh))
    assert len(top) == 2 * len(result.functions)
    for f in result.functions:
        heads = [(int(r["layer"]), int(r["head"])) for r in top if r["function"] == f]
        assert heads == result.functional_heads(f, k=2)
    with open(out / "sparsity.csv") as fh:
        sparsity = {r["function"]: r for r in csv.DictReader(fh)}
    for f in result.functions:
        assert float(sparsity[f]["best_balanced_accuracy"]) == pytest.approx(float(result.scores(f).max()))
        assert int(sparsity[f]["n_selected"]) == 2

    report = FunctionInterventionReport.load(out / "interventions")
    assert report.k == 2 and report.seeds == (0,) and report.n_main == 8
    assert len(report.runs) == 2 * len(result.functions)
    html = (out / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == 3 + len(result.functions) + 1
    info = json.loads((out / "run.json").read_text())
    assert info["n_items"] == 8 and info["n_subquestions"] == 24 and info["activations_streamed"]
    captured = capsys.readouterr()
    printed = captured.out
    assert "Held-out probe scores" in printed and "## Interventions" in printed
    assert _leftovers(files["root"]) == []
    # 8 items, 30% held out: every function has a handful of test items, and every page says so
    few = "fewer than 20 held-out subquestions for "
    assert len(info["warnings"]) == 1 and info["warnings"][0].startswith(few)
    assert f"vh-lens probe: warning: {few}" in captured.err
    summary = (out / "summary.md").read_text()
    assert f"**Warning:** {few}" in summary
    assert summary.index("**Warning:**") < summary.index("## Held-out probe scores")  # next to the numbers
    assert f"<b>Warning:</b> {few}" in html

    # a non-empty --out is refused
    assert main(_args(files, out)) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_probe_command_without_interventions_keeps_activations_in_memory(files) -> None:
    out = files["root"] / "plain"
    assert main(_args(files, out, "--mode", "ovr", "--context", "none", "--elbow")) == 0
    assert not (out / "activations").exists() and not (out / "interventions").exists()
    assert ProbeResult.load(out / "probe").multiclass_accuracy is None


def test_missing_data_file_fails_cleanly(files, capsys) -> None:
    out = files["root"] / "never" / "out"
    code = main(["probe", "--model", str(files["model"]), "--data", str(files["root"] / "nope.json"),
                 "--out", str(out)])  # fmt: skip
    assert code != 0
    assert "nope.json does not exist" in capsys.readouterr().err
    assert not (files["root"] / "never").exists()
    assert _leftovers(files["root"]) == []


def test_failure_during_the_run_leaves_no_output(files, capsys) -> None:
    out = files["root"] / "new" / "out"
    assert main(_args(files, out, "--functions", "Retrieval", "Vision")) == 1
    assert "Vision" in capsys.readouterr().err
    assert not (files["root"] / "new").exists()
    assert _leftovers(files["root"]) == []
