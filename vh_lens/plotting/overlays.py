"""Compact figures of chosen heads' attention over images, and the plain vs visual-prompt comparison.

:func:`plot_attention_overlays` draws a grid of panels, one row per sample (or per average
over samples) and one column per head: each panel is the image (embedded once as a PNG) with
the head's attention painted at the resolution of the image tokens (one heatmap cell per
patch), so a page with several samples stays small.

:func:`plot_prompt_comparison` compares two scans of the same model and data, without and with
the box drawn on the image (paper A's visual prompt).

All functions return a ``plotly.graph_objects.Figure`` and never show it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from PIL import Image
from plotly.subplots import make_subplots
from torch import Tensor

from vh_lens.visual_heads.scores import STAGES, VisualHeadScores, stage_layers

__all__ = ["OverlayRow", "image_data_uri", "plot_attention_overlays", "plot_prompt_comparison"]

_PANEL = 230
"""Side of one panel in pixels."""


@dataclass(frozen=True)
class OverlayRow:
    """One row of :func:`plot_attention_overlays`: values of each head over an image-token grid.

    Args:
        label: what the row shows, e.g. ``"sample 3 (object question)"`` or ``"mean over 16 samples"``.
        values: ``[n_heads, rows, cols]``, one value per image token of the grid.
        image: the picture behind the values (``None``: the values alone, in grid cells).
        cell_boxes: ``[rows, cols, 4]`` pixel boxes ``(left, top, right, bottom)`` of the cells
            in ``image`` (needed with ``image``; they must form an axis-aligned lattice).
        box: a box to outline, in ``image`` pixels.
        panel_labels: one short text per head (shown under the head's name).
        own_scale: colour this row on its own scale (0 to its maximum) instead of the
            figure's shared one; its label then says so.
    """

    label: str
    values: Float[Tensor, "n_heads rows cols"]
    image: Image.Image | None = None
    cell_boxes: Float[Tensor, "rows cols 4"] | None = None
    box: Sequence[float] | None = None
    panel_labels: Sequence[str] | None = None
    own_scale: bool = False


def image_data_uri(image: Image.Image, max_side: int = 224) -> tuple[str, int, int]:
    """``(uri, width, height)``: ``image`` downscaled to at most ``max_side`` as a PNG data URI."""
    pil = image.convert("RGB")
    scale = min(1.0, max_side / max(pil.size))
    w, h = max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))
    if (w, h) != pil.size:
        pil = pil.resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h


def _lattice(boxes: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges along x and y, and for each interval between edges the cell column/row (-1: none)."""
    b = boxes.to(torch.float64)
    columns_agree = all(torch.equal(b[..., i], b[:1, :, i].expand_as(b[..., i])) for i in (0, 2))
    rows_agree = all(torch.equal(b[..., i], b[:, :1, i].expand_as(b[..., i])) for i in (1, 3))
    if not (columns_agree and rows_agree):
        raise ValueError("the grid's cell boxes do not form an axis-aligned lattice")

    def axis(starts: Tensor, ends: Tensor) -> tuple[np.ndarray, np.ndarray]:
        edges = np.unique(np.concatenate([starts.numpy(), ends.numpy()]))
        mids = (edges[:-1] + edges[1:]) / 2
        inside = (mids[None, :] >= starts.numpy()[:, None]) & (mids[None, :] < ends.numpy()[:, None])
        index = np.where(inside.any(0), inside.argmax(0), -1)
        return edges, index

    x_edges, x_index = axis(b[0, :, 0], b[0, :, 2])
    y_edges, y_index = axis(b[:, 0, 1], b[:, 0, 3])
    return x_edges, y_edges, x_index, y_index


def _expand(values: np.ndarray, x_index: np.ndarray, y_index: np.ndarray) -> np.ndarray:
    """``values[rows, cols]`` laid out on the lattice intervals (NaN where no cell lies)."""
    out = values[np.clip(y_index, 0, None)][:, np.clip(x_index, 0, None)].astype(np.float32)
    out[y_index < 0, :] = np.nan
    out[:, x_index < 0] = np.nan
    return out


def plot_attention_overlays(
    rows: Sequence[OverlayRow],
    heads: Sequence[str],
    *,
    colorbar_title: str = "share",
    opacity: float = 0.6,
    max_side: int = 224,
    title: str | None = None,
) -> go.Figure:
    """A grid of panels: one row per :class:`OverlayRow`, one column per head.

    Args:
        rows: the rows (samples, averages), each with ``values`` of ``len(heads)`` heads.
        heads: the column titles, e.g. ``["L3H1", "L4H0"]``.
        colorbar_title: what the colour means.
        opacity: heatmap opacity over an image.
        max_side: images are embedded downscaled to at most this side.
        title: figure title.

    Returns:
        A figure of ``len(rows)`` x ``len(heads)`` panels. A panel with an image holds a
        ``go.Image`` (a PNG ``source``) and a ``go.Heatmap`` whose cells are the image tokens'
        patches (``x``, ``y`` the cell edges in image pixels); a panel without one holds the
        heatmap alone over grid cells. All heatmaps share one colour scale.

    Example:
        >>> fig = plot_attention_overlays([OverlayRow("sample 0", values, img, grid.cell_boxes)], ["L3H1"])  # doctest: +SKIP
    """
    if not rows or not heads:
        raise ValueError("plot_attention_overlays needs at least one row and one head")
    n_heads = len(heads)
    for row in rows:
        if row.values.ndim != 3 or row.values.shape[0] != n_heads:
            raise ValueError(
                f"row {row.label!r}: values must be [{n_heads}, rows, cols], got {tuple(row.values.shape)}"
            )
        if row.image is not None and row.cell_boxes is None:
            raise ValueError(f"row {row.label!r}: an image needs cell_boxes")
        if row.panel_labels is not None and len(row.panel_labels) != n_heads:
            raise ValueError(f"row {row.label!r}: {len(row.panel_labels)} panel labels for {n_heads} heads")
    peaks = [float(torch.nan_to_num(r.values.float(), nan=0.0).max()) for r in rows]
    shared = [p for p, r in zip(peaks, rows, strict=True) if not r.own_scale]
    zmax = max(shared) if shared and max(shared) > 0 else 1.0
    titles = []
    for row in rows:
        for i, head in enumerate(heads):
            titles.append(head if row.panel_labels is None else f"{head}: {row.panel_labels[i]}")
    fig = make_subplots(rows=len(rows), cols=n_heads, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.12 / max(1, len(rows) - 1) if len(rows) > 1 else 0.0)  # fmt: skip
    first = True
    for r, row in enumerate(rows, start=1):
        values = row.values.detach().cpu().numpy()
        row_max = (peaks[r - 1] if peaks[r - 1] > 0 else 1.0) if row.own_scale else zmax
        if row.image is not None:
            assert row.cell_boxes is not None
            uri, w, h = image_data_uri(row.image, max_side)
            width, height = row.image.size
            x_edges, y_edges, x_index, y_index = _lattice(torch.as_tensor(row.cell_boxes))
        else:
            width = height = None
            x_edges, y_edges = np.arange(values.shape[2] + 1.0), np.arange(values.shape[1] + 1.0)
            x_index, y_index = np.arange(values.shape[2]), np.arange(values.shape[1])
        for c in range(1, n_heads + 1):
            if row.image is not None:
                fig.add_trace(go.Image(source=uri, x0=0.5 * width / w, y0=0.5 * height / h, dx=width / w, dy=height / h,
                                       hoverinfo="skip"), row=r, col=c)  # fmt: skip
            fig.add_trace(
                go.Heatmap(
                    z=_expand(values[c - 1], x_index, y_index), x=x_edges.astype(np.float32), y=y_edges.astype(np.float32),
                    zmin=0.0, zmax=row_max, colorscale="Inferno", opacity=opacity if row.image is not None else 1.0,
                    showscale=first and not row.own_scale, colorbar={"title": {"text": colorbar_title}, "len": 0.5},
                    hovertemplate="%{z:.3g}<extra></extra>",
                ),
                row=r, col=c,
            )  # fmt: skip
            first = False
            if row.box is not None:
                left, top, right, bottom = (float(v) for v in row.box)
                fig.add_shape(type="rect", x0=left, y0=top, x1=right, y1=bottom, line={"color": "cyan", "width": 2},
                              row=r, col=c)  # fmt: skip
            anchor = fig.get_subplot(r, c).xaxis.anchor
            fig.update_yaxes(autorange="reversed", scaleanchor=anchor.replace("y", "x") if anchor else None,
                             showticklabels=False, row=r, col=c)  # fmt: skip
            fig.update_xaxes(showticklabels=False, row=r, col=c)
        label = row.label + (f" (own colour scale, max {row_max:.2g})" if row.own_scale else "")
        fig.update_yaxes(title_text=_wrap(label), title_font={"size": 11}, row=r, col=1)
    fig.update_layout(
        title=title or "attention of the top heads over the image patches",
        width=min(1400, 120 + _PANEL * n_heads), height=110 + (_PANEL + 30) * len(rows),
        margin={"l": 110, "r": 20, "t": 90, "b": 20},
    )  # fmt: skip
    fig.update_annotations(font_size=11)
    return fig


def _wrap(text: str, width: int = 24) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "<br>".join(lines[:4])


def plot_prompt_comparison(
    plain: VisualHeadScores,
    visual: VisualHeadScores,
    *,
    metric: str = "region_weight",
    title: str | None = None,
) -> go.Figure:
    """Two scans of one model compared: without and with the visual prompt (the box drawn).

    Left: the per-layer total over heads of ``metric`` for each scan, stage bounds dotted.
    Right: one point per head, ``metric`` without the prompt (x) against with it (y), and the
    diagonal ``y = x``.

    Args:
        plain: the scan without the box drawn.
        visual: the scan with the box drawn (``--visual-prompt``).
        metric: one of :data:`vh_lens.visual_heads.scores.METRICS`.
        title: figure title.

    Returns:
        A figure with two subplots (two ``go.Scatter`` lines, then one ``go.Scatter`` of
        ``n_layers * n_heads`` points and the diagonal).
    """
    if (plain.n_layers, plain.n_heads) != (visual.n_layers, visual.n_heads):
        raise ValueError(
            f"the scans differ in shape: {plain.n_layers}x{plain.n_heads} vs {visual.n_layers}x{visual.n_heads}"
        )
    if metric not in plain.mean:
        raise ValueError(f"metric must be one of {', '.join(plain.mean)}, got {metric!r}")
    label = metric.replace("_", " ")
    a, b = plain.mean[metric], visual.mean[metric]
    layers = np.arange(plain.n_layers)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"per-layer total of {label}", f"{label} per head"],
                        horizontal_spacing=0.1)  # fmt: skip
    fig.add_trace(go.Scatter(x=layers, y=a.sum(1).numpy(), mode="lines+markers", name=f"plain (n={plain.count})"), 1, 1)
    fig.add_trace(go.Scatter(x=layers, y=b.sum(1).numpy(), mode="lines+markers", name=f"visual prompt (n={visual.count})"),
                  1, 1)  # fmt: skip
    for stage in STAGES[1:]:
        span = stage_layers(stage, plain.n_layers)  # type: ignore[arg-type]
        if len(span):
            fig.add_vline(x=span.start - 0.5, line_dash="dot", line_color="grey", row=1, col=1)
    heads = np.stack(np.meshgrid(np.arange(plain.n_layers), np.arange(plain.n_heads), indexing="ij"), -1).reshape(-1, 2)
    fig.add_trace(go.Scatter(x=a.flatten().numpy(), y=b.flatten().numpy(), mode="markers", name="heads",
                             customdata=heads, marker={"color": heads[:, 0], "colorscale": "Viridis"},
                             hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>plain %{x:.3g}<br>"
                             "visual prompt %{y:.3g}<extra></extra>"), 1, 2)  # fmt: skip
    top = float(max(a.max(), b.max(), 1e-9))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="y = x"), 1, 2)  # fmt: skip
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_yaxes(title_text=f"sum over heads of {label}", row=1, col=1)
    fig.update_xaxes(title_text=f"{label}, plain", row=1, col=2)
    fig.update_yaxes(title_text=f"{label}, visual prompt", row=1, col=2)
    fig.update_layout(title=title or f"plain vs visual prompt: {label}", width=1200, height=480)
    return fig
