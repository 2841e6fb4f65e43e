"""Streaming per-head statistics of the visual-head metrics (the hooks' sink)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vh_lens.visual_heads.metrics import HEAD_METRICS, LayerFn, default_layer_fn, detection_score, layer_fn_name
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

__all__ = ["ScoreAccumulator"]


class ScoreAccumulator:
    """Streaming mean and variance per head of every visual-head metric (the hooks' sink).

    Batches are merged with Chan et al.'s parallel form of Welford's update in float64, per
    layer, so memory does not grow with the number of samples (unless ``keep_per_sample``).
    The detection score ``f(l) * W * C`` is computed per sample from the weight named by
    ``detection_weight`` and the concentration, then averaged.

    Args:
        n_layers: number of layers.
        n_heads: number of (query) heads per layer.
        keep_per_sample: also keep ``[n_samples, n_layers, n_heads]`` arrays per metric.
        layer_fn: ``f`` of the detection score (default :func:`default_layer_fn`, ours).
        detection_weight: ``"image"`` (``W_img``, default) or ``"region"`` (``W_reg``).

    Example:
        >>> acc = ScoreAccumulator(2, 4)
        >>> acc.add(0, {m: torch.rand(3, 4) for m in HEAD_METRICS})
        >>> acc.add(1, {m: torch.rand(3, 4) for m in HEAD_METRICS})
        >>> acc.count
        3
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        keep_per_sample: bool = False,
        *,
        layer_fn: LayerFn = default_layer_fn,
        detection_weight: Literal["image", "region"] = "image",
    ) -> None:
        for name, value in (("n_layers", n_layers), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if detection_weight not in ("image", "region"):
            raise ValueError(f"detection_weight must be 'image' or 'region', got {detection_weight!r}")
        self.n_layers, self.n_heads = n_layers, n_heads
        self.keep_per_sample = keep_per_sample
        self.layer_fn = layer_fn
        self.detection_weight = detection_weight
        self._n = torch.zeros(n_layers, dtype=torch.int64)
        self._mean = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in METRICS}
        self._m2 = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in METRICS}
        self._chunks: list[list[dict[str, Tensor]]] = [[] for _ in range(n_layers)]

    def __call__(self, layer: int, metrics: Mapping[str, Tensor]) -> None:
        self.add(layer, metrics)

    def add(self, layer: int, metrics: Mapping[str, Float[Tensor, "batch head"]]) -> None:
        """Fold one layer's metrics of a batch of samples into the statistics.

        Args:
            layer: 0-based layer.
            metrics: :data:`HEAD_METRICS` -> ``[batch, n_heads]`` (``detection`` is computed
                here unless given).
        """
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} outside 0..{self.n_layers - 1}")
        missing = [m for m in HEAD_METRICS if m not in metrics]
        if missing:
            raise ValueError(f"metrics lack {missing}")
        values = {m: metrics[m].detach().to("cpu", torch.float64) for m in HEAD_METRICS}
        if "detection" in metrics:
            values["detection"] = metrics["detection"].detach().to("cpu", torch.float64)
        else:
            weight = values["image_weight" if self.detection_weight == "image" else "region_weight"]
            values["detection"] = detection_score(weight, values["concentration"], layer, self.layer_fn)
        shape = values["image_weight"].shape
        if len(shape) != 2 or shape[1] != self.n_heads or shape[0] < 1:
            raise ValueError(f"metrics must be [batch, {self.n_heads}], got {tuple(shape)}")
        if any(v.shape != shape for v in values.values()):
            raise ValueError("all metrics of one add() must share a shape")
        self._merge_layer(
            layer,
            shape[0],
            {m: v.mean(0) for m, v in values.items()},
            {m: ((v - v.mean(0)) ** 2).sum(0) for m, v in values.items()},
        )
        if self.keep_per_sample:
            self._chunks[layer].append(values)

    def _merge_layer(self, layer: int, n_b: int, mean_b: Mapping[str, Tensor], m2_b: Mapping[str, Tensor]) -> None:
        n_a = int(self._n[layer])
        n = n_a + n_b
        for m in METRICS:
            delta = mean_b[m] - self._mean[m][layer]
            self._mean[m][layer] += delta * (n_b / n)
            self._m2[m][layer] += m2_b[m] + delta**2 * (n_a * n_b / n)
        self._n[layer] = n

    def merge(self, other: ScoreAccumulator) -> None:
        """Fold another accumulator (e.g. from another worker) into this one."""
        if (other.n_layers, other.n_heads) != (self.n_layers, self.n_heads):
            raise ValueError("accumulators differ in shape")
        if other.keep_per_sample != self.keep_per_sample:
            raise ValueError("accumulators differ in keep_per_sample")
        for layer in range(self.n_layers):
            n_b = int(other._n[layer])
            if n_b:
                self._merge_layer(
                    layer, n_b, {m: other._mean[m][layer] for m in METRICS}, {m: other._m2[m][layer] for m in METRICS}
                )
                self._chunks[layer].extend(other._chunks[layer])

    @property
    def count(self) -> int:
        """Samples seen (the same on every layer once each batch is complete)."""
        counts = set(self._n.tolist())
        if len(counts) != 1:
            raise RuntimeError(f"layers have seen different numbers of samples {self._n.tolist()}: incomplete batch")
        return counts.pop()

    def _per_sample(self) -> dict[str, Tensor]:
        empty = torch.zeros(0, self.n_heads, dtype=torch.float64)
        return {
            m: torch.stack([torch.cat([c[m] for c in chunks]) if chunks else empty for chunks in self._chunks], dim=1)
            for m in METRICS
        }

    def state_dict(self) -> dict[str, Tensor]:
        """The statistics as tensors (for checkpoints)."""
        state = {"count": self._n.clone()}
        for m in METRICS:
            state[f"mean.{m}"] = self._mean[m].clone()
            state[f"m2.{m}"] = self._m2[m].clone()
        if self.keep_per_sample:
            _ = self.count  # raises on an incomplete batch
            state |= {f"per_sample.{m}": v for m, v in self._per_sample().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore statistics written by :meth:`state_dict`."""
        if tuple(state["count"].shape) != (self.n_layers,):
            raise ValueError("checkpoint state does not match this accumulator's n_layers")
        self._n = state["count"].to(torch.int64).clone()
        for m in METRICS:
            if tuple(state[f"mean.{m}"].shape) != (self.n_layers, self.n_heads):
                raise ValueError("checkpoint state does not match this accumulator's shape")
            self._mean[m] = state[f"mean.{m}"].to(torch.float64).clone()
            self._m2[m] = state[f"m2.{m}"].to(torch.float64).clone()
        self._chunks = [[] for _ in range(self.n_layers)]
        if self.keep_per_sample:
            if f"per_sample.{METRICS[0]}" not in state:
                raise ValueError("checkpoint has no per-sample arrays but keep_per_sample=True")
            for layer in range(self.n_layers):
                self._chunks[layer].append({m: state[f"per_sample.{m}"][:, layer].to(torch.float64) for m in METRICS})

    def result(self, metadata: Mapping[str, Any] | None = None) -> VisualHeadScores:
        """The statistics as :class:`~vh_lens.visual_heads.scores.VisualHeadScores` (variance with ``ddof=0``)."""
        count = self.count
        if count == 0:
            raise ValueError("no samples were accumulated")
        meta = {"layer_fn": layer_fn_name(self.layer_fn), "detection_weight": self.detection_weight}
        meta |= dict(metadata or {})
        return VisualHeadScores(
            mean={m: v.clone() for m, v in self._mean.items()},
            variance={m: (v / count).clamp(min=0) for m, v in self._m2.items()},
            count=count,
            per_sample=self._per_sample() if self.keep_per_sample else None,
            metadata=meta,
        )
