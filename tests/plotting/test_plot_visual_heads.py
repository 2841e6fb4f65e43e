"""Tests of vh_lens.plotting.visual_heads: figures carry the right data; the report is written."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from vh_lens.core.layout import ImageGrid, TokenLayout
from vh_lens.plotting import (
    plot_head_attention_on_image,
    plot_head_heatmap,
    plot_layer_totals,
    plot_weight_vs_concentration,
)
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores


@pytest.fixture(scope="module")
def scores() -> VisualHeadScores:
    gen = torch.Generator().manual_seed(0)
    mean = {m: torch.rand(4, 3, generator=gen, dtype=torch.float64) for m in METRICS}
    variance = {m: torch.full((4, 3), 0.04, dtype=torch.float64) for m in METRICS}
    return VisualHeadScores(mean=mean, variance=variance, count=5, metadata={"model": "tiny <test>"})


def test_head_heatmap(scores: VisualHeadScores) -> None:
    fig = plot_head_heatmap(scores, "concentration")
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), scores.concentration.numpy())
    std = plot_head_heatmap(scores, "detection", statistic="std")
    np.testing.assert_allclose(np.asarray(std.data[0].z), np.full((4, 3), 0.2))
    with pytest.raises(ValueError):
        plot_head_heatmap(scores, "retrieval")


def test_weight_vs_concentration_one_point_per_head(scores: VisualHeadScores) -> None:
    fig = plot_weight_vs_concentration(scores)
    (trace,) = fig.data
    assert len(trace.x) == 12
    # layer-major order: point 7 is layer 2, head 1
    assert trace.x[7] == pytest.approx(float(scores.image_weight[2, 1]))
    assert trace.y[7] == pytest.approx(float(scores.concentration[2, 1]))
    assert list(trace.marker.color) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    region = plot_weight_vs_concentration(scores, weight="region_weight")
    assert region.data[0].x[0] == pytest.approx(float(scores.region_weight[0, 0]))


def test_layer_totals(scores: VisualHeadScores) -> None:
    fig = plot_layer_totals(scores, metrics=("image_weight", "detection"))
    assert [t.name for t in fig.data] == ["image weight", "detection score"]
    np.testing.assert_allclose(np.asarray(fig.data[1].y), scores.detection.sum(1).numpy())
    norm = plot_layer_totals(scores, metrics=("detection",), normalize=True)
    assert float(np.sum(norm.data[0].y)) == pytest.approx(1.0)
    assert len(fig.layout.shapes) == 2  # stage boundaries of 4 layers: before layers 2 and 3


def _grid() -> ImageGrid:
    # a 2x2 grid covering only the left half (x 0..10) of a 20x10 image
    positions = torch.tensor([[3, 4], [5, 6]])
    boxes = torch.tensor([[[0, 0, 5, 5], [5, 0, 10, 5]], [[0, 5, 5, 10], [5, 5, 10, 10]]], dtype=torch.float32)
    return ImageGrid("base", positions, boxes)


def test_attention_on_image_paints_each_patch() -> None:
    image = Image.new("RGB", (20, 10), (200, 100, 50))
    rows = torch.zeros(2, 8)
    rows[0, 3:7] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows[1, 6] = 1.0
    fig = plot_head_attention_on_image(image, _grid(), rows, labels=["L0H1", "L1H2"])
    assert isinstance(fig, go.Figure)
    assert [type(t).__name__ for t in fig.data] == ["Image", "Heatmap", "Image", "Heatmap"]
    z0, z1 = np.asarray(fig.data[1].z, dtype=float), np.asarray(fig.data[3].z, dtype=float)
    assert z0.shape == (10, 20)
    assert z0[2, 2] == pytest.approx(0.1) and z0[2, 7] == pytest.approx(0.2)  # row 0: cells (0,0), (0,1)
    assert z0[7, 2] == pytest.approx(0.3) and z0[7, 7] == pytest.approx(0.4)  # row 1
    assert np.isnan(z0[:, 10:]).all()  # no patch covers the right half
    assert z1[8, 8] == pytest.approx(1.0) and z1[1, 1] == 0.0
    assert np.asarray(fig.data[0].z).shape == (10, 20, 3)
    assert [a.text for a in fig.layout.annotations] == ["L0H1", "L1H2"]
    shares = plot_head_attention_on_image(image, _grid(), rows[0], normalize=True)
    assert float(np.nanmax(np.asarray(shares.data[1].z, dtype=float))) == pytest.approx(0.4)


def test_attention_on_image_from_layout_checks_sizes() -> None:
    layout = TokenLayout(
        seq_len=8,
        n_pad=0,
        image_positions=torch.arange(3, 7),
        newline_positions=torch.zeros(0, dtype=torch.long),
        text_positions=torch.tensor([0, 1, 2, 7]),
        query_position=7,
        grids=(_grid(),),
        image_size=(20, 10),
    )
    rows = torch.rand(1, 8)
    fig = plot_head_attention_on_image(Image.new("RGB", (20, 10)), layout, rows)
    assert np.asarray(fig.data[1].z, dtype=float)[0, 0] == pytest.approx(float(rows[0, 3]))
    with pytest.raises(ValueError, match="image is"):
        plot_head_attention_on_image(Image.new("RGB", (30, 10)), layout, rows)
    with pytest.raises(ValueError, match="key positions"):
        plot_head_attention_on_image(Image.new("RGB", (20, 10)), layout, rows[:, :5])
    big = plot_head_attention_on_image(Image.new("RGB", (800, 400)), _scaled_grid(40), torch.rand(1, 8), max_side=100)
    assert np.asarray(big.data[1].z).shape == (50, 100)


def _scaled_grid(factor: float) -> ImageGrid:
    g = _grid()
    return ImageGrid("base", g.positions, g.cell_boxes * factor)
