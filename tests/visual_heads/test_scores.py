"""Tests of vh_lens.visual_heads.scores: stage rule, head selection, persistence, comparisons."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from vh_lens.visual_heads.scores import (
    METRICS,
    STAGES,
    VisualHeadScores,
    emd_layers,
    layer_distribution,
    pearson,
    stage_layers,
    stage_of,
)


def make_scores(detection: torch.Tensor, *, per_sample: bool = False, metadata: dict | None = None) -> VisualHeadScores:
    """Scores whose every metric is a distinct function of ``detection`` ([layers, heads])."""
    detection = detection.to(torch.float64)
    mean = {m: detection * (i + 1) for i, m in enumerate(METRICS[:-1])} | {"detection": detection}
    variance = {m: torch.full_like(detection, 0.01 * (i + 1)) for i, m in enumerate(METRICS)}
    samples = None
    if per_sample:
        samples = {m: torch.stack([v - 0.1, v + 0.1]) for m, v in mean.items()}
    return VisualHeadScores(mean=mean, variance=variance, count=2, per_sample=samples, metadata=metadata or {})


# --------------------------------------------------------------------------------------------
# Stages


def test_stage_layers_32() -> None:
    assert stage_layers("early", 32) == range(0, 11)
    assert stage_layers("mid", 32) == range(11, 22)
    assert stage_layers("late", 32) == range(22, 32)


@pytest.mark.parametrize(
    ("n_layers", "expected"),
    [
        (1, ([0], [], [])),
        (2, ([0], [1], [])),
        (3, ([0], [1], [2])),
        (4, ([0, 1], [2], [3])),
        (5, ([0, 1], [2, 3], [4])),
        (24, (list(range(0, 8)), list(range(8, 16)), list(range(16, 24)))),
        (40, (list(range(0, 14)), list(range(14, 27)), list(range(27, 40)))),
    ],
)
def test_stage_layers_small_and_other_counts(n_layers: int, expected: tuple[list[int], ...]) -> None:
    assert tuple(list(stage_layers(s, n_layers)) for s in STAGES) == expected


def test_stages_partition_layers_in_order() -> None:
    for n in range(1, 50):
        layers = [layer for s in STAGES for layer in stage_layers(s, n)]
        assert layers == list(range(n))
        sizes = [len(stage_layers(s, n)) for s in STAGES]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert stage_of(10, 32) == "early" and stage_of(11, 32) == "mid" and stage_of(31, 32) == "late"
    with pytest.raises((ValueError, TypeError)):  # TypeError: from a run-time type checker, if enabled
        stage_layers("middle", 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        stage_layers("early", 0)
    with pytest.raises(ValueError):
        stage_of(32, 32)


# --------------------------------------------------------------------------------------------
# Head selection


def _det() -> torch.Tensor:
    # 6 layers (stages: 0-1, 2-3, 4-5), 3 heads
    return torch.tensor(
        [
            [0.1, 0.9, 0.2],
            [0.3, 0.9, 0.0],
            [0.5, 0.4, 0.8],
            [0.7, 0.6, 0.05],
            [0.95, 0.0, 0.0],
            [0.01, 0.02, 0.03],
        ]
    )


def test_top_heads_rule() -> None:
    scores = make_scores(_det())
    assert scores.top_heads(3) == [(4, 0), (0, 1), (1, 1)]  # tie 0.9: lower layer first
    assert scores.top_heads(2, stage="early") == [(0, 1), (1, 1)]
    assert scores.top_heads(2, stage="mid") == [(2, 2), (3, 0)]
    assert scores.top_heads(1, stage="late", metric="image_weight") == [(4, 0)]
    assert scores.top_heads(0) == []
    with pytest.raises(ValueError, match="only 6"):
        scores.top_heads(7, stage="late")
    with pytest.raises(ValueError, match="metric"):
        scores.top_heads(1, metric="retrieval")


def test_random_heads_rule() -> None:
    scores = make_scores(_det())
    top = scores.top_heads(2, stage="mid")
    drawn = scores.random_heads(2, "mid", seed=0)
    assert len(drawn) == 2 and len(set(drawn)) == 2 and drawn == sorted(drawn)
    assert all(layer in (2, 3) for layer, _ in drawn)
    assert not set(drawn) & set(top)
    assert scores.random_heads(2, "mid", seed=0) == drawn  # reproducible
    # by default the top-k (k = heads drawn) are excluded: 6 mid heads - top 3 leave 3
    mid = {(layer, head) for layer in (2, 3) for head in range(3)}
    assert scores.random_heads(3, "mid", seed=1) == sorted(mid - set(scores.top_heads(3, "mid")))
    with pytest.raises(ValueError, match="only 2"):
        scores.random_heads(4, "mid", seed=0)
    # 6 mid heads minus the top 2 leave exactly 4: all of them are drawn
    assert scores.random_heads(4, "mid", seed=1, exclude_top=2) == sorted(mid - set(top))
    with pytest.raises(ValueError, match="only 4"):
        scores.random_heads(5, "mid", seed=0, exclude_top=2)
    # an explicit exclusion list, and excluding nothing
    assert scores.random_heads(6, "late", seed=3, exclude_top=0) == [(4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2)]
    drawn = scores.random_heads(5, "late", seed=3, exclude_top=[(4, 1), (0, 0)])
    assert (4, 1) not in drawn and len(drawn) == 5
    draws = {tuple(scores.random_heads(2, None, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    assert all(not set(d) & {(4, 0), (0, 1)} for d in draws)  # top-2 overall excluded


# --------------------------------------------------------------------------------------------
# Result type


def test_properties_and_validation() -> None:
    scores = make_scores(_det())
    assert scores.n_layers == 6 and scores.n_heads == 3
    torch.testing.assert_close(scores.image_weight, _det().double())
    torch.testing.assert_close(scores.region_weight, 2 * _det().double())
    torch.testing.assert_close(scores.text_weight, 3 * _det().double())
    torch.testing.assert_close(scores.concentration, 4 * _det().double())
    torch.testing.assert_close(scores.detection, _det().double())
    torch.testing.assert_close(scores.std("detection"), torch.full((6, 3), math.sqrt(0.05), dtype=torch.float64))
    mean, var = dict(scores.mean), dict(scores.variance)
    with pytest.raises(ValueError, match="missing"):
        VisualHeadScores(mean={k: v for k, v in mean.items() if k != "detection"}, variance=var, count=1)
    with pytest.raises(ValueError, match="differ"):
        VisualHeadScores(mean=mean | {"detection": torch.zeros(6, 4)}, variance=var, count=1)
    with pytest.raises(ValueError, match="negative"):
        VisualHeadScores(mean=mean, variance=var | {"detection": -torch.ones(6, 3)}, count=1)
    with pytest.raises(ValueError, match="count"):
        VisualHeadScores(mean=mean, variance=var, count=0)
    with pytest.raises(ValueError, match="per_sample"):
        VisualHeadScores(mean=mean, variance=var, count=3, per_sample={m: torch.zeros(2, 6, 3) for m in METRICS})
    with pytest.raises(ValueError, match="JSON"):
        VisualHeadScores(mean=mean, variance=var, count=1, metadata={"x": object()})
    with pytest.raises(AttributeError):
        scores.count = 3  # type: ignore[misc]


def test_save_load_round_trip(tmp_path) -> None:
    scores = make_scores(_det(), per_sample=True, metadata={"model": "tiny", "query": "last_prompt"})
    out = scores.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["heads.csv", "metadata.json", "scores.safetensors"]
    loaded = VisualHeadScores.load(out)
    assert loaded.count == 2 and loaded.metadata == {"model": "tiny", "query": "last_prompt"}
    for m in METRICS:
        assert torch.equal(loaded.mean[m], scores.mean[m])
        assert torch.equal(loaded.variance[m], scores.variance[m])
        assert torch.equal(loaded.per_sample[m], scores.per_sample[m])
    with open(out / "heads.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18
    assert list(rows[0])[:3] == ["layer", "head", "stage"]
    row = rows[4 * 3 + 0]  # layer 4, head 0
    assert (row["layer"], row["head"], row["stage"]) == ("4", "0", "late")
    assert float(row["detection_mean"]) == pytest.approx(0.95)
    assert float(row["concentration_var"]) == pytest.approx(0.04)
    info = json.loads((out / "metadata.json").read_text())
    assert info["count"] == 2 and info["has_per_sample"] is True
    no_samples = make_scores(_det())
    assert VisualHeadScores.load(no_samples.save(tmp_path / "b")).per_sample is None
    with pytest.raises(FileNotFoundError):
        VisualHeadScores.load(tmp_path / "missing")


def test_rows_and_frame() -> None:
    scores = make_scores(_det())
    rows = scores.to_rows()
    assert len(rows) == 18 and rows[5] == rows[5] | {"layer": 1, "head": 2, "stage": "early"}
    assert rows[5]["detection_mean"] == 0.0 and rows[5]["image_weight_var"] == pytest.approx(0.01)
    pd = pytest.importorskip("pandas")
    frame = scores.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.shape == (18, 3 + 2 * len(METRICS))


# --------------------------------------------------------------------------------------------
# Comparisons


def test_pearson_hand_examples() -> None:
    a = make_scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert pearson(a, make_scores(torch.tensor([[2.0, 4.0], [6.0, 8.0]]))) == pytest.approx(1.0)
    assert pearson(a, make_scores(torch.tensor([[4.0, 3.0], [2.0, 1.0]]))) == pytest.approx(-1.0)
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): centred (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5);
    # sum of products 2.25 - .25 - .25 + 2.25 = 4, each sum of squares 5 -> r = 0.8
    assert pearson(a, make_scores(torch.tensor([[1.0, 3.0], [2.0, 4.0]]))) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="constant"):
        pearson(a, make_scores(torch.ones(2, 2)))
    with pytest.raises(ValueError, match="shape"):
        pearson(a, make_scores(torch.ones(3, 2)))


def test_emd_layers_hand_examples() -> None:
    def layers(*mass: float) -> VisualHeadScores:
        return make_scores(torch.tensor(mass)[:, None].repeat(1, 2))  # 2 heads per layer, same mass

    first, last = layers(1, 0, 0, 0), layers(0, 0, 0, 1)
    assert emd_layers(first, last) == pytest.approx(3.0)  # all mass moves 3 layers
    assert emd_layers(first, first) == 0.0
    # CDFs (.5, 1, 1, 1) and (0, 0, .5, 1): |diff| .5 + 1 + .5 = 2
    assert emd_layers(layers(1, 1, 0, 0), layers(0, 0, 2, 2)) == pytest.approx(2.0)
    expected = torch.tensor([0.25, 0.75, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(layer_distribution(layers(1, 3, 0, 0)), expected)
    # relative depth: 4 layers at 0, 1/3, 2/3, 1 vs 2 layers at 0, 1; mass on the last layer of each -> 0
    assert emd_layers(last, layers(0, 1), relative=True) == pytest.approx(0.0)
    assert emd_layers(first, layers(0, 1), relative=True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="relative"):
        emd_layers(first, layers(0, 1))
    with pytest.raises(ValueError, match="zero"):
        emd_layers(first, layers(0, 0, 0, 0))
