"""Dataset-level visual-head scores (paper A): the result type, head selection, comparisons.

:class:`VisualHeadScores` holds, per metric, the mean and variance over samples of each head's
score (``[n_layers, n_heads]``), the sample count, optionally the per-sample arrays
(``[n_samples, n_layers, n_heads]``, the form the paper's authors released), and metadata.
It is made by :func:`vh_lens.visual_heads.scan.scan_visual_heads` (or
:meth:`vh_lens.visual_heads.scan.ScoreAccumulator.result`), saved and loaded as safetensors plus JSON
plus a CSV row per head, and compared with :func:`pearson` and :func:`emd_layers`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vh_lens.core.hooks import Head, random_heads
from vh_lens.core.io import check_format_version, check_published, load_tensors, save_tensors, write_csv, write_json

METRICS: tuple[str, ...] = ("image_weight", "region_weight", "text_weight", "concentration", "detection")
"""The per-head metrics every :class:`VisualHeadScores` carries, in a fixed order."""

STAGES: tuple[str, ...] = ("early", "mid", "late")
Stage = Literal["early", "mid", "late"]

_FORMAT = "vh_lens.VisualHeadScores"
_VERSION = 1
_TENSORS_FILE = "scores.safetensors"
_METADATA_FILE = "metadata.json"
_CSV_FILE = "heads.csv"


# --------------------------------------------------------------------------------------------
# Stages


def stage_layers(stage: Stage, n_layers: int) -> range:
    """The layers of an early / mid / late stage.

    Rule: the layers are split into three consecutive stages of ``n_layers // 3`` layers each,
    and the remainder ``n_layers % 3`` goes one layer each to the earlier stages (early first).
    So 32 layers give early ``0-10``, mid ``11-21``, late ``22-31``; 40 give ``0-13``,
    ``14-26``, ``27-39``; 24 give ``0-7``, ``8-15``, ``16-23``; 2 give ``0``, ``1`` and an
    empty late stage.

    Args:
        stage: ``"early"``, ``"mid"`` or ``"late"``.
        n_layers: number of layers of the model (its real count, at least 1).

    Returns:
        The stage's layers as a ``range`` (possibly empty for fewer than 3 layers).

    Example:
        >>> stage_layers("mid", 32)
        range(11, 22)
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
    base, rem = divmod(n_layers, 3)
    sizes = [base + (1 if i < rem else 0) for i in range(3)]
    index = STAGES.index(stage)
    start = sum(sizes[:index])
    return range(start, start + sizes[index])


def stage_of(layer: int, n_layers: int) -> Stage:
    """The stage (see :func:`stage_layers`) that ``layer`` belongs to."""
    for stage in STAGES:
        if layer in stage_layers(stage, n_layers):  # type: ignore[arg-type]
            return stage  # type: ignore[return-value]
    raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")


# --------------------------------------------------------------------------------------------
# Result type


