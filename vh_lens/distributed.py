"""Data-parallel runs with ``torch.distributed``: launch detection, shards, reduction onto rank 0.

Launched under ``torchrun --nproc-per-node N`` (one or several hosts), every rank runs a
contiguous shard of the samples, keeps its own reducer (anything with ``state_dict``,
``load_state_dict`` and ``merge``, such as :class:`vh_lens.visual_heads.ScoreAccumulator`), and the reducers
are merged onto rank 0 **in rank order**, so a given world size gives bit-identical results run
to run, and the merged statistics equal one process's to float64 rounding (Chan's formula for
means and second moments, exact sums for counts). Only rank 0 shows progress and writes.

Without a ``torchrun`` launch (no ``RANK`` / ``WORLD_SIZE`` in the environment) everything here
is the one-process case: world size 1, rank 0, no process group.

Example (a script run as ``torchrun --standalone --nproc-per-node 2 script.py``)::

    ctx = vh_lens.distributed.init()                   # gloo on CPU, nccl on CUDA
    part = vh_lens.distributed.shard(samples, ctx)      # this rank's contiguous slice
    acc = ...                                           # fold this rank's batches into acc
    acc = vh_lens.distributed.reduce_onto_main(acc, ctx)  # rank 0: all ranks merged; others: None
    if ctx.is_main:
        save(acc.result(metadata=ctx.metadata(len(samples))))
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "RankFailure",
    "Reducer",
    "barrier",
    "context_of",
    "gather_onto_main",
    "guard",
    "init",
    "is_main_process",
    "launched",
    "on_main_first",
    "rank_checkpoint_dir",
    "reduce_onto_main",
    "samples_per_rank",
    "shard",
    "shard_range",
    "world_metadata",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a collective waits for the other ranks before the run fails (env ``VH_LENS_DIST_TIMEOUT``)."""


class RankFailure(RuntimeError):
    """Another rank did not reach a collective in time (it died or hung): the run is failed."""


class Reducer(Protocol):
    """What :func:`reduce_onto_main` merges: a streaming statistic with a state and a merge."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> None: ...

    def merge(self, other: Any) -> None: ...


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a run.

    Attributes:
        rank: global rank (0 in one process).
        world_size: number of ranks (1 in one process).
        local_rank: rank on this host (selects the CUDA device).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (no process group: one process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that shows progress and writes results."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is a process group (more than one rank)."""
        return self.backend is not None

    def device(self) -> torch.device:
        """The device this rank should use: ``cuda:{local_rank}`` with nccl, else CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def progress(self, requested: bool = True) -> bool:
        """Show a progress bar here? Only when requested and on rank 0."""
        return bool(requested) and self.is_main

    def metadata(self, n_samples: int) -> dict[str, Any]:
        """``{"world_size": ..., "samples_per_rank": [...]}`` for a result's metadata."""
        return {"world_size": self.world_size, "samples_per_rank": samples_per_rank(n_samples, self.world_size)}


def launched(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting its env vars).

    ``RANK`` and ``WORLD_SIZE`` must both be there; a half-set environment is refused.
    """
    env = os.environ if env is None else env
    present = [k for k in ("RANK", "WORLD_SIZE") if k in env]
    if len(present) == 1:
        missing = ({"RANK", "WORLD_SIZE"} - set(present)).pop()
        raise ValueError(f"environment sets {present[0]} but not {missing}: launch with torchrun, or unset both")
    return len(present) == 2


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch, or a process not launched by it (no process group needed)."""
    return not launched() or _env_int(os.environ, "RANK") == 0


