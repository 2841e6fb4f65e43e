"""Each head's mean output before ``W_O`` (``hook_z``) over a reference set, for mean ablation.

:func:`head_means` streams the reference set through the engine with a :class:`HeadMeansReducer`
(float64 sums, no activation cache); :class:`HeadMeans` saves and loads the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from vh_lens.core.hooks import FwdHook, act_name
from vh_lens.core.io import load_tensors, read_json, save_tensors, write_json
from vh_lens.data.sample import Sample
from vh_lens.engine import PreparedBatch, Reducer, run

__all__ = ["HeadMeans", "HeadMeansReducer", "head_means"]

_MEAN_POSITIONS = ("all", "last_prompt")
_MEANS_FORMAT = "vh_lens.HeadMeans"
_MEANS_FILE = "means.safetensors"
_METADATA_FILE = "metadata.json"


@dataclass(frozen=True, eq=False)
class HeadMeans:
    """Each head's mean output before ``W_O`` (``hook_z``) over a reference set.

    Attributes:
        mean: ``[n_layers, n_heads, d_head]`` float32 means.
        count: number of (sample, position) pairs averaged.
        positions: which positions were averaged: ``"all"`` (every non-padding position) or
            ``"last_prompt"`` (each sample's answer query position).
    """

    mean: Float[Tensor, "n_layers n_heads d_head"]
    count: int
    positions: str = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.mean, Tensor) or self.mean.ndim != 3:
            raise ValueError("HeadMeans.mean must be a [n_layers, n_heads, d_head] tensor")
        if not self.mean.is_floating_point():
            raise ValueError(f"HeadMeans.mean must be floating point, got {self.mean.dtype}")
        if int(self.count) <= 0:
            raise ValueError(f"HeadMeans.count must be positive, got {self.count}")
        if self.positions not in _MEAN_POSITIONS:
            raise ValueError(f"HeadMeans.positions must be one of {_MEAN_POSITIONS}, got {self.positions!r}")
        object.__setattr__(self, "count", int(self.count))

    def save(self, directory: str | Path) -> Path:
        """Save to ``directory``: ``means.safetensors``, then ``metadata.json`` (each atomically).

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / _MEANS_FILE, {"mean": self.mean}, {"format": _MEANS_FORMAT})
        info = {"format": _MEANS_FORMAT, "version": 1, "count": self.count, "positions": self.positions}
        write_json(directory / _METADATA_FILE, info, indent=2)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> HeadMeans:
        """Load means saved by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: the directory holds something else.
        """
        directory = Path(directory)
        info = read_json(directory / _METADATA_FILE, expected_format=_MEANS_FORMAT, what="HeadMeans", version=1)
        mean = load_tensors(directory / _MEANS_FILE)["mean"]
        return cls(mean=mean, count=info["count"], positions=info["positions"])


def _accumulate_z_hook(
    z: Float[Tensor, "batch pos head_index d_head"],
    *,
    hook: HookPoint,
    sums: Float[Tensor, "n_layers n_heads d_head"],
    weights: Float[Tensor, "batch pos"],
) -> None:
    total = einops.einsum(weights.to(device=z.device, dtype=torch.float64), z.double(), "b p, b p h d -> h d")
    sums[hook.layer()] += total.to(sums.device)


def _batches(model: Any, data: Any, batch_size: int) -> Iterator[PreparedBatch]:
    """Engine batches from samples (chunked by ``batch_size``), prepared batches and/or engine batches."""
    if hasattr(data, "attention_mask"):
        yield _wrap(data)
        return
    if isinstance(data, PreparedBatch):
        yield data
        return
    pending: list[Sample] = []
    for item in data:
        if isinstance(item, Sample):
            pending.append(item)
            if len(pending) == batch_size:
                yield PreparedBatch(0, tuple(pending), model.prepare_samples(pending))
                pending = []
        else:
            if pending:
                yield PreparedBatch(0, tuple(pending), model.prepare_samples(pending))
                pending = []
            yield item if isinstance(item, PreparedBatch) else _wrap(item)
    if pending:
        yield PreparedBatch(0, tuple(pending), model.prepare_samples(pending))


def _wrap(batch: Any) -> PreparedBatch:
    return PreparedBatch(0, (None,) * len(batch), batch)


