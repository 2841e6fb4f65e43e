"""The engine's data types: conditions, prepared batches, the reducer base class and worlds.

:mod:`vh_lens.engine` re-exports every name here; import them from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vh_lens.core.hooks import FwdHook, first_hooked_layer

__all__ = [
    "BASELINE",
    "LOCAL",
    "Condition",
    "LocalWorld",
    "PreparedBatch",
    "PreparedSamples",
    "Reducer",
    "World",
]


# --------------------------------------------------------------------------------------------
# Conditions


@dataclass(frozen=True)
class Condition:
    """A named set of forward hooks that a run is made under.

    Attributes:
        name: the condition's name (unique within one :func:`run_conditions`).
        fwd_hooks: ``(hook name or filter, fn)`` pairs, attached for each batch before the
            reducer's own hooks (so a reducer reads what the intervention produced).
        first_layer: the first layer the hooks change, declared by the caller; ``None``: derived
            from the hook names (:func:`vh_lens.core.hooks.first_hooked_layer`), see
            :attr:`start_layer`.
        metadata: anything the experiment wants to keep with the condition (heads, seed...).
    """

    name: str = "baseline"
    fwd_hooks: tuple[FwdHook, ...] = ()
    first_layer: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Condition.name must be a non-empty string, got {self.name!r}")
        hooks = tuple(tuple(h) for h in self.fwd_hooks)
        if any(len(h) != 2 or not callable(h[1]) for h in hooks):
            raise ValueError(f"Condition.fwd_hooks of {self.name!r} must be (name, fn) pairs")
        object.__setattr__(self, "fwd_hooks", hooks)
        if self.first_layer is not None and (
            isinstance(self.first_layer, bool) or not isinstance(self.first_layer, int) or self.first_layer < 0
        ):
            raise ValueError(f"Condition.first_layer must be None or a layer index >= 0, got {self.first_layer!r}")

    @property
    def start_layer(self) -> int:
        """Where a sweep may start: the declared :attr:`first_layer`, else the lowest hooked layer.

        0 when the hooks touch something before the first block or use name filters; the number
        of layers is not known here, so a condition without hooks also gives 0.
        """
        if self.first_layer is not None:
            return self.first_layer
        derived = first_hooked_layer(self.fwd_hooks)
        return 0 if derived is None else derived


BASELINE = Condition("baseline")
"""The condition without hooks."""


# --------------------------------------------------------------------------------------------
# Prepared batches


@dataclass(frozen=True, eq=False)
class PreparedBatch:
    """One batch of samples, ready for forward passes.

    Attributes:
        start: index of ``samples[0]`` in the whole data set (before sharding).
        samples: the samples, in batch order.
        batch: the model's batch (a :class:`~vh_lens.LlavaBatch`; for answer scoring, with
            the shared candidate prefix appended).
        answers: the :class:`~vh_lens.evaluation.scoring.AnswerBatch` when prepared with
            ``answers=`` (its ``batch`` is :attr:`batch`), else ``None``.
    """

    start: int
    samples: tuple[Any, ...]
    batch: Any
    answers: Any | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def indices(self) -> range:
        """Indices of the samples in the whole data set."""
        return range(self.start, self.start + len(self.samples))

    @property
    def layouts(self) -> list[Any]:
        return list(self.batch.layout)


@dataclass(frozen=True, eq=False)
class PreparedSamples:
    """Batches prepared once and reused by every run (see :func:`prepare`).

    Attributes:
        batches: the batches, in sample order.
        n_total: samples in the whole data set (all shards).
        answers: the answer method they were prepared for (``"score"``, ``"generate"``) or ``None``.
        world: the :class:`World` whose shard this is; :func:`run` reduces over it by default.
    """

    batches: tuple[PreparedBatch, ...]
    n_total: int
    answers: str | None = None
    world: Any = None

    def __iter__(self) -> Iterator[PreparedBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def n_samples(self) -> int:
        """Samples prepared in this process."""
        return sum(len(b) for b in self.batches)

    @property
    def samples(self) -> list[Any]:
        return [s for b in self.batches for s in b.samples]


# --------------------------------------------------------------------------------------------
# Reducers


class Reducer:
    """What a run computes. Subclass it and override what you need.

    The engine calls, for each batch: :meth:`hooks` (the hooks that read activations; they are
    attached after the condition's), :meth:`forward` (default: ``model.run_with_hooks``), then
    :meth:`update` with the forward's output. :meth:`result` turns the state into the result.

    For resumable and data-parallel runs, implement :meth:`state_dict` /
    :meth:`load_state_dict` (tensors and JSON values) and :meth:`merge` (fold the reducer of
    the *following* samples into this one: ``a.merge(b)`` must give what one reducer that saw
    ``a``'s samples, then ``b``'s, gives).
    """

    def hooks(self, item: PreparedBatch) -> list[FwdHook]:
        """Hooks that read this batch's activations (default: none)."""
        return []

    def forward(self, model: Any, item: PreparedBatch, fwd_hooks: list[FwdHook]) -> Any:
        """The forward pass of one batch under ``fwd_hooks`` (default: logits of ``run_with_hooks``)."""
        return model.run_with_hooks(item.batch, fwd_hooks=fwd_hooks)

    def update(self, output: Any, item: PreparedBatch) -> None:
        """Fold one batch's output (logits by default) into the state."""

    def result(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.result")

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved (no state_dict)")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be restored (no load_state_dict)")

    def merge(self, other: Reducer) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged")


# --------------------------------------------------------------------------------------------
# Worlds (data parallelism)


@runtime_checkable
class World(Protocol):
    """Which samples this process runs, and how the processes' reducers are combined.

    ``shard(n)`` returns the contiguous range of sample indices (out of ``n``) this process
    prepares and runs; the ranks' ranges, in rank order, must cover ``0..n-1``.
    ``reduce(reducer)`` returns the reducer of all samples (e.g. gather every rank's
    ``state_dict``, load them into fresh reducers and ``merge`` them in rank order); it is
    called once at the end of :func:`run` on every process.
    """

    rank: int
    size: int

    def shard(self, n: int) -> range: ...

    def reduce(self, reducer: Reducer) -> Reducer: ...


@dataclass(frozen=True)
class LocalWorld:
    """One process that runs every sample."""

    rank: int = 0
    size: int = 1

    def shard(self, n: int) -> range:
        return range(n)

    def reduce(self, reducer: Reducer) -> Reducer:
        return reducer


LOCAL = LocalWorld()
