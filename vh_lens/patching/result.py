"""The result of a patching run: a ``[layer, index]`` grid of normalised effects, saved and reloaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from vh_lens.core.io import load_tensors, read_json, save_tensors, write_json

_FORMAT = "vh_lens.PatchingResult"
_TENSORS_FILE = "patching.safetensors"
_METADATA_FILE = "metadata.json"
GRIDS: tuple[str, ...] = ("heads", "positions", "regions")
METHODS: tuple[str, ...] = ("activation", "attribution")


@dataclass(frozen=True, eq=False)
class PatchingResult:
    """Normalised patching effects, ``(m_patched - m(r)) / (m(c) - m(r))``, per layer and index.

    Attributes:
        effect: ``[n_layers, n_index]`` normalised effect (1: the full clean effect, 0: none).
            For ``method="attribution"`` the first-order estimate
            ``(a_c - a_r) . dm/da |_r / (m(c) - m(r))``.
        grid: ``"heads"`` (index = head), ``"positions"`` (index = image token) or
            ``"regions"`` (index = region).
        method: ``"activation"`` (real patching) or ``"attribution"``.
        activation: the TransformerLens activation patched (``"z"``, ``"resid_pre"``, ...).
        layers: the layer of each row.
        labels: a name per index (``"H3"``, ``"base r2c5"``, a region's name).
        clean_metric: m(c), the metric of the clean run (mean over the batch).
        corrupt_metric: m(r), the metric of the corrupted run.
        metric: the metric's name (``"logit_diff"`` or ``"logprob"``).
        boxes: ``[n_index, 4]`` the original-image box of each index (sample 0's geometry; NaN
            where none), or ``None`` for heads.
        image_size: ``(width, height)`` of sample 0's image, or ``None``.
        n_samples: samples averaged by the metric.
        description: free text (corruption, head positions, ...).
    """

    effect: Float[Tensor, "layer index"]
    grid: str
    method: str
    activation: str
    layers: tuple[int, ...]
    labels: tuple[str, ...]
    clean_metric: float
    corrupt_metric: float
    metric: str
    boxes: Float[Tensor, "index 4"] | None = None
    image_size: tuple[int, int] | None = None
    n_samples: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.effect.shape != (len(self.layers), len(self.labels)):
            raise ValueError(
                f"effect has shape {tuple(self.effect.shape)}, expected [{len(self.layers)}, {len(self.labels)}]"
            )
        if self.boxes is not None and self.boxes.shape != (len(self.labels), 4):
            raise ValueError(f"boxes must have shape [{len(self.labels)}, 4], got {tuple(self.boxes.shape)}")

    @property
    def delta(self) -> Float[Tensor, "layer index"]:
        """``effect * (m(c) - m(r))``: the change of the metric (estimated, for attribution)."""
        return self.effect * (self.clean_metric - self.corrupt_metric)

    def row(self, layer: int) -> Float[Tensor, " index"]:
        """The effects of one layer (by layer number, not row)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not in this result (layers {list(self.layers)})")
        return self.effect[self.layers.index(layer)]

    def correlation(self, other: PatchingResult) -> float:
        """Pearson correlation of the two effect grids (e.g. attribution vs activation patching).

        Raises:
            ValueError: the grids differ in shape, or one is constant.
        """
        if self.effect.shape != other.effect.shape:
            raise ValueError(f"effect grids differ in shape: {tuple(self.effect.shape)} vs {tuple(other.effect.shape)}")
        x = self.effect.double().flatten()
        y = other.effect.double().flatten()
        x, y = x - x.mean(), y - y.mean()
        denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
        if denom == 0.0:
            raise ValueError("the correlation is undefined: an effect grid is constant")
        return float((x * y).sum()) / denom

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` largest effects as ``(layer, label, effect)``."""
        flat = self.effect.flatten()
        idx = flat.argsort(descending=True)[:k].tolist()
        n = len(self.labels)
        return [(self.layers[i // n], self.labels[i % n], float(flat[i])) for i in idx]

    def save(self, directory: str | Path) -> Path:
        """Save to ``directory``: ``patching.safetensors`` and ``metadata.json`` (atomic writes, JSON last)."""
        directory = Path(directory)
        tensors = {"effect": self.effect.float()}
        if self.boxes is not None:
            tensors["boxes"] = self.boxes.float()
        save_tensors(directory / _TENSORS_FILE, tensors, {"format": _FORMAT})
        info = {
            "format": _FORMAT,
            "version": 1,
            "grid": self.grid,
            "method": self.method,
            "activation": self.activation,
            "layers": list(self.layers),
            "labels": list(self.labels),
            "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric,
            "metric": self.metric,
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "n_samples": self.n_samples,
            "description": self.description,
        }
        write_json(directory / _METADATA_FILE, info, indent=1)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PatchingResult:
        """Load a result saved by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: the directory holds something else.
        """
        directory = Path(directory)
        info = read_json(directory / _METADATA_FILE, expected_format=_FORMAT, what="PatchingResult", version=1)
        tensors = load_tensors(directory / _TENSORS_FILE)
        size = info["image_size"]
        return cls(
            effect=tensors["effect"],
            grid=info["grid"],
            method=info["method"],
            activation=info["activation"],
            layers=tuple(info["layers"]),
            labels=tuple(info["labels"]),
            clean_metric=float(info["clean_metric"]),
            corrupt_metric=float(info["corrupt_metric"]),
            metric=info["metric"],
            boxes=tensors.get("boxes"),
            image_size=tuple(size) if size is not None else None,
            n_samples=int(info["n_samples"]),
            description=info["description"],
        )


def merge(results: list[PatchingResult]) -> PatchingResult:
    """Results of several batches of one experiment as one, as if run as one batch.

    The metric is a mean over samples, so the merged ``m(c)``, ``m(r)`` and each patched (or
    estimated) metric are the means weighted by ``n_samples``, and the effect is normalised
    again with the merged ``m(c) - m(r)``.

    Raises:
        ValueError: no results, or results of different grids, layers, labels or metrics.
    """
    if not results:
        raise ValueError("merge: no results")
    first = results[0]
    key = (first.grid, first.method, first.activation, first.layers, first.labels, first.metric)
    for r in results[1:]:
        if (r.grid, r.method, r.activation, r.layers, r.labels, r.metric) != key:
            raise ValueError("merge: the results differ in grid, method, activation, layers, labels or metric")
    n = sum(r.n_samples for r in results)
    clean = sum(r.clean_metric * r.n_samples for r in results) / n
    corrupt = sum(r.corrupt_metric * r.n_samples for r in results) / n
    delta = sum(r.delta.double() * r.n_samples for r in results) / n
    gap = clean - corrupt
    if not abs(gap) > 1e-6 * max(1.0, abs(clean)):
        raise ValueError(
            f"merge: the merged clean and corrupted metrics are equal ({clean:.6g}): nothing to normalise by"
        )
    return PatchingResult(
        effect=(delta / gap).float(),
        grid=first.grid,
        method=first.method,
        activation=first.activation,
        layers=first.layers,
        labels=first.labels,
        clean_metric=clean,
        corrupt_metric=corrupt,
        metric=first.metric,
        boxes=first.boxes,
        image_size=first.image_size,
        n_samples=n,
        description=first.description,
    )


def effect_share(result: PatchingResult, inside: torch.Tensor, layer: int | None = None) -> float:
    """Share of the positive effect of one layer's row that lies at the indices ``inside``.

    ``sum(max(e, 0) over inside) / sum(max(e, 0) over all)``.

    Args:
        result: a ``positions`` or ``regions`` result.
        inside: ``[n_index]`` boolean mask of the indices inside (e.g. the asked box's cells).
        layer: the layer (default: the first row).

    Raises:
        ValueError: the row has no positive effect.
    """
    row = result.effect[0] if layer is None else result.row(layer)
    pos = row.clamp(min=0)
    total = float(pos.sum())
    if total <= 0:
        raise ValueError("effect_share: this row has no positive effect")
    return float(pos[inside.to(torch.bool)].sum()) / total
