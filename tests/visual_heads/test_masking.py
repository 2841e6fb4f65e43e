"""Tests of vh_lens.visual_heads.masking and its plot: the head-masking table on a tiny model."""

from __future__ import annotations

import csv
import io
import math

import plotly.graph_objects as go
import pytest
import torch
from conftest import striped_image, tiny_lens

from vh_lens.analysis.interventions import ablate_heads
from vh_lens.data.sample import Sample
from vh_lens.evaluation.scoring import evaluate
from vh_lens.plotting.masking import plot_masking_curves
from vh_lens.visual_heads import masking
from vh_lens.visual_heads.masking import MaskingResult, MaskingRow, masking_experiment
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

# The tiny model has 2 layers of 4 heads: early = layer 0, mid = layer 1, late = no layers.
DETECTION = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.6, 0.4]], dtype=torch.float64)


def fake_scores(detection: torch.Tensor = DETECTION) -> VisualHeadScores:
    mean = {m: torch.zeros_like(detection) for m in METRICS} | {"detection": detection}
    return VisualHeadScores(mean=mean, variance={m: torch.zeros_like(detection) for m in METRICS}, count=1)


def _questions() -> list[Sample]:
    colors = ("red", "green", "blue", "one")
    return [
        Sample(striped_image((40 + 7 * i, 60 - 5 * i), i), q, answer="A", choices=colors)
        for i, q in enumerate(["what color is the dog", "what color is the cat", "how many dogs", "what is this"])
    ]


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    """Samples whose gold answers are the unmasked model's own answers: baseline accuracy 1."""
    model = tiny_lens()
    raw = _questions()
    preds = evaluate(model, raw, progress=False).predictions
    return [Sample(s.image, s.question, answer=p.letter, choices=s.choices) for s, p in zip(raw, preds)]


@pytest.fixture(scope="module")
def spied(samples):
    """A masking run with ablate_heads spied on: (result, [(heads, method) per call])."""
    calls = []
    original = masking.ablate_heads

    def spy(heads, method, **kw):
        calls.append((list(heads), method))
        return original(heads, method, **kw)

    masking.ablate_heads = spy
    try:
        result = masking_experiment(
            tiny_lens(), samples, fake_scores(), ks=(1, 2, 8), stages=("early", "mid", "late"),
            control_seeds=(0, 1), progress=False,
        )  # fmt: skip
    finally:
        masking.ablate_heads = original
    return result, calls


def test_table_shape_and_capping(spied) -> None:
    result, _ = spied
    assert result.baseline == 1.0
    assert result.stages == ("early", "mid")
    assert result.metadata["skipped_stages"] == ["late"]
    assert [(r.stage, r.k, r.k_used) for r in result.rows] == [
        ("early", 1, 1), ("early", 2, 2), ("early", 8, 4), ("mid", 1, 1), ("mid", 2, 2), ("mid", 8, 4),
    ]  # fmt: skip
    for r in result.rows:
        assert r.n_stage_heads == 4
        assert r.top_drop == pytest.approx(1.0 - r.top_acc)
        if r.k_used == 4:  # no heads left outside the top 4 for a control
            assert r.random_accs == () and math.isnan(r.random_mean)
        else:
            assert len(r.random_accs) == 2
            assert r.random_mean == pytest.approx(sum(r.random_accs) / 2)
            assert r.random_std == pytest.approx(abs(r.random_accs[0] - r.random_accs[1]) / 2)


def test_top_heads_really_removed(spied, samples) -> None:
    result, calls = spied
    assert result.row("early", 2).top_heads == ((0, 1), (0, 3))
    assert result.row("mid", 1).top_heads == ((1, 0),)
    assert result.row("mid", 8).top_heads == ((1, 0), (1, 2), (1, 3), (1, 1))
    removed = [heads for heads, _ in calls]
    # One ablation per distinct head set: 2 stages x (k_used 1 and 2: top + 2 seeds; k_used 4: top).
    assert len(calls) == 14 and all(method == "zero" for _, method in calls)
    model = tiny_lens()
    for r in result.rows:
        assert list(r.top_heads) in removed
        for heads in r.random_heads:
            assert list(heads) in removed
            assert not set(heads) & set(r.top_heads)
            assert {layer for layer, _ in heads} == {0 if r.stage == "early" else 1}
        # The table's accuracy is exactly that of evaluate() with the same heads ablated.
        direct = evaluate(model, samples, fwd_hooks=ablate_heads(r.top_heads), progress=False)
        assert r.top_acc == direct.accuracy
    # Removing every head of a stage changes answers of a random model.
    assert min(r.top_acc for r in result.rows) < 1.0


