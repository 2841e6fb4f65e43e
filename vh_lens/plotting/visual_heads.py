"""Plots of visual-head scores (paper A).

All functions return a ``plotly.graph_objects.Figure`` and never show it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from PIL import Image
from plotly.subplots import make_subplots
from torch import Tensor

from vh_lens.core.layout import ImageGrid, TokenLayout
from vh_lens.data.sample import load_rgb
from vh_lens.visual_heads.scores import STAGES, VisualHeadScores, check_metric, stage_layers

_LABELS = {
    "image_weight": "image weight",
    "region_weight": "region weight",
    "text_weight": "text weight",
    "concentration": "concentration",
    "detection": "detection score",
}


def plot_head_heatmap(
    scores: VisualHeadScores, metric: str = "detection", *, statistic: str = "mean", title: str | None = None
) -> go.Figure:
    """Heatmap of one metric over layers (rows) and heads (columns).

    Args:
        scores: the scores.
        metric: one of :data:`vh_lens.visual_heads.scores.METRICS`.
        statistic: ``"mean"`` or ``"std"`` over samples.
        title: figure title (default: the metric's name).

    Returns:
        A figure with one ``go.Heatmap`` whose ``z`` is ``[n_layers, n_heads]``.

    Example:
        >>> fig = plot_head_heatmap(scores, "concentration")      # doctest: +SKIP
    """
    metric = check_metric(metric)
    if statistic == "mean":
        z = scores.mean[metric]
    elif statistic == "std":
        z = scores.std(metric)
    else:
        raise ValueError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    label = _LABELS[metric] + ("" if statistic == "mean" else " (std)")
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=np.arange(scores.n_heads),
            y=np.arange(scores.n_layers),
            colorscale="Viridis",
            colorbar={"title": {"text": label}},
            hovertemplate="layer %{y}, head %{x}<br>" + label + " %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(title=title or f"{label} per head (n={scores.count})", xaxis_title="head", yaxis_title="layer")
    return fig


def plot_weight_vs_concentration(
    scores: VisualHeadScores, *, weight: str = "image_weight", title: str | None = None
) -> go.Figure:
    """One point per head: mean attention weight against mean concentration (paper A, Fig. 1).

    Args:
        scores: the scores.
        weight: ``"image_weight"`` (default), ``"region_weight"`` or ``"text_weight"``.
        title: figure title.

    Returns:
        A figure with one ``go.Scatter`` of ``n_layers * n_heads`` points (layer-major order),
        ``x`` the weight, ``y`` the concentration, coloured by layer.
    """
    if weight not in ("image_weight", "region_weight", "text_weight"):
        raise ValueError(f"weight must be image_weight, region_weight or text_weight, got {weight!r}")
    layers = np.repeat(np.arange(scores.n_layers), scores.n_heads)
    heads = np.tile(np.arange(scores.n_heads), scores.n_layers)
    fig = go.Figure(
        go.Scatter(
            x=scores.mean[weight].flatten().numpy(),
            y=scores.concentration.flatten().numpy(),
            mode="markers",
            marker={
                "color": layers,
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "layer"}},
            },
            customdata=np.stack([layers, heads], axis=1),
            hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>"
            + _LABELS[weight]
            + " %{x:.4g}<br>concentration %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{_LABELS[weight]} vs concentration (one point per head, n={scores.count})",
        xaxis_title=_LABELS[weight],
        yaxis_title="concentration",
    )
    return fig


def plot_layer_totals(
    scores: VisualHeadScores,
    metrics: Sequence[str] = ("image_weight", "region_weight", "detection"),
    *,
    normalize: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Per-layer sum over heads of each metric's mean, one line per metric.

    Dotted vertical lines mark the stage boundaries (:func:`vh_lens.visual_heads.scores.stage_layers`),
    and each stage is named above its layers.

    Args:
        scores: the scores.
        metrics: metrics to draw.
        normalize: divide each line by its total (the per-layer distribution that
            :func:`vh_lens.visual_heads.scores.emd_layers` compares).
        title: figure title.

    Returns:
        A figure with one ``go.Scatter`` per metric, ``y`` of length ``n_layers``.
    """
    fig = go.Figure()
    layers = np.arange(scores.n_layers)
    for metric in metrics:
        totals = scores.mean[check_metric(metric)].sum(dim=1)
        if normalize:
            total = float(totals.sum())
            totals = totals / total if total != 0 else totals
        fig.add_trace(go.Scatter(x=layers, y=totals.numpy(), mode="lines+markers", name=_LABELS[metric]))
    for stage in STAGES[1:]:
        span = stage_layers(stage, scores.n_layers)  # type: ignore[arg-type]
        if len(span):
            fig.add_vline(x=span.start - 0.5, line_dash="dot", line_color="grey")
    for stage in STAGES:
        span = stage_layers(stage, scores.n_layers)  # type: ignore[arg-type]
        if len(span):
            fig.add_annotation(x=(span.start + span.stop - 1) / 2, y=1.0, yref="paper", yanchor="bottom",
                               text=f"{stage} (layers {span.start}-{span.stop - 1})", showarrow=False,
                               font={"color": "grey"})  # fmt: skip
    fig.update_layout(
        title=title or ("per-layer distribution" if normalize else "per-layer totals over heads"),
        xaxis_title="layer",
        yaxis_title="share of total" if normalize else "sum over heads of the mean",
    )
    return fig


# --------------------------------------------------------------------------------------------
# Attention over the image


def _axis_cells(starts: Tensor, ends: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """For each pixel centre, the index of the cell span containing it and whether one does."""
    inside = (centres[None, :] >= starts[:, None]) & (centres[None, :] < ends[:, None])  # [cells, pixels]
    return inside.to(torch.uint8).argmax(dim=0), inside.any(dim=0)


def _resolve_grid(grid: ImageGrid | TokenLayout, grid_name: str) -> ImageGrid:
    if isinstance(grid, TokenLayout):
        return grid.grid(grid_name)
    if isinstance(grid, ImageGrid):
        return grid
    raise TypeError(f"grid must be an ImageGrid or a TokenLayout, got {type(grid).__name__}")


def plot_head_attention_on_image(
    image: Image.Image | str | os.PathLike[str],
    grid: ImageGrid | TokenLayout,
    rows: Float[Tensor, "n_heads key"] | Float[Tensor, " key"],
    *,
    labels: Sequence[str] | None = None,
    grid_name: str = "base",
    normalize: bool = False,
    opacity: float = 0.6,
    max_side: int = 336,
    title: str | None = None,
) -> go.Figure:
    """Overlay chosen heads' attention on the image patches, one panel per head.

    Each image token's attention is painted over the part of the original image its patch
    covers (the grid's ``cell_boxes``, so crops and padding are drawn where they really are).

    Args:
        image: the original image (PIL or a path).
        grid: an :class:`~vh_lens.core.layout.ImageGrid`, or a sample's
            :class:`~vh_lens.core.layout.TokenLayout` (then ``grid_name`` picks the grid).
        rows: ``[n_heads, key]`` attention rows at the query position (post-softmax) over the
            sequence, one per chosen head (e.g. ``pattern[b, h, q]`` for a few ``h``), or one
            ``[key]`` row.
        labels: a title per head, e.g. ``"L12H5"``.
        grid_name: which grid of a layout (``"base"`` or ``"tiles"``).
        normalize: divide each head's values by their sum over the grid (share of the head's
            image attention) instead of the raw attention weight.
        opacity: heatmap opacity over the image.
        max_side: the image is drawn downscaled so that its longer side is at most this.
        title: figure title.

    Returns:
        A figure with, per head, a ``go.Image`` and a ``go.Heatmap`` (``z`` ``[H', W']``, NaN
        where no patch covers the image).

    Example:
        >>> rows = cache["pattern", 12][0, [5, 9], q]               # doctest: +SKIP
        >>> fig = plot_head_attention_on_image(img, batch.layout[0], rows, labels=["L12H5", "L12H9"])  # doctest: +SKIP
    """
    pil = load_rgb(image)
    if pil is None:
        raise ValueError("plot_head_attention_on_image needs an image")
    g = _resolve_grid(grid, grid_name)
    if isinstance(grid, TokenLayout) and grid.image_size is not None and tuple(grid.image_size) != pil.size:
        raise ValueError(f"image is {pil.size[0]}x{pil.size[1]} but the layout's image is {grid.image_size}")
    rows = torch.as_tensor(rows).detach().cpu().to(torch.float64)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2:
        raise ValueError(f"rows must be [n_heads, key] or [key], got shape {tuple(rows.shape)}")
    if int(g.positions.max()) >= rows.shape[1]:
        raise ValueError(f"rows have {rows.shape[1]} key positions; the grid reaches position {int(g.positions.max())}")
    n = rows.shape[0]
    labels = list(labels) if labels is not None else [f"head {i}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} rows")

    values = rows[:, g.positions]  # [n, grid_rows, grid_cols]
    if normalize:
        values = values / values.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    boxes = g.cell_boxes.to(torch.float64)
    if not (
        torch.equal(boxes[..., 0], boxes[:1, :, 0].expand_as(boxes[..., 0]))
        and torch.equal(boxes[..., 2], boxes[:1, :, 2].expand_as(boxes[..., 2]))
        and torch.equal(boxes[..., 1], boxes[:, :1, 1].expand_as(boxes[..., 1]))
        and torch.equal(boxes[..., 3], boxes[:, :1, 3].expand_as(boxes[..., 3]))
    ):
        raise ValueError("the grid's cell boxes do not form an axis-aligned lattice")
    width, height = pil.size
    scale = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * (width / w)
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * (height / h)
    col, has_col = _axis_cells(boxes[0, :, 0], boxes[0, :, 2], xs)
    row, has_row = _axis_cells(boxes[:, 0, 1], boxes[:, 0, 3], ys)
    canvas = values[:, row][:, :, col]  # [n, h, w]
    canvas = torch.where(has_row[:, None] & has_col[None, :], canvas, torch.full_like(canvas, float("nan")))
    zmax = float(values.max()) if float(values.max()) > 0 else 1.0

    picture = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    fig = make_subplots(rows=1, cols=n, subplot_titles=labels, horizontal_spacing=0.02)
    for i in range(n):
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=1, col=i + 1)
        fig.add_trace(
            go.Heatmap(
                z=canvas[i].numpy(),
                opacity=opacity,
                zmin=0.0,
                zmax=zmax,
                colorscale="Inferno",
                showscale=i == 0,
                colorbar={"title": {"text": "share" if normalize else "attention"}},
                hovertemplate="%{z:.4g}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_yaxes(
            autorange="reversed", scaleanchor="x" if i == 0 else f"x{i + 1}", showticklabels=False, row=1, col=i + 1
        )
        fig.update_xaxes(showticklabels=False, row=1, col=i + 1)
    fig.update_layout(
        title=title or "attention of chosen heads over the image patches", height=360, width=max(360, 300 * n)
    )
    return fig
