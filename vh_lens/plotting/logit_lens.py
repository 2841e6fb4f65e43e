"""Plots of a :class:`~vh_lens.analysis.logit_lens.LogitLensResult`. Both return a ``go.Figure`` and never show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import plotly.graph_objects as go
import torch

from vh_lens.analysis.logit_lens import LogitLensResult

__all__ = ["plot_answer_prob_heatmap", "plot_rank_per_layer"]

Which = Literal["final", "answer"]
_NAMES = {"final": "final top-1 token", "answer": "gold answer"}


def _values(result: LogitLensResult, which: Which, kind: str) -> torch.Tensor:
    if which not in _NAMES:
        raise ValueError(f"which must be 'final' or 'answer', got {which!r}")
    if which == "answer" and not result.has_answers:
        raise ValueError("this result has no gold answers; pass answers to logit_lens or use which='final'")
    return getattr(result, f"{which}_{kind}")


def plot_rank_per_layer(
    result: LogitLensResult, which: Which = "final", *, log_y: bool = True, title: str | None = None
) -> go.Figure:
    """Rank of a token under each layer's lens: mean and median over samples, with the
    interquartile range as a band.

    Args:
        result: a logit-lens result.
        which: ``"final"`` (the model's own top-1 token) or ``"answer"`` (the gold answer).
        log_y: log-scaled rank axis (ranks are 1-based, so 1 is the bottom).
        title: figure title.

    Example:
        >>> fig = plot_rank_per_layer(logit_lens(model, batch), "final")  # doctest: +SKIP
    """
    rank = _values(result, which, "rank").double()  # [n_layers, n_samples]
    layers = list(range(result.n_layers))
    low, median, high = torch.quantile(rank, torch.tensor([0.25, 0.5, 0.75], dtype=rank.dtype), dim=1)
    fig = go.Figure(
        [
            go.Scatter(x=layers, y=high.tolist(), mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
            go.Scatter(
                x=layers,
                y=low.tolist(),
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(31, 119, 180, 0.2)",
                name="interquartile range",
            ),
            go.Scatter(x=layers, y=rank.mean(1).tolist(), mode="lines+markers", name="mean", line={"color": "#1f77b4"}),
            go.Scatter(
                x=layers, y=median.tolist(), mode="lines", name="median", line={"color": "#1f77b4", "dash": "dash"}
            ),
        ]
    )
    fig.update_layout(
        title=title or f"Logit lens: rank of the {_NAMES[which]} ({result.n_samples} samples)",
        xaxis_title="layer (residual stream after the block)",
        yaxis_title="rank (1 = top)",
        template="plotly_white",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def plot_answer_prob_heatmap(
    result: LogitLensResult,
    which: Which = "answer",
    *,
    sample_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Probability of the gold answer (or the final token) per layer (rows) and sample (columns).

    Hovering a cell shows the lens's top token at that layer.

    Args:
        result: a logit-lens result.
        which: ``"answer"`` (default) or ``"final"``.
        sample_labels: one label per sample for the x axis (default: the sample index).
        title: figure title.

    Example:
        >>> fig = plot_answer_prob_heatmap(logit_lens(model, batch, answers=["yes", "no"]))  # doctest: +SKIP
    """
    prob = _values(result, which, "prob")
    labels = [str(i) for i in range(result.n_samples)] if sample_labels is None else [str(s) for s in sample_labels]
    if len(labels) != result.n_samples:
        raise ValueError(f"need one sample label per sample ({result.n_samples}), got {len(labels)}")
    top1 = [[row[i][0] for i in range(result.n_samples)] for row in result.top_tokens]
    fig = go.Figure(
        go.Heatmap(
            z=prob.tolist(),
            x=labels,
            y=list(range(result.n_layers)),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": "probability"},
            customdata=top1,
            hovertemplate="sample %{x}<br>layer %{y}<br>p = %{z:.3f}<br>lens top-1: %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Logit lens: probability of the {_NAMES[which]}",
        xaxis_title="sample",
        yaxis_title="layer",
        xaxis={"type": "category"},
        template="plotly_white",
    )
    return fig
