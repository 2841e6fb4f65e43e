"""Cross-function matrix: a planted hierarchy is recovered; the matrix saves, loads and plots."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch

from vh_lens.functional_heads.cross_function import CrossFunctionMatrix, cross_function_matrix, plot_cross_function
from vh_lens.functional_heads.interventions import FunctionInterventionReport, InterventionRun, random_heads

N_LAYERS, N_HEADS = 6, 8
# The planted circuit: perception heads feed reasoning heads, which feed the decision heads.
PLANTED = {"perception": [(0, 1), (1, 3), (1, 6)], "reasoning": [(3, 2), (3, 5)], "decision": [(5, 0)]}
NEEDS = {
    "perception": ["perception"],
    "reasoning": ["perception", "reasoning"],
    "decision": ["perception", "reasoning", "decision"],
}
SEEDS = (0, 1, 2, 3, 4)


def planted_accuracy(removed: set[tuple[int, int]]) -> dict[str, float]:
    """The planted model's accuracy per function: losing its own heads costs up to 0.5, its upstream heads up to 0.3."""
    out = {}
    for f, needs in NEEDS.items():
        own = PLANTED[f]
        upstream = [h for g in needs if g != f for h in PLANTED[g]]
        cost = 0.5 * sum(h in removed for h in own) / len(own)
        if upstream:
            cost += 0.3 * sum(h in removed for h in upstream) / len(upstream)
        out[f] = 0.9 - cost
    return out


def planted_report() -> FunctionInterventionReport:
    runs = []
    for f, heads in PLANTED.items():
        runs.append(InterventionRun(f, "functional", None, tuple(heads), planted_accuracy(set(heads))))
        for s in SEEDS:
            draw = random_heads(N_LAYERS, N_HEADS, len(heads), heads, s)
            runs.append(InterventionRun(f, "random", s, tuple(draw), planted_accuracy(set(draw))))
    return FunctionInterventionReport(functions=tuple(PLANTED), counts=dict.fromkeys(PLANTED, 50), n_main=0,
                                      baseline=planted_accuracy(set()), baseline_main=None, runs=tuple(runs),
                                      seeds=SEEDS)  # fmt: skip


def test_planted_hierarchy_is_recovered():
    m = cross_function_matrix(planted_report())
    e = m.effect
    idx = {f: i for i, f in enumerate(m.removed)}
    assert m.measured == m.removed == tuple(PLANTED)
    # removing upstream heads hurts downstream functions beyond random heads ...
    for up, down in [("perception", "reasoning"), ("perception", "decision"), ("reasoning", "decision")]:
        assert e[idx[up], idx[down]] > 0.1, (up, down)
        # ... and not the reverse (random draws may hit the upstream heads too: a small negative effect at most)
        assert e[idx[down], idx[up]] < 0.05, (down, up)
    for f in PLANTED:
        assert e[idx[f], idx[f]] > 0.2
    assert [f for f, _ in m.upstream_order()] == ["perception", "reasoning", "decision"]
    torch.testing.assert_close(
        m.functional[idx["perception"], idx["perception"]], torch.tensor(0.4, dtype=torch.float64)
    )
    torch.testing.assert_close(m.drop, m.baseline[None] - m.functional)


def test_random_controls_are_averaged_by_hand():
    report = planted_report()
    m = cross_function_matrix(report, measured=["decision"])
    draws = [planted_accuracy(set(r.heads))["decision"] for r in report.runs_of("reasoning", "random")]
    mean = sum(draws) / len(draws)
    assert math.isclose(float(m.random_mean[1, 0]), mean, abs_tol=1e-12)
    assert math.isclose(
        float(m.random_std[1, 0]), math.sqrt(sum((d - mean) ** 2 for d in draws) / len(draws)), abs_tol=1e-12
    )


def test_save_load_plot_and_refusals(tmp_path):
    m = cross_function_matrix(planted_report())
    back = CrossFunctionMatrix.load(m.save(tmp_path))
    for name in ("baseline", "functional", "random_mean", "random_std"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert (back.removed, back.n_heads, back.counts) == (m.removed, m.n_heads, m.counts)
    fig = plot_cross_function(m)
    assert isinstance(fig, go.Figure) and len(fig.data[0].z) == 3
    assert "+" in m.to_markdown()
    with pytest.raises(ValueError, match="value"):
        plot_cross_function(m, value="nope")
    with pytest.raises(ValueError, match="measured"):
        cross_function_matrix(planted_report(), measured=["nope"])
    emph = planted_report()
    object.__setattr__(emph, "mode", "emphasise")
    with pytest.raises(ValueError, match="mode"):
        cross_function_matrix(emph)
