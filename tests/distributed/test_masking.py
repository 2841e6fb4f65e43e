"""Masking (zero and mean ablation, the means reduced over ranks) under torchrun equals one process."""

from __future__ import annotations

import torch

import vh_lens
from tests.distributed.conftest import check, torchrun
from vh_lens.data.shapes import shapes
from vh_lens.toy import load_toy

N = 7


def test_masking_two_ranks_equal_one_process(tmp_path) -> None:
    out = tmp_path / "mask"
    check(torchrun("mask", "--n-samples", str(N), "--out", str(out)))
    torch.set_num_threads(1)
    model = load_toy()
    scores = vh_lens.scan_visual_heads(model, shapes(6, seed=1), batch_size=3, progress=False)
    samples = shapes(N, seed=5)
    for method in ("zero", "mean"):
        one = vh_lens.masking_experiment(
            model, samples, scores, ks=(2, 5), control_seeds=(0, 1), method=method, batch_size=2, progress=False
        )
        two = vh_lens.MaskingResult.load(out / method)
        assert two.metadata["world_size"] == 2 and two.metadata["samples_per_rank"] == [4, 3]
        assert one.metadata["world_size"] == 1 and one.metadata["samples_per_rank"] == [N]
        assert two.n_samples == one.n_samples == N
        assert two.baseline == one.baseline
        for a, b in zip(one.rows, two.rows, strict=True):
            assert (a.stage, a.k, a.top_heads, a.random_heads) == (b.stage, b.k, b.top_heads, b.random_heads)
            assert a.top_acc == b.top_acc and a.random_accs == b.random_accs, (method, a.stage, a.k)
        # the means of "mean" ablation were reduced over all ranks, not rank 0's shard
        assert two.metadata["means"] == one.metadata["means"]
