"""Plots of functional heads (paper B): probe scores per head, heads per layer, overlap, interventions.

The probe plots take a :class:`~vh_lens.functional_heads.probes.ProbeResult`, the intervention
plot a :class:`~vh_lens.functional_heads.report.FunctionInterventionReport`; all return a
``plotly.graph_objects.Figure`` and none shows it. ``selection`` keyword arguments (``k``,
``method``, ``metric``, ``source``) are those of :meth:`ProbeResult.functional_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from vh_lens.functional_heads.probes import ProbeResult
from vh_lens.functional_heads.report import FunctionInterventionReport
from vh_lens.functional_heads.selection import elbow_index

__all__ = [
    "plot_function_head_maps",
    "plot_function_interventions",
    "plot_function_overlap",
    "plot_heads_per_layer",
    "plot_sorted_scores",
]

_METRIC_LABELS = {"accuracy": "held-out accuracy", "balanced_accuracy": "held-out balanced accuracy"}


def _functions(result: ProbeResult, functions: Sequence[str] | None) -> list[str]:
    chosen = list(result.functions if functions is None else functions)
    unknown = [f for f in chosen if f not in result.functions]
    if unknown or not chosen:
        raise ValueError(f"unknown or no functions {unknown}; known: {list(result.functions)}")
    return chosen


def plot_function_head_maps(
    result: ProbeResult,
    functions: Sequence[str] | None = None,
    *,
    metric: str = "balanced_accuracy",
    source: str | None = None,
    mark_selected: bool = True,
    columns: int = 4,
    title: str | None = None,
    **selection: Any,
) -> go.Figure:
    """One layer x head heatmap of probe scores per function (facets), selected heads marked.

    Args:
        result: The probe result.
        functions: Which functions, in order (default: all).
        metric: ``"balanced_accuracy"`` or ``"accuracy"``.
        source: ``"ovr"`` or ``"multiclass"`` (default: ovr when fit).
        mark_selected: Overlay a marker on each function's selected heads.
        columns: Facets per row.
        title: Figure title.
        **selection: ``k`` / ``method`` for :meth:`ProbeResult.functional_heads`.

    Returns:
        A figure with one ``go.Heatmap`` per function (``z`` is ``[n_layers, n_heads]``, one
        shared colour scale) and, with ``mark_selected``, one ``go.Scatter`` per function.

    Example:
        >>> fig = plot_function_head_maps(result, k=10)   # doctest: +SKIP
    """
    names = _functions(result, functions)
    cols = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=names,
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        vertical_spacing=0.08,
    )
    tables = {f: result.scores(f, metric, source) for f in names}  # type: ignore[arg-type]
    zmin = min(float(t.min()) for t in tables.values())
    zmax = max(float(t.max()) for t in tables.values())
    label = _METRIC_LABELS.get(metric, metric)
    for i, f in enumerate(names):
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(
            go.Heatmap(
                z=tables[f].numpy(),
                x=np.arange(result.n_heads),
                y=np.arange(result.n_layers),
                zmin=zmin,
                zmax=zmax,
                colorscale="Viridis",
                showscale=i == 0,
                name=f,
                colorbar={"title": {"text": label}},
                hovertemplate=f"{f}<br>layer %{{y}}, head %{{x}}<br>{label} %{{z:.3f}}<extra></extra>",
            ),
            row=row,
            col=col,
        )
        if mark_selected:
            heads = result.functional_heads(f, metric=metric, source=source, **selection)  # type: ignore[arg-type]
            fig.add_trace(
                go.Scatter(
                    x=[h for _, h in heads],
                    y=[layer for layer, _ in heads],
                    mode="markers",
                    marker={"symbol": "circle-open", "color": "red", "size": 8},
                    name=f"{f} (selected)",
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=row,
                col=col,
            )
    fig.update_xaxes(title_text="head", row=rows)
    fig.update_yaxes(title_text="layer", col=1)
    fig.update_layout(title=title or f"Probe {label} per head and function", height=max(300, 260 * rows))
    return fig


def plot_heads_per_layer(
    result: ProbeResult,
    functions: Sequence[str] | None = None,
    *,
    normalize: bool = False,
    title: str | None = None,
    **selection: Any,
) -> go.Figure:
    """Number of each function's selected heads in each layer (grouped bars).

    Args:
        result: The probe result.
        functions: Which functions (default: all).
        normalize: Show the fraction of the function's heads in each layer instead of counts.
        title: Figure title.
        **selection: ``k`` / ``method`` / ``metric`` / ``source`` for the selection.

    Returns:
        A figure with one ``go.Bar`` per function, ``x`` the layer.
    """
    fig = go.Figure()
    for f in _functions(result, functions):
        counts = result.layer_distribution(f, **selection).float()
        y = counts / counts.sum().clamp_min(1) if normalize else counts
        fig.add_trace(go.Bar(x=np.arange(result.n_layers), y=y.numpy(), name=f))
    fig.update_layout(
        barmode="group",
        title=title or "Functional heads per layer",
        xaxis_title="layer",
        yaxis_title="fraction of the function's heads" if normalize else "heads",
    )
    return fig


def plot_function_overlap(result: ProbeResult, *, title: str | None = None, **selection: Any) -> go.Figure:
    """Heatmap of the Jaccard overlap of the functions' head sets, values written in the cells.

    Returns:
        A figure with one ``go.Heatmap`` whose ``z`` is ``[n_functions, n_functions]``.
    """
    jaccard = result.overlap(**selection).numpy()
    names = list(result.functions)
    fig = go.Figure(
        go.Heatmap(
            z=jaccard,
            x=names,
            y=names,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            text=np.round(jaccard, 2),
            texttemplate="%{text}",
            colorbar={"title": {"text": "Jaccard"}},
            hovertemplate="%{y} / %{x}<br>Jaccard %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=title or "Overlap of functional heads (Jaccard)", yaxis_autorange="reversed")
    return fig


def plot_sorted_scores(
    result: ProbeResult,
    function: str,
    *,
    metric: str = "balanced_accuracy",
    source: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """A function's head scores sorted in decreasing order, with the elbow marked.

    Returns:
        A figure with the curve (``go.Scatter``) and a vertical line at the elbow index (the
        number of heads the elbow selects).
    """
    curve = torch.sort(result.scores(function, metric, source).flatten(), descending=True).values  # type: ignore[arg-type]
    elbow = elbow_index(curve)
    fig = go.Figure(
        go.Scatter(x=np.arange(curve.numel()), y=curve.numpy(), mode="lines+markers", name=function, marker={"size": 4})
    )
    fig.add_vline(x=elbow, line_dash="dash", annotation_text=f"elbow: {max(elbow, 1)} heads")
    fig.update_layout(
        title=title or f"{function}: sorted head scores",
        xaxis_title="rank",
        yaxis_title=_METRIC_LABELS.get(metric, metric),
    )
    return fig


# --- interventions -------------------------------------------------------------------------

_SCOPE_TITLES = {"own": "the function's subquestions", "other": "other functions' subquestions",
                 "main": "main questions"}  # fmt: skip


def plot_function_interventions(
    report: FunctionInterventionReport,
    scopes: Sequence[str] = ("own", "other", "main"),
    *,
    title: str | None = None,
) -> go.Figure:
    """Grouped bars per function: baseline, functional heads, random heads (mean, std error bars).

    Args:
        report: The report.
        scopes: Panels, from ``"own"`` (the function's subquestions), ``"other"`` (the other
            functions' subquestions) and ``"main"`` (main questions; left out when none).
        title: Figure title.

    Returns:
        A figure with one panel per scope, each with three ``go.Bar`` traces (``x``: functions,
        ``y``: accuracy).

    Example:
        >>> plot_function_interventions(report).write_html("interventions.html")  # doctest: +SKIP
    """
    scopes = [s for s in scopes if not (s == "main" and report.n_main == 0)]
    if not scopes or any(s not in _SCOPE_TITLES for s in scopes):
        raise ValueError(f"scopes must be some of {tuple(_SCOPE_TITLES)}, got {list(scopes)}")
    rows = report.to_rows()
    names = [r["function"] for r in rows]
    fig = make_subplots(rows=1, cols=len(scopes), subplot_titles=[_SCOPE_TITLES[s] for s in scopes], shared_yaxes=True)
    colours = {"baseline": "#7f7f7f", "functional": "#d62728", "random": "#1f77b4"}
    for col, scope in enumerate(scopes, start=1):
        bars = [
            ("baseline", [r[f"baseline_{scope}"] for r in rows], None),
            ("functional", [r[f"functional_{scope}"] for r in rows], None),
            ("random", [r[f"random_{scope}_mean"] for r in rows], [r[f"random_{scope}_std"] for r in rows]),
        ]
        for name, y, err in bars:
            label = {"baseline": "no intervention", "functional": "functional heads",
                     "random": "random heads (mean ± std)"}[name]  # fmt: skip
            fig.add_trace(
                go.Bar(x=names, y=y, name=label, legendgroup=name, showlegend=col == 1, marker_color=colours[name],
                       error_y=None if err is None else {"type": "data", "array": err, "visible": True},
                       hovertemplate=f"%{{x}}<br>{label}: %{{y:.3f}}<extra></extra>"),
                row=1, col=col,
            )  # fmt: skip
    fig.update_yaxes(title_text="accuracy", range=[0, 1], col=1)
    what = f"{report.mode} ({report.method}{'' if report.alpha is None else f', alpha={report.alpha:g}'})"
    fig.update_layout(barmode="group", title=title or f"Functional heads vs random heads: {what}",
                      height=420, width=max(700, 120 * len(names) * len(scopes)))  # fmt: skip
    return fig
