"""The scan under ``torchrun --nproc-per-node 2`` equals one process; a killed rank resumes."""

from __future__ import annotations

import json

import pytest
import torch

import vh_lens
from tests.distributed.conftest import check, torchrun
from vh_lens.data.shapes import shapes
from vh_lens.toy import load_toy
from vh_lens.visual_heads import METRICS

N = 7  # odd: ranks run 4 and 3 samples


@pytest.fixture(scope="module")
def one_process():
    torch.set_num_threads(1)
    return vh_lens.scan_visual_heads(load_toy(), shapes(N, seed=5), batch_size=2, keep_per_sample=True, progress=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_scan") / "scores"
    check(torchrun("scan", "--n-samples", str(N), "--out", str(out)))
    return vh_lens.VisualHeadScores.load(out)


def _assert_close(a, b, tol):
    assert a.count == b.count
    for m in METRICS:
        assert (a.mean[m] - b.mean[m]).abs().max() <= tol, m
        assert (a.variance[m] - b.variance[m]).abs().max() <= tol, m
        assert (a.per_sample[m] - b.per_sample[m]).abs().max() <= tol, m


def test_two_ranks_equal_one_process_with_odd_count(one_process, two_ranks) -> None:
    _assert_close(two_ranks, one_process, 1e-10)
    assert two_ranks.metadata["world_size"] == 2
    assert two_ranks.metadata["samples_per_rank"] == [4, 3]
    # the reduction is not trivially rank 0's part: the merged mean differs from a 4-sample mean
    four = vh_lens.scan_visual_heads(load_toy(), shapes(4, seed=5), batch_size=2, progress=False)
    assert (four.mean["image_weight"] - two_ranks.mean["image_weight"]).abs().max() > 1e-6


def test_killed_rank_resumes_bit_identical(two_ranks, tmp_path) -> None:
    ckpt, out, logs = tmp_path / "ckpt", tmp_path / "scores", tmp_path / "logs"
    logs.mkdir()
    args = ("scan", "--n-samples", str(N), "--out", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2")
    died = torchrun(*args, "--die-rank", "1", "--die-at", "2", "--log-dir", str(logs))
    assert died.returncode != 0
    assert "rank      : 1" in died.stderr or "rank 1" in died.stderr
    assert not out.exists()  # nothing written by a failed run
    saved = json.loads((ckpt / "rank1-of-2" / "checkpoint.json").read_text())
    assert saved["count"] == 2  # rank 1 checkpointed its first batch before it died
    (logs / "rank1.log").unlink()
    check(torchrun(*args, "--log-dir", str(logs)))
    # on the rerun rank 1 read only its last sample (index 6), after skipping none: it resumed
    read = [int(x) for x in (logs / "rank1.log").read_text().split()]
    assert read[-1] == 6 and read.count(6) == 1 and 4 not in read[read.index(6) :]
    resumed = vh_lens.VisualHeadScores.load(out)
    _assert_close(resumed, two_ranks, 0.0)  # same world size: the same bits


def test_other_world_size_checkpoint_is_refused(tmp_path) -> None:
    from vh_lens import distributed

    (tmp_path / "rank0-of-3").mkdir()
    with pytest.raises(ValueError, match="another world size"):
        distributed.rank_checkpoint_dir(tmp_path, distributed.DistContext(rank=0, world_size=2, backend="gloo"))
    with pytest.raises(ValueError, match="multi-process run"):
        distributed.rank_checkpoint_dir(tmp_path, distributed.DistContext())