@dataclass(frozen=True, eq=False)
class VisualHeadScores:
    """Per-head visual-head metrics over a data set.

    Attributes:
        mean: metric name -> ``[n_layers, n_heads]`` mean over samples (float64). The metrics
            are :data:`METRICS`: ``image_weight``, ``region_weight``, ``text_weight``,
            ``concentration``, ``detection``.
        variance: metric name -> ``[n_layers, n_heads]`` population variance over samples
            (``ddof=0``; multiply by ``count / (count - 1)`` for the unbiased estimate).
        count: number of samples.
        per_sample: metric name -> ``[count, n_layers, n_heads]`` per-sample values, or
            ``None`` when they were not kept.
        metadata: JSON-serialisable description of the run (query mode, layer function, ...).

    Example:
        >>> scores = scan_visual_heads(model, samples)            # doctest: +SKIP
        >>> scores.detection.shape                                # doctest: +SKIP
        torch.Size([32, 32])
        >>> scores.top_heads(10, stage="early")                   # doctest: +SKIP
    """

    mean: Mapping[str, Float[Tensor, "layer head"]]
    variance: Mapping[str, Float[Tensor, "layer head"]]
    count: int
    per_sample: Mapping[str, Float[Tensor, "sample layer head"]] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, maps in (("mean", self.mean), ("variance", self.variance)):
            missing = [m for m in METRICS if m not in maps]
            extra = [m for m in maps if m not in METRICS]
            if missing or extra:
                raise ValueError(f"VisualHeadScores.{name} needs exactly {METRICS}; missing {missing}, unknown {extra}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"VisualHeadScores.count must be a positive int, got {self.count!r}")
        mean = {m: torch.as_tensor(self.mean[m], dtype=torch.float64).detach().cpu() for m in METRICS}
        variance = {m: torch.as_tensor(self.variance[m], dtype=torch.float64).detach().cpu() for m in METRICS}
        shape = mean[METRICS[0]].shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"VisualHeadScores.mean maps must be [n_layers, n_heads], got {tuple(shape)}")
        for m in METRICS:
            if mean[m].shape != shape or variance[m].shape != shape:
                raise ValueError(
                    f"metric {m!r}: mean {tuple(mean[m].shape)} / variance {tuple(variance[m].shape)} "
                    f"differ from {tuple(shape)}"
                )
            if bool((variance[m] < 0).any()):
                raise ValueError(f"metric {m!r}: negative variance")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "variance", variance)
        if self.per_sample is not None:
            missing = [m for m in METRICS if m not in self.per_sample]
            if missing:
                raise ValueError(f"VisualHeadScores.per_sample lacks metrics {missing}")
            per_sample = {m: torch.as_tensor(self.per_sample[m], dtype=torch.float64).detach().cpu() for m in METRICS}
            for m, arr in per_sample.items():
                if arr.shape != (self.count, *shape):
                    raise ValueError(
                        f"per_sample[{m!r}] must be [count, n_layers, n_heads] = {(self.count, *shape)}, "
                        f"got {tuple(arr.shape)}"
                    )
            object.__setattr__(self, "per_sample", per_sample)
        try:
            metadata = json.loads(json.dumps(dict(self.metadata)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"VisualHeadScores.metadata must be JSON-serialisable: {err}") from err
        object.__setattr__(self, "metadata", metadata)

    # -- shape and metric access ---------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return int(self.mean[METRICS[0]].shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.mean[METRICS[0]].shape[1])

    @property
    def image_weight(self) -> Float[Tensor, "layer head"]:
        """Mean attention weight on all image tokens, ``[n_layers, n_heads]``."""
        return self.mean["image_weight"]

    @property
    def region_weight(self) -> Float[Tensor, "layer head"]:
        """Mean attention weight on the question's box region (0 for samples without a box)."""
        return self.mean["region_weight"]

    @property
    def text_weight(self) -> Float[Tensor, "layer head"]:
        """Mean attention weight on the (non-padding) text positions of the prompt."""
        return self.mean["text_weight"]

    @property
    def concentration(self) -> Float[Tensor, "layer head"]:
        """Mean concentration ``1 - H(p) / log N`` of the attention over image tokens."""
        return self.mean["concentration"]

    @property
    def detection(self) -> Float[Tensor, "layer head"]:
        """Mean head detection score ``f(l) * W * C``."""
        return self.mean["detection"]

    def std(self, metric: str = "detection") -> Float[Tensor, "layer head"]:
        """Population standard deviation of ``metric`` over samples, ``[n_layers, n_heads]``."""
        return self.variance[check_metric(metric)].sqrt()

    # -- head selection -----------------------------------------------------------------------

    def _candidates(self, stage: Stage | None) -> list[Head]:
        layers = range(self.n_layers) if stage is None else stage_layers(stage, self.n_layers)
        return [(layer, head) for layer in layers for head in range(self.n_heads)]

    def top_heads(self, k: int, stage: Stage | None = None, metric: str = "detection") -> list[Head]:
        """The ``k`` heads with the highest mean ``metric``, best first.

        Args:
            k: number of heads (``0 <= k <=`` heads in the stage).
            stage: restrict to ``"early"``, ``"mid"`` or ``"late"`` layers (:func:`stage_layers`),
                or ``None`` for all layers.
            metric: one of :data:`METRICS`.

        Returns:
            ``[(layer, head), ...]``; ties are broken by lower layer, then lower head.

        Example:
            >>> scores.top_heads(5, stage="early")                # doctest: +SKIP
            [(3, 17), (2, 5), ...]
        """
        values = self.mean[check_metric(metric)]
        candidates = self._candidates(stage)
        _check_k(k, len(candidates), f"stage {stage!r}" if stage else "the model")
        if k == 0:
            return []
        index = torch.tensor(candidates, dtype=torch.long)
        vals = values[index[:, 0], index[:, 1]]
        if bool(torch.isnan(vals).any()):
            raise ValueError(f"metric {metric!r} has NaN values; cannot rank heads")
        order = torch.sort(vals, descending=True, stable=True).indices[:k]
        return [candidates[i] for i in order.tolist()]

    def random_heads(
        self,
        k: int,
        stage: Stage | None = None,
        seed: int = 0,
        *,
        exclude_top: int | Sequence[Head] | None = None,
        metric: str = "detection",
    ) -> list[Head]:
        """``k`` heads drawn uniformly at random from a stage, excluding its top heads.

        The control of paper A's head-masking experiment: the same number of heads, from the
        same stage, none of them among the top heads.

        Args:
            k: number of heads to draw.
            stage: the stage to draw from (``None``: all layers).
            seed: seed of the draw (a ``torch.Generator``; same seed, same heads).
            exclude_top: heads to leave out: an int ``n`` for the top-``n`` heads of the stage
                by ``metric``, a list of ``(layer, head)``, or ``None`` (the default) for the
                top-``k`` heads of the stage. Use ``0`` or ``[]`` to exclude nothing.
            metric: the metric that ranks the top heads.

        Returns:
            ``[(layer, head), ...]`` sorted by layer, then head.

        Raises:
            ValueError: fewer than ``k`` heads are left to draw from.
        """
        if exclude_top is None:
            exclude_top = k
        if isinstance(exclude_top, int) and not isinstance(exclude_top, bool):
            excluded = set(self.top_heads(exclude_top, stage, metric))
        else:
            excluded = {(int(layer), int(head)) for layer, head in exclude_top}  # type: ignore[union-attr]
        layers = range(self.n_layers) if stage is None else stage_layers(stage, self.n_layers)
        return random_heads(
            self.n_layers, self.n_heads, k, excluded, seed, layers=layers, sort=True,
            where=f"stage {stage!r} after excluding {len(excluded)} heads",
        )  # fmt: skip

    # -- tables ---------------------------------------------------------------------------------

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per head: ``layer``, ``head``, ``stage``, ``{metric}_mean``, ``{metric}_var``."""
        stages = [stage_of(layer, self.n_layers) for layer in range(self.n_layers)]
        means = {m: self.mean[m].tolist() for m in METRICS}
        variances = {m: self.variance[m].tolist() for m in METRICS}
        rows = []
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                row: dict[str, Any] = {"layer": layer, "head": head, "stage": stages[layer]}
                for m in METRICS:
                    row[f"{m}_mean"] = means[m][layer][head]
                    row[f"{m}_var"] = variances[m][layer][head]
                rows.append(row)
        return rows

    def to_frame(self) -> Any:
        """:meth:`to_rows` as a ``pandas.DataFrame`` (pandas is optional, not a dependency).

        Raises:
            ImportError: pandas is not installed; use :meth:`to_rows` instead.
        """
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("to_frame() needs pandas, which vh_lens does not require; use to_rows()") from err
        return pd.DataFrame(self.to_rows())

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save to ``directory``: ``scores.safetensors``, ``metadata.json`` and ``heads.csv``.

        Each file is written atomically (temporary file and ``os.replace``); the tensors are
        written first and the JSON last, so a complete ``metadata.json`` implies complete
        tensors.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"mean.{m}": self.mean[m] for m in METRICS}
        tensors |= {f"variance.{m}": self.variance[m] for m in METRICS}
        if self.per_sample is not None:
            tensors |= {f"per_sample.{m}": self.per_sample[m] for m in METRICS}
        # clone: safetensors refuses tensors that share memory (e.g. one tensor given for two metrics)
        tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        save_tensors(directory / _TENSORS_FILE, tensors, {"format": _FORMAT})
        write_csv(directory / _CSV_FILE, self.to_rows())
        info = {
            "format": _FORMAT,
            "version": _VERSION,
            "count": self.count,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "metrics": list(METRICS),
            "has_per_sample": self.per_sample is not None,
            "variance": "population (ddof=0)",
            "metadata": self.metadata,
        }
        write_json(directory / _METADATA_FILE, info, indent=2, sort_keys=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> VisualHeadScores:
        """Load scores saved by :meth:`save`.

        Raises:
            FileNotFoundError: the directory lacks ``metadata.json`` or ``scores.safetensors``.
            ValueError: the files are not visual-head scores or disagree with each other, or a
                killed run left them half published (:func:`vh_lens.core.io.check_published`).
        """
        directory = Path(directory)
        check_published(directory)
        meta_path, tensor_path = directory / _METADATA_FILE, directory / _TENSORS_FILE
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(f"no saved VisualHeadScores at {directory}: {p.name} missing")
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        if info.get("format") != _FORMAT:
            raise ValueError(f"{meta_path} is not a {_FORMAT} file (format={info.get('format')!r})")
        check_format_version(info, meta_path, what="VisualHeadScores", current=_VERSION)  # issue 14: saved formats
        tensors = load_tensors(tensor_path)
        per_sample = {m: tensors[f"per_sample.{m}"] for m in METRICS} if info.get("has_per_sample") else None
        scores = cls(
            mean={m: tensors[f"mean.{m}"] for m in METRICS},
            variance={m: tensors[f"variance.{m}"] for m in METRICS},
            count=int(info["count"]),
            per_sample=per_sample,
            metadata=info.get("metadata", {}),
        )
        if (scores.n_layers, scores.n_heads) != (info["n_layers"], info["n_heads"]):
            raise ValueError(f"{meta_path} describes {info['n_layers']}x{info['n_heads']} heads, tensors differ")
        return scores


# --------------------------------------------------------------------------------------------
# Comparisons


def pearson(a: VisualHeadScores, b: VisualHeadScores, metric: str = "detection") -> float:
    """Pearson correlation of two head maps (means of ``metric``, flattened over layer and head).

    Paper A compares models of a family this way (base vs variant: r > 0.8).

    Raises:
        ValueError: the maps differ in shape, or one of them is constant.

    Example:
        >>> pearson(scores_7b, scores_7b_v16, "detection")       # doctest: +SKIP
    """
    metric = check_metric(metric)
    x, y = a.mean[metric].flatten(), b.mean[metric].flatten()
    if a.mean[metric].shape != b.mean[metric].shape:
        raise ValueError(f"head maps differ in shape: {tuple(a.mean[metric].shape)} vs {tuple(b.mean[metric].shape)}")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if denom == 0.0:
        raise ValueError(f"Pearson correlation is undefined: a {metric!r} map is constant")
    return float((x * y).sum()) / denom


def layer_distribution(scores: VisualHeadScores, metric: str = "detection") -> Float[Tensor, " layer"]:
    """Per-layer sums of the head means of ``metric``, normalised to sum to 1, ``[n_layers]``.

    Raises:
        ValueError: a layer sum is negative or all sums are zero.
    """
    sums = scores.mean[check_metric(metric)].sum(dim=1)
    if bool((sums < 0).any()):
        raise ValueError(f"metric {metric!r} has negative layer sums; not a distribution")
    total = float(sums.sum())
    if total <= 0:
        raise ValueError(f"metric {metric!r} sums to zero over all layers; not a distribution")
    return sums / total


def emd_layers(a: VisualHeadScores, b: VisualHeadScores, metric: str = "detection", *, relative: bool = False) -> float:
    """Earth mover's distance between the per-layer mass distributions of two score maps.

    Each map's per-layer sum of head means is normalised to a distribution over layer
    positions ``0 .. n_layers - 1`` (:func:`layer_distribution`); the distance is the 1-D
    Wasserstein-1 distance ``sum_x |F_a(x) - F_b(x)| * gap(x)`` between their cumulative
    distributions, in units of layers. Example: all mass on layer 0 vs all on layer 3 gives 3.

    Args:
        a, b: the two score sets.
        metric: one of :data:`METRICS`.
        relative: place layer ``l`` at ``l / (n_layers - 1)`` (relative depth, in ``[0, 1]``)
            so models with different layer counts can be compared; needed when they differ.

    Returns:
        The distance (``>= 0``).
    """
    if a.n_layers != b.n_layers and not relative:
        raise ValueError(f"layer counts differ ({a.n_layers} vs {b.n_layers}); pass relative=True")
    pa, pb = layer_distribution(a, metric), layer_distribution(b, metric)
    xa, xb = (torch.arange(n, dtype=torch.float64) for n in (a.n_layers, b.n_layers))
    if relative:
        xa, xb = xa / max(a.n_layers - 1, 1), xb / max(b.n_layers - 1, 1)
    support = torch.unique(torch.cat([xa, xb]))  # sorted
    cdf_a = torch.zeros_like(support).index_add_(0, torch.searchsorted(support, xa), pa).cumsum(0)
    cdf_b = torch.zeros_like(support).index_add_(0, torch.searchsorted(support, xb), pb).cumsum(0)
    return float(((cdf_a - cdf_b).abs()[:-1] * support.diff()).sum())


# --------------------------------------------------------------------------------------------
# Helpers


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else ``ValueError``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _check_k(k: int, available: int, where: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if k > available:
        raise ValueError(f"asked for {k} heads but {where} has only {available}")