def _position_weights(batch: Any, positions: str) -> Float[Tensor, "batch pos"]:
    mask = batch.attention_mask.detach().cpu().bool()
    if positions == "all":
        return mask.double()
    weights = torch.zeros(mask.shape, dtype=torch.float64)
    query = torch.tensor([int(lay.query_position) for lay in batch.layout])
    weights[torch.arange(mask.shape[0]), query] = 1.0
    if not bool((weights.bool() <= mask).all()):
        raise ValueError("a query position falls on padding")
    return weights


class HeadMeansReducer(Reducer):
    """The engine's reducer behind :func:`head_means`: float64 sums of every head's ``hook_z``.

    Each batch's ``hook_z`` of every layer is weighted by the positions to average
    (:func:`head_means`'s ``positions``) and summed at once; :meth:`result` divides by the count.

    Args:
        cfg: the model config (``n_layers``, ``n_heads``, ``d_head``).
        positions: ``"all"`` non-padding positions or ``"last_prompt"``.
    """

    def __init__(self, cfg: Any, positions: Literal["all", "last_prompt"] = "all") -> None:
        if positions not in _MEAN_POSITIONS:
            raise ValueError(f"positions must be one of {_MEAN_POSITIONS}, got {positions!r}")
        self.positions = positions
        self.n_layers = int(cfg.n_layers)
        self.sums = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head, dtype=torch.float64)
        self.count = 0.0
        self._weights: Tensor | None = None

    def hooks(self, item: PreparedBatch) -> list[FwdHook]:
        self._weights = _position_weights(item.batch, self.positions)
        hook = partial(_accumulate_z_hook, sums=self.sums, weights=self._weights)
        return [(act_name("z", layer), hook) for layer in range(self.n_layers)]

    def update(self, output: Any, item: PreparedBatch) -> None:
        assert self._weights is not None
        self.count += float(self._weights.sum())
        self._weights = None

    def result(self) -> HeadMeans:
        if self.count == 0:
            raise ValueError("head_means: the reference set has no positions to average")
        return HeadMeans(mean=(self.sums / self.count).float(), count=round(self.count), positions=self.positions)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "count": self.count, "positions": self.positions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["positions"] != self.positions or tuple(state["sums"].shape) != tuple(self.sums.shape):
            raise ValueError("state is for other positions or another model shape")
        self.sums.copy_(state["sums"])
        self.count = float(state["count"])

    def merge(self, other: Reducer) -> None:
        if not isinstance(other, HeadMeansReducer) or other.positions != self.positions:
            raise ValueError("can only merge a HeadMeansReducer over the same positions")
        self.sums += other.sums
        self.count += other.count


def head_means(
    model: Any,
    data: Iterable[Any] | Any,  # samples and/or prepared batches, or one prepared batch
    positions: Literal["all", "last_prompt"] = "all",
    batch_size: int = 8,
) -> HeadMeans:
    """Mean of every head's ``hook_z`` over a reference set, streamed batch by batch.

    Only ``hook_z`` is hooked and reduced on the fly (no activation cache).

    Args:
        model: a :class:`vh_lens.LlavaLens`-like model: ``cfg``, ``run_with_hooks(batch,
            fwd_hooks=...)``, ``prepare_samples(samples)``; batches carry ``attention_mask``
            ``[batch, pos]`` and ``layout`` (one :class:`~vh_lens.core.layout.TokenLayout` each).
        data: :class:`~vh_lens.data.Sample` objects (batched by ``batch_size``) and/or prepared
            batches (:class:`~vh_lens.LlavaBatch` or :class:`~vh_lens.engine.PreparedBatch`), a
            single prepared batch, or :class:`~vh_lens.engine.PreparedSamples`.
        positions: ``"all"`` non-padding positions, or ``"last_prompt"``: each sample's
            answer query position (``layout.query_position``).
        batch_size: samples per forward pass when ``data`` holds samples.

    Returns:
        :class:`HeadMeans` with ``mean`` ``[n_layers, n_heads, d_head]``.

    Example:
        >>> means = head_means(model, reference_samples, positions="all")  # doctest: +SKIP
        >>> hooks = ablate_heads(top_heads, "mean", means=means)  # doctest: +SKIP
    """
    if positions not in _MEAN_POSITIONS:
        raise ValueError(f"positions must be one of {_MEAN_POSITIONS}, got {positions!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    reducer = HeadMeansReducer(model.cfg, positions)
    # prepared samples carry their world (data-parallel shards): the means are over all ranks
    reducer = run(model, _batches(model, data, batch_size), reducer, world=getattr(data, "world", None))
    return reducer.result()
