"""Plots of patching results (:class:`vh_lens.patching.PatchingResult`).

Every function returns a ``plotly.graph_objects.Figure`` and never shows it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots

from vh_lens.data.sample import load_rgb
from vh_lens.patching.result import PatchingResult

_METRIC_LABELS = {"logit_diff": "logit difference", "logprob": "answer log-probability"}


def _zrange(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    top = float(finite.abs().max()) if finite.numel() else 0.0
    return top if top > 0 else 1.0


def plot_effect_heatmap(result: PatchingResult, *, title: str | None = None) -> go.Figure:
    """Heatmap of the normalised effect over layers (rows) and the result's index (columns).

    For a ``heads`` result the columns are heads (a layer x head map); for positions and
    regions, the image tokens or regions by label. Blue is restoring (positive), red negative.

    Returns:
        A figure with one ``go.Heatmap`` whose ``z`` is ``result.effect`` ``[n_layers, n_index]``.

    Example:
        >>> fig = plot_effect_heatmap(head_result)  # doctest: +SKIP
    """
    z = result.effect.double()
    top = _zrange(z)
    x = list(range(len(result.labels))) if result.grid == "heads" else list(result.labels)
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=x,
            y=list(result.layers),
            zmin=-top,
            zmax=top,
            colorscale="RdBu",
            colorbar={"title": {"text": "normalised effect"}},
            hovertemplate="layer %{y}, %{x}<br>effect %{z:.4g}<extra></extra>",
        )
    )
    kind = {"heads": "head", "positions": "image token", "regions": "region"}[result.grid]
    what = f"{result.method} patching of {result.activation}"
    fig.update_layout(
        title=title or f"{what}: effect on the {_METRIC_LABELS.get(result.metric, result.metric)} (1 = clean)",
        xaxis_title=kind,
        yaxis_title="layer",
        yaxis={"type": "category"} if len(result.layers) < 2 else {},
    )
    return fig


def _groups(result: PatchingResult) -> dict[str, list[int]]:
    """Indices to draw per panel: one panel per image grid (``base``, ``tiles``), or one for regions."""
    groups: dict[str, list[int]] = {}
    assert result.boxes is not None
    for j, label in enumerate(result.labels):
        if not bool(torch.isfinite(result.boxes[j]).all()):
            continue  # newline tokens, the "rest" region: no box of their own
        name = label.split(" ")[0] if result.grid == "positions" else "regions"
        groups.setdefault(name, []).append(j)
    return groups


def plot_effect_on_image(
    result: PatchingResult,
    image: Image.Image | str | os.PathLike[str],
    *,
    layer: int | None = None,
    opacity: float = 0.6,
    max_side: int = 336,
    title: str | None = None,
) -> go.Figure:
    """The per-position (or per-region) effect of one layer painted over the original image.

    Each image token's value covers the part of the original image its patch sees (the
    result's ``boxes``, taken from the layout's ``grids`` cell boxes: LLaVA-1.5's grid, or
    LLaVA-NeXT's base grid and high-resolution tiles in two panels), so crops and padding are
    drawn where they really are. Newline tokens and the ``rest`` region have no box and are
    not drawn.

    Args:
        result: a ``positions`` or ``regions`` result.
        image: the original image of sample 0 (the geometry the boxes come from).
        layer: the layer to draw (default: the result's first).
        opacity: heatmap opacity over the image.
        max_side: the image is drawn downscaled so that its longer side is at most this.
        title: figure title.

    Returns:
        A figure with, per panel, a ``go.Image`` and a ``go.Heatmap`` (``z`` ``[H', W']``,
        NaN where no token's box covers the pixel).

    Example:
        >>> fig = plot_effect_on_image(position_result, sample.load_image(), layer=0)  # doctest: +SKIP
    """
    if result.grid == "heads" or result.boxes is None:
        raise ValueError("plot_effect_on_image needs a positions or regions result (a heads result has no boxes)")
    pil = load_rgb(image)
    if pil is None:
        raise ValueError("plot_effect_on_image needs an image")
    if result.image_size is not None and tuple(result.image_size) != pil.size:
        raise ValueError(f"image is {pil.size[0]}x{pil.size[1]} but the result's image is {tuple(result.image_size)}")
    row = (result.effect[0] if layer is None else result.row(layer)).double()
    layer = result.layers[0] if layer is None else layer
    groups = _groups(result)
    if not groups:
        raise ValueError("no index of this result has a box to draw")
    width, height = pil.size
    scale = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * (width / w)
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * (height / h)
    boxes = result.boxes.double()
    top = _zrange(row)
    picture = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    names = list(groups)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names):
        canvas = torch.full((h, w), math.nan, dtype=torch.float64)
        for j in groups[name]:
            left, top_, right, bottom = boxes[j].tolist()
            inside = ((ys >= top_) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
            canvas[inside] = float(row[j])
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=1, col=i + 1)
        fig.add_trace(
            go.Heatmap(
                z=canvas.numpy(),
                opacity=opacity,
                zmin=-top,
                zmax=top,
                colorscale="RdBu",
                showscale=i == 0,
                colorbar={"title": {"text": "effect"}},
                hovertemplate="effect %{z:.4g}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_yaxes(
            autorange="reversed", scaleanchor="x" if i == 0 else f"x{i + 1}", showticklabels=False, row=1, col=i + 1
        )
        fig.update_xaxes(showticklabels=False, row=1, col=i + 1)
    fig.update_layout(
        title=title or f"{result.method} patching of {result.activation} at layer {layer}, per {result.grid[:-1]}",
        height=380,
        width=max(380, 320 * len(names)),
    )
    return fig


def plot_attribution_vs_activation(
    activation: PatchingResult, attribution: PatchingResult, *, title: str | None = None
) -> go.Figure:
    """Scatter of attribution estimates against real patching effects, one point per cell.

    Returns:
        A figure with one ``go.Scatter`` (x: activation patching, y: attribution patching)
        and the ``y = x`` line; the title gives their Pearson correlation.
    """
    if activation.effect.shape != attribution.effect.shape:
        raise ValueError("the two results differ in shape")
    x = activation.effect.double().flatten().numpy()
    y = attribution.effect.double().flatten().numpy()
    n = len(activation.labels)
    text = [f"layer {activation.layers[i // n]}, {activation.labels[i % n]}" for i in range(x.size)]
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=y,
                mode="markers",
                text=text,
                name="cells",
                hovertemplate="%{text}<br>patching %{x:.4g}<br>attribution %{y:.4g}<extra></extra>",
            ),
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"}, name="y = x"),
        ]
    )
    try:
        r = f"r = {activation.correlation(attribution):.3f}"
    except ValueError:
        r = "r undefined"
    fig.update_layout(
        title=title or f"attribution vs activation patching ({activation.grid}, {r})",
        xaxis_title="activation patching (normalised)",
        yaxis_title="attribution patching (normalised)",
    )
    return fig
