"""The pure parts of :mod:`vh_lens.distributed` (no process group)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from vh_lens import distributed
from vh_lens.visual_heads.scan import HEAD_METRICS, ScoreAccumulator


@pytest.mark.parametrize(("n", "world"), [(0, 1), (7, 2), (8, 2), (5, 3), (2, 4), (100, 7)])
def test_shards_are_contiguous_cover_everything_and_balanced(n: int, world: int) -> None:
    shards = [distributed.shard_range(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    sizes = distributed.samples_per_rank(n, world)
    assert sizes == [len(s) for s in shards] and sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.unchecked_arguments  # passes a float and a bool on purpose: the function's own error
def test_shard_range_refuses_bad_arguments() -> None:
    for args in ((5, 2, 2), (5, -1, 2), (-1, 0, 1), (5, 0, 0), (5.0, 0, 1), (True, 0, 1)):
        with pytest.raises(ValueError):
            distributed.shard_range(*args)


@pytest.mark.unchecked_arguments  # also passes an iterator on purpose: the function's own error
def test_shard_is_lazy_and_one_process_is_everything() -> None:
    reads: list[int] = []

    class Items(Sequence):  # a lazy sequence: reading an item is recorded
        def __len__(self):
            return 5

        def __getitem__(self, i):
            reads.append(i)
            return i * 10

    part = distributed.shard(Items(), distributed.DistContext(rank=1, world_size=2, backend="gloo"))
    assert reads == [] and len(part) == 2
    assert list(part) == [30, 40] and reads == [3, 4]
    assert list(distributed.shard(list(range(3)), distributed.DistContext())) == [0, 1, 2]
    with pytest.raises(TypeError, match="sequence"):
        distributed.shard(iter([1]), distributed.DistContext())


def test_launch_detection_from_environment(monkeypatch) -> None:
    assert distributed.launched({}) is False
    assert distributed.launched({"RANK": "0", "WORLD_SIZE": "2"}) is True
    with pytest.raises(ValueError, match="RANK but not WORLD_SIZE"):
        distributed.launched({"RANK": "0"})
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init()
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    assert ctx.metadata(5) == {"world_size": 1, "samples_per_rank": [5]}
    assert ctx.progress(True) and not distributed.DistContext(rank=1, world_size=2, backend="gloo").progress(True)
    monkeypatch.setenv("VH_LENS_DIST_TIMEOUT", "soon")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="VH_LENS_DIST_TIMEOUT"):
        distributed.init("gloo")
    monkeypatch.delenv("VH_LENS_DIST_TIMEOUT")
    with pytest.raises(ValueError, match="backend"):
        distributed.init("mpi")


def test_reduce_in_one_process_is_the_reducer_and_merge_order_matches_sequential() -> None:
    torch.manual_seed(0)
    batches = [{m: torch.rand(b, 3, dtype=torch.float64) for m in HEAD_METRICS} for b in (3, 2, 4)]
    seq = ScoreAccumulator(1, 3)
    for b in batches:
        seq.add(0, b)
    parts = [ScoreAccumulator(1, 3) for _ in range(2)]
    parts[0].add(0, batches[0])
    parts[0].add(0, batches[1])
    parts[1].add(0, batches[2])
    assert distributed.reduce_onto_main(parts[1], distributed.DistContext()) is parts[1]
    merged = parts[0]
    merged.merge(parts[1])
    for key, value in seq.state_dict().items():
        assert torch.allclose(merged.state_dict()[key].double(), value.double(), rtol=0, atol=1e-12), key
