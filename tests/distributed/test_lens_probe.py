"""Logit lens and probe activations under torchrun (2 ranks, odd count) equal one process."""

from __future__ import annotations

import torch

import vh_lens
from tests.distributed.conftest import check, torchrun
from tests.distributed.worker import probe_samples
from vh_lens.analysis.logit_lens import LogitLensResult, logit_lens_samples
from vh_lens.data.shapes import shapes
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.toy import load_toy
from vh_lens.visual_heads import METRICS

N = 7


def test_lens_and_probe_two_ranks_equal_one_process(tmp_path) -> None:
    check(torchrun("lens_probe", "--n-samples", str(N), "--out", str(tmp_path)))
    torch.set_num_threads(1)
    model = load_toy()
    samples = shapes(N, seed=5)
    one = logit_lens_samples(model, samples, batch_size=2)  # this process: no torchrun, one world
    two = LogitLensResult.load(tmp_path / "lens")
    for name in (
        "positions",
        "final_ids",
        "final_rank",
        "final_prob",
        "top_ids",
        "top_probs",
        "answer_rank",
        "answer_prob",
    ):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    assert one.top_tokens == two.top_tokens and two.final_rank.shape[1] == N
    # independent of the engine's batching: the lens of each sample alone
    alone = logit_lens_samples(model, samples[N - 1 :], batch_size=1)
    assert torch.allclose(alone.final_prob[:, 0], two.final_prob[:, N - 1], atol=1e-5)

    # evaluate: the predictions of both ranks, in sample order, as one process gives them
    import dataclasses
    import json

    evaluated = vh_lens.evaluate(model, samples, batch_size=2, progress=False)
    want = json.loads(json.dumps([dataclasses.asdict(p) for p in evaluated.predictions]))
    assert json.loads((tmp_path / "evaluate.json").read_text()) == want and len(want) == N

    acts_one = vh_lens.collect_head_activations(model, probe_samples(N), batch_size=2, progress=False)
    acts_two = HeadActivations.load(tmp_path / "acts", mmap=False)
    assert torch.equal(torch.as_tensor(acts_one.acts), torch.as_tensor(acts_two.acts))
    assert acts_one.labels == acts_two.labels and acts_one.groups == acts_two.groups
    assert acts_two.metadata["world_size"] == 2 and acts_two.metadata["samples_per_rank"] == [4, 3]
    assert acts_one.metadata["world_size"] == 1 and acts_one.metadata["samples_per_rank"] == [N]
    probes_one = vh_lens.probe_heads(acts_one, steps=30)
    probes_two = vh_lens.probe_heads(acts_two, steps=30)
    assert torch.equal(probes_one.ovr_accuracy, probes_two.ovr_accuracy)
    assert torch.equal(probes_one.test_index, probes_two.test_index)


def test_entry_points_in_one_process_record_the_world() -> None:
    torch.set_num_threads(1)
    model = load_toy()
    samples = shapes(3, seed=2)
    scores = vh_lens.scan_visual_heads(model, samples, batch_size=2, progress=False)
    assert scores.metadata["world_size"] == 1 and scores.metadata["samples_per_rank"] == [3]
    streamed = vh_lens.scan_visual_heads(model, iter(samples), batch_size=2, progress=False)
    assert streamed.metadata["samples_per_rank"] == [3]
    assert all(torch.equal(scores.mean[m], streamed.mean[m]) for m in METRICS)
