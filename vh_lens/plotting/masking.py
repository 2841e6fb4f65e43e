"""Plots of a :class:`~vh_lens.visual_heads.masking.MaskingResult`. They return a ``go.Figure`` and never show it."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vh_lens.visual_heads.masking import MaskingResult

__all__ = ["plot_masking_curves"]

_TOP = "#d62728"
_RANDOM = "#1f77b4"
_BAND = "rgba(31, 119, 180, 0.2)"


def plot_masking_curves(result: MaskingResult, *, percent: bool = True, title: str | None = None) -> go.Figure:
    """Accuracy against the number of removed heads, one panel per stage.

    Each panel shows the accuracy with the stage's top-k heads removed, with k random heads
    of the stage removed (mean over seeds, with a ± std band), and the unmasked accuracy as a
    dashed line. Capped ``k`` values (more than the stage's heads) collapse to one point at the
    number of heads actually removed.

    Args:
        result: a head-masking result.
        percent: accuracy in percent (else as a fraction).
        title: figure title.

    Example:
        >>> fig = plot_masking_curves(masking_experiment(model, samples, scores))  # doctest: +SKIP
        >>> fig.write_html("masking.html")  # doctest: +SKIP
    """
    stages = result.stages
    if not stages:
        raise ValueError("the masking result has no rows to plot")
    scale = 100.0 if percent else 1.0
    fig = make_subplots(rows=1, cols=len(stages), shared_yaxes=True, subplot_titles=[f"{s} layers" for s in stages])
    for col, stage in enumerate(stages, start=1):
        curve = result.curve(stage)
        ks = curve["k"]
        top = [scale * v for v in curve["top"]]
        mean = [scale * v for v in curve["random_mean"]]
        std = [scale * v if not math.isnan(v) else math.nan for v in curve["random_std"]]
        first = col == 1
        fig.add_trace(
            go.Scatter(x=ks, y=[m + s for m, s in zip(mean, std)], mode="lines", line={"width": 0},
                       showlegend=False, hoverinfo="skip", legendgroup="random"),
            row=1, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=ks, y=[m - s for m, s in zip(mean, std)], mode="lines", line={"width": 0},
                       fill="tonexty", fillcolor=_BAND, name="random ± std", showlegend=first,
                       legendgroup="band", hoverinfo="skip"),
            row=1, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=ks, y=mean, mode="lines+markers", name=f"random k heads ({len(result.seeds)} seeds)",
                       line={"color": _RANDOM}, showlegend=first, legendgroup="random"),
            row=1, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=ks, y=top, mode="lines+markers", name="top-k heads", line={"color": _TOP},
                       showlegend=first, legendgroup="top"),
            row=1, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[min(ks), max(ks)], y=[scale * result.baseline] * 2, mode="lines", name="unmasked",
                       line={"color": "grey", "dash": "dash"}, showlegend=first, legendgroup="baseline"),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(title_text="heads removed (k)", row=1, col=col)
    fig.update_yaxes(title_text="accuracy (%)" if percent else "accuracy", row=1, col=1)
    fig.update_layout(
        title=title
        or f"Head masking ({result.method} ablation, heads ranked by {result.metric}; n={result.n_samples})",
        template="plotly_white",
    )
    return fig