def test_random_controls_follow_scores_random_heads(spied) -> None:
    result, _ = spied
    scores = fake_scores()
    r = result.row("mid", 2)
    expected = tuple(tuple(scores.random_heads(2, "mid", seed=s, exclude_top=list(r.top_heads))) for s in (0, 1))
    assert r.random_heads == expected


def test_markdown_and_csv_round_trip(spied, tmp_path) -> None:
    result, _ = spied
    md = result.to_markdown()
    lines = md.strip().splitlines()
    assert lines[0].startswith("Unmasked accuracy: 100.0% (n=4)")
    table = lines[2:]
    assert table[0] == "| stage | k=1 | k=2 | k=8 |"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["early", "mid"]
    cells = [c.strip() for c in table[2].split("|")[2:-1]]
    r = result.row("early", 1)
    assert cells[0] == f"{100 * r.top_acc:.1f} / {100 * r.random_mean:.1f} ± {100 * r.random_std:.1f}"
    assert cells[2].endswith("/ – [4]")

    text = result.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(result.rows)
    for parsed, row in zip(rows, result.rows):
        assert (parsed["stage"], int(parsed["k"]), int(parsed["k_used"])) == (row.stage, row.k, row.k_used)
        assert float(parsed["top_acc"]) == row.top_acc
        assert float(parsed["baseline_acc"]) == row.baseline_acc
        accs = tuple(float(a) for a in parsed["random_accs"].split(";") if a)
        assert accs == row.random_accs
        heads = tuple(tuple(int(v) for v in h.split(".")) for h in parsed["top_heads"].split(";"))
        assert heads == row.top_heads

    folder = result.save(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["masking.csv", "masking.json", "masking.md"]
    loaded = MaskingResult.load(folder)
    assert loaded.to_markdown() == md and loaded.to_csv() == text
    assert [r.random_heads for r in loaded.rows] == [r.random_heads for r in result.rows]
    assert loaded.metadata == result.metadata and loaded.seeds == (0, 1)


def test_plot_masking_curves(spied) -> None:
    result, _ = spied
    fig = plot_masking_curves(result)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 5 * 2  # band (2), random, top, baseline per stage
    tops = [t for t in fig.data if t.name == "top-k heads"]
    assert list(tops[1].x) == [1.0, 2.0, 4.0]
    assert list(tops[1].y) == pytest.approx([100 * result.row("mid", k).top_acc for k in (1, 2, 8)])


@pytest.mark.parametrize("method", ["mean", "uniform"])
def test_other_ablation_methods_run(samples, method) -> None:
    result = masking_experiment(
        tiny_lens(), samples[:2], fake_scores(), ks=(4,), stages=("mid",), control_seeds=(), method=method,
        progress=False,
    )  # fmt: skip
    (row,) = result.rows
    assert row.method == method and row.random_accs == ()
    if method == "mean":
        assert result.metadata["means"].startswith("HeadMeans")


def test_bad_options() -> None:
    model, samples = tiny_lens(), _questions()[:1]
    with pytest.raises(ValueError, match="layers x"):
        masking_experiment(model, samples, fake_scores(torch.zeros(3, 4)), progress=False)
    with pytest.raises(ValueError, match="ks"):
        masking_experiment(model, samples, fake_scores(), ks=(0,), progress=False)
    with pytest.raises(ValueError, match="stages"):
        masking_experiment(model, samples, fake_scores(), stages=("middle",), progress=False)
    with pytest.raises(ValueError, match="method"):
        masking_experiment(model, samples, fake_scores(), method="scramble", progress=False)
    with pytest.raises(ValueError, match="none of the stages"):
        masking_experiment(model, samples, fake_scores(), stages=("late",), progress=False)
    with pytest.raises(ValueError, match="k_used"):
        MaskingRow("early", 4, 3, 4, "zero", "detection", 1.0, 0.5, (), ((0, 0),) * 3)