def _env_int(env: Any, name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _timeout_s(env: Any) -> float:
    value = env.get("VH_LENS_DIST_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"VH_LENS_DIST_TIMEOUT must be a number of seconds, got {value!r}") from None
    if not out > 0:
        raise ValueError(f"VH_LENS_DIST_TIMEOUT must be positive, got {value!r}")
    return out


def init(backend: str | None = None, *, timeout_s: float | None = None) -> DistContext:
    """Start (or join) the process group of a ``torchrun`` launch; one process without one.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective waits for the other ranks (default
            ``VH_LENS_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`).

    Returns:
        The :class:`DistContext`; called again, the same context (the group is started once).
    """
    env = os.environ
    if not launched(env):
        return DistContext()
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local = _env_int(env, "LOCAL_RANK", 0)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, which is not available: use 'gloo'")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else _timeout_s(env))
        dist.init_process_group(backend=backend, timeout=timeout)
    elif dist.get_backend() != backend:
        raise ValueError(f"a {dist.get_backend()} process group is already running, asked for {backend}")
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def finish(ctx: DistContext) -> None:
    """Tear the process group down (after the last collective)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- shards


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Sample indices of ``rank``: contiguous, the first ``n % world_size`` ranks one longer.

    Concatenated in rank order the shards are ``range(n)``, so per-sample results gathered in
    rank order are in the data set's order.

    Example:
        >>> [list(shard_range(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    for name, value in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size {world_size})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def samples_per_rank(n: int, world_size: int) -> list[int]:
    """How many samples each rank runs (the metadata's ``samples_per_rank``)."""
    return [len(shard_range(n, r, world_size)) for r in range(world_size)]


def world_metadata(world: Any, n: int) -> dict[str, Any]:
    """``{"world_size": ..., "samples_per_rank": [...]}`` of an engine :class:`~vh_lens.engine.World` over ``n`` samples."""
    return {"world_size": int(world.size), "samples_per_rank": samples_per_rank(n, int(world.size))}


def context_of(world: Any) -> DistContext:
    """The :class:`DistContext` of an engine world (its ``ctx``; else its rank and size, gloo)."""
    ctx = getattr(world, "ctx", None)
    if isinstance(ctx, DistContext):
        return ctx
    size = int(world.size)
    return DistContext(rank=int(world.rank), world_size=size, backend="gloo" if size > 1 else None)


T = TypeVar("T")


class _Shard(Sequence):
    """A lazy contiguous view of a sequence (items are read when iterated, not when sharded)."""

    def __init__(self, items: Sequence[T], indices: range):
        self._items, self._indices = items, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._items[j] for j in self._indices[i]]
        return self._items[self._indices[i]]

    def __iter__(self) -> Iterator[T]:
        for j in self._indices:
            yield self._items[j]


def shard(items: Sequence[T], ctx: DistContext) -> Sequence[T]:
    """This rank's contiguous part of ``items`` (:func:`shard_range`); all of it in one process."""
    if not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
        raise TypeError(f"shard needs a sequence (len and indexing), got {type(items).__name__}")
    return _Shard(items, shard_range(len(items), ctx.rank, ctx.world_size))


# --------------------------------------------------------------------------- collectives


def _collective(ctx: DistContext, what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as err:  # a peer died or timed out
        raise RankFailure(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed, another rank died or hung "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err


def barrier(ctx: DistContext, what: str = "barrier", *, timeout_s: float | None = None) -> None:
    """Wait for every rank; a rank that does not arrive fails the run with :class:`RankFailure`.

    On gloo this is ``monitored_barrier``, which names the ranks that did not arrive.
    """
    if not ctx.active:
        return
    if ctx.backend == "gloo":
        kwargs: dict[str, Any] = {"wait_all_ranks": True}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        _collective(ctx, what, lambda: dist.monitored_barrier(**kwargs))
    else:
        _collective(ctx, what, lambda: dist.barrier(device_ids=[ctx.local_rank]))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def gather_onto_main(value: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``value`` (tensors moved to CPU) on rank 0, in rank order; ``None`` elsewhere."""
    value = _to_cpu(value)
    if not ctx.active:
        return [value]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    _collective(ctx, "gathering results onto rank 0", lambda: dist.gather_object(value, out, dst=0))
    return out


def reduce_onto_main(reducer: T, ctx: DistContext) -> T | None:
    """Merge every rank's reducer onto rank 0's, in rank order (deterministic); ``None`` elsewhere.

    Rank ``r``'s state is loaded into a copy of rank 0's reducer and merged with
    ``reducer.merge``, for ``r = 1, 2, ...``, so the same world size gives the same bits.
    """
    states = gather_onto_main(reducer.state_dict(), ctx)  # type: ignore[attr-defined]
    if states is None:
        return None
    for state in states[1:]:
        other = copy.deepcopy(reducer)
        other.load_state_dict(state)  # type: ignore[attr-defined]
        reducer.merge(other)  # type: ignore[attr-defined]
    return reducer


def broadcast_from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a decision taken by rank 0)."""
    if not ctx.active:
        return value
    box = [value if ctx.is_main else None]
    _collective(ctx, "broadcast from rank 0", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def on_main_first(fn: Callable[[], T], ctx: DistContext, what: str) -> T:
    """``fn()`` on rank 0 (e.g. preparing an output folder), then its value on every rank.

    An error on rank 0 is raised there and, as a ``ValueError`` with its message, on the
    other ranks (which do not wait for a timeout). In one process: ``fn()``.
    """
    if not ctx.active:
        return fn()
    value, error = None, None
    if ctx.is_main:
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised here
            error = err
    box = broadcast_from_main((value, None if error is None else f"{type(error).__name__}: {error}"), ctx)
    if error is not None:
        raise error
    if box[1] is not None:
        raise ValueError(f"rank 0 failed {what}: {box[1]}")
    return box[0]


# --------------------------------------------------------------------------- failure, checkpoints


@contextmanager
def guard(ctx: DistContext) -> Iterator[DistContext]:
    """Run a rank's work; an error prints one line naming the rank and exits with status 1.

    ``torchrun`` then stops the other ranks and reports the failed one; ranks waiting in a
    collective fail with :class:`RankFailure` instead of hanging (process-group timeout).
    """
    try:
        yield ctx
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - one line per rank, then a clean exit
        if not ctx.active:
            raise
        print(
            f"vh_lens: rank {ctx.rank} of {ctx.world_size} failed: {type(err).__name__}: {err}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from err
    finally:
        finish(ctx)


def rank_checkpoint_dir(base: str | os.PathLike[str], ctx: DistContext) -> Path:
    """This rank's checkpoint folder under ``base``: ``base`` itself in one process, else
    ``base/rank{r}-of-{w}``. A resume must use the world size the checkpoints were written with;
    other world sizes' folders under ``base`` are refused, naming them.
    """
    base = Path(base)
    if not ctx.active:
        others = sorted(p.name for p in base.glob("rank*-of-*")) if base.is_dir() else []
        if others:
            raise ValueError(
                f"{base} holds checkpoints of a multi-process run ({others[0]}, ...): "
                "resume with the same torchrun --nproc-per-node, or start afresh"
            )
        return base
    mine = f"rank{ctx.rank}-of-{ctx.world_size}"
    if base.is_dir():
        others = sorted(
            p.name for p in base.iterdir() if p.name.startswith("rank") and not p.name.endswith(f"-of-{ctx.world_size}")
        )
        if others or (base / "checkpoint.json").is_file():
            found = others[0] if others else "checkpoint.json (one process)"
            raise ValueError(
                f"{base} holds checkpoints written with another world size ({found}): resume with "
                f"that number of processes, or start afresh"
            )
    return base / mine


# --------------------------------------------------------------------------- the engine's World


@dataclass(frozen=True)
class TorchWorld:
    """The ranks of a ``torchrun`` launch as a :class:`vh_lens.engine.World`.

    ``shard(n)`` is this rank's :func:`shard_range`; ``reduce(reducer)`` gathers every rank's
    ``state_dict`` onto **every** rank and merges them there in rank order (rank 0's state,
    then 1's, ...), so every rank holds the same total (the same bits) and code after a run
    (choosing heads, computing means) goes on identically everywhere; only rank 0 writes.
    """

    ctx: DistContext

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def size(self) -> int:
        return self.ctx.world_size

    def shard(self, n: int) -> range:
        return shard_range(n, self.ctx.rank, self.ctx.world_size)

    def reduce(self, reducer: Any) -> Any:
        if not self.ctx.active:
            return reducer
        states: list[Any] = [None] * self.ctx.world_size
        mine = _to_cpu(reducer.state_dict())
        _collective(self.ctx, f"reducing {type(reducer).__name__}", lambda: dist.all_gather_object(states, mine))
        total = copy.deepcopy(reducer)
        total.load_state_dict(states[0])
        for state in states[1:]:
            other = copy.deepcopy(reducer)
            other.load_state_dict(state)
            total.merge(other)
        return total


def current_world() -> Any:
    """The engine's world for this process: a :class:`TorchWorld` under ``torchrun`` (the process
    group started on first use), else :data:`vh_lens.engine.LOCAL`."""
    if not launched():
        from vh_lens.engine import LOCAL

        return LOCAL
    return TorchWorld(init())
