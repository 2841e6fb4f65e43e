"""plot_attention_overlays (cells on a lattice, gaps, shared and own colour scales) and plot_prompt_comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vh_lens.plotting.overlays import OverlayRow, plot_attention_overlays, plot_prompt_comparison
from vh_lens.visual_heads.scores import VisualHeadScores


def _boxes(xs, ys) -> torch.Tensor:
    """``[rows, cols, 4]`` boxes of the lattice with column spans ``xs`` and row spans ``ys``."""
    return torch.tensor([[[x0, y0, x1, y1] for x0, x1 in xs] for y0, y1 in ys], dtype=torch.float32)


def test_cells_land_on_their_boxes_and_gaps_are_empty() -> None:
    # Two columns with a gap between them (padding), two adjacent rows.
    boxes = _boxes([(0, 10), (15, 30)], [(0, 20), (20, 40)])
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    fig = plot_attention_overlays([OverlayRow("s", values, Image.new("RGB", (30, 40)), boxes, box=(1, 2, 9, 8))], ["H"])
    image, heat = fig.data
    assert image.type == "image" and image.source.startswith("data:image/png;base64,")
    assert list(heat.x) == [0, 10, 15, 30] and list(heat.y) == [0, 20, 40]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (2, 3) and np.isnan(z[:, 1]).all()  # the gap column
    assert z[:, [0, 2]].tolist() == [[1, 2], [3, 4]]
    assert (image.x0, image.dx, image.y0, image.dy) == (0.5, 1.0, 0.5, 1.0)  # drawn in image pixels
    assert [(s.x0, s.y0, s.x1, s.y1) for s in fig.layout.shapes] == [(1, 2, 9, 8)]


def test_rows_share_a_scale_unless_told_otherwise() -> None:
    boxes = _boxes([(0, 5)], [(0, 5)])
    img = Image.new("RGB", (5, 5))
    rows = [OverlayRow("a", torch.full((2, 1, 1), 0.5), img, boxes),
            OverlayRow("b", torch.full((2, 1, 1), 0.8), img, boxes, panel_labels=["x", "y"]),
            OverlayRow("mean", torch.full((2, 1, 1), 0.1), own_scale=True)]  # fmt: skip
    fig = plot_attention_overlays(rows, ["H1", "H2"])
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [h.zmax for h in heat] == pytest.approx([0.8, 0.8, 0.8, 0.8, 0.1, 0.1], abs=1e-7)
    assert [h.showscale for h in heat] == [True, False, False, False, False, False]
    assert [a.text for a in fig.layout.annotations][2:4] == ["H1: x", "H2: y"]
    assert "own colour scale" in fig.layout.yaxis5.title.text and fig.layout.width <= 1400


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="values must be \\[2"):
        plot_attention_overlays([OverlayRow("a", torch.zeros(1, 1, 1))], ["H1", "H2"])
    with pytest.raises(ValueError, match="needs cell_boxes"):
        plot_attention_overlays([OverlayRow("a", torch.zeros(1, 1, 1), Image.new("RGB", (5, 5)))], ["H"])
    skew = torch.tensor([[[0, 0, 5, 5], [5, 1, 10, 5]]], dtype=torch.float32)
    with pytest.raises(ValueError, match="lattice"):
        plot_attention_overlays([OverlayRow("a", torch.zeros(1, 1, 2), Image.new("RGB", (10, 5)), skew)], ["H"])
    with pytest.raises(ValueError, match="at least one"):
        plot_attention_overlays([], ["H"])


def _scores(value: float, count: int) -> VisualHeadScores:
    n_layers, n_heads = 4, 2
    g = torch.Generator().manual_seed(int(value * 10))
    stats = {m: torch.rand(n_layers, n_heads, generator=g) * value for m in
             ("image_weight", "region_weight", "text_weight", "concentration", "detection")}  # fmt: skip
    variance = {m: torch.zeros(n_layers, n_heads) for m in stats}
    return VisualHeadScores(mean=stats, variance=variance, count=count)


def test_prompt_comparison_draws_both_scans() -> None:
    plain, visual = _scores(0.5, 3), _scores(1.0, 5)
    fig = plot_prompt_comparison(plain, visual)
    lines, points = fig.data[:2], fig.data[2]
    assert [t.name for t in lines] == ["plain (n=3)", "visual prompt (n=5)"]
    assert np.allclose(lines[0].y, plain.region_weight.sum(1).numpy())
    assert np.allclose(lines[1].y, visual.region_weight.sum(1).numpy())
    assert np.allclose(points.x, plain.region_weight.flatten().numpy())
    assert np.allclose(points.y, visual.region_weight.flatten().numpy())
    assert [tuple(c) for c in points.customdata[:3]] == [(0, 0), (0, 1), (1, 0)]  # layer-major, as flatten()
    with pytest.raises(ValueError, match="metric"):
        plot_prompt_comparison(plain, visual, metric="nope")
