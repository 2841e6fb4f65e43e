"""``vh-lens mask`` under torchrun (2 ranks): one output, from rank 0, equal to one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import vh_lens
from tests.distributed.conftest import ROOT
from vh_lens.analysis.logit_lens import LogitLensResult
from vh_lens.cli import main
from vh_lens.data.shapes import shapes
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.functional_heads.probes import ProbeResult
from vh_lens.toy import TOY_PATH, load_toy
from vh_lens.visual_heads import METRICS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_dist")
    (root / "images").mkdir()
    lines = []
    counting = [s for s in shapes(40, seed=5) if str(s.answer).isdigit()][:7]  # 7: ranks run 4 and 3
    for i, s in enumerate(counting):
        s.load_image().save(root / "images" / f"{i}.png")
        lines.append(
            {
                "image": f"{i}.png",
                "question": s.question,
                "choices": [str(n) for n in range(8)],
                "answer": "ABCDEFGH"[int(s.answer)],
            }
        )
    assert len(lines) == 7
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    scores = vh_lens.scan_visual_heads(load_toy(), shapes(6, seed=1), batch_size=3, progress=False)
    scores.save(root / "scores")
    return root


def _args(root, out) -> list[str]:
    return [
        "mask",
        "--model",
        str(TOY_PATH),
        "--data",
        str(root / "data.jsonl"),
        "--format",
        "jsonl",
        "--images",
        str(root / "images"),
        "--scores",
        str(root / "scores"),
        "--out",
        str(out),
        "--ks",
        "2",
        "5",
        "--seeds",
        "0",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]


def torchrun_cli(args: list[str]) -> subprocess.CompletedProcess:
    """``vh-lens ARGS`` under ``torchrun --nproc-per-node 2`` (gloo, one thread per rank); must succeed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), VH_LENS_DIST_TIMEOUT="120")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "vh_lens.cli",
            *args,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_mask_command_under_torchrun_writes_one_result_equal_to_one_process(files) -> None:
    one, two = files / "one", files / "two"
    assert main(_args(files, one)) == 0
    torchrun_cli(_args(files, two))
    a, b = vh_lens.MaskingResult.load(one), vh_lens.MaskingResult.load(two)
    assert b.metadata["world_size"] == 2 and b.metadata["samples_per_rank"] == [4, 3]
    assert a.rows == b.rows and a.baseline == b.baseline and a.n_samples == b.n_samples == 7
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []  # no partial folders left
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_scan_command_under_torchrun_splits_and_equals_one_process(tmp_path) -> None:
    args = ["scan", "--n-samples", "7", "--batch-size", "2", "--keep-per-sample", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    proc = torchrun_cli([*args, "--out", str(two)])
    assert proc.stdout.count("top heads by detection score") == 1  # the summary, from rank 0 only
    a, b = vh_lens.VisualHeadScores.load(one / "scores"), vh_lens.VisualHeadScores.load(two / "scores")
    assert b.metadata["world_size"] == 2 and b.metadata["samples_per_rank"] == [4, 3]
    assert a.metadata["samples_per_rank"] == [7] and a.count == b.count == 7
    for m in METRICS:
        assert (a.mean[m] - b.mean[m]).abs().max() <= 1e-10, m
        assert (a.variance[m] - b.variance[m]).abs().max() <= 1e-10, m
        assert (a.per_sample[m] - b.per_sample[m]).abs().max() <= 1e-10, m
    assert sorted((two / "checkpoint").iterdir()) and {p.name for p in (two / "checkpoint").glob("rank*")} == {
        "rank0-of-2",
        "rank1-of-2",
    }  # each rank checkpointed its own shard
    assert json.loads((two / "checkpoint" / "rank1-of-2" / "checkpoint.json").read_text())["count"] == 3


def test_lens_command_under_torchrun_splits_and_equals_one_process(files) -> None:
    args = [
        "lens",
        "--model",
        str(TOY_PATH),
        "--data",
        str(files / "data.jsonl"),
        "--format",
        "jsonl",
        "--images",
        str(files / "images"),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    one, two = files / "lens_one", files / "lens_two"
    assert main([*args, "--out", str(one)]) == 0
    proc = torchrun_cli([*args, "--out", str(two)])
    assert proc.stdout.count("| layer") <= 1 and proc.stdout == (one / "lens.md").read_text()  # rank 0 prints
    a, b = LogitLensResult.load(one / "lens"), LogitLensResult.load(two / "lens")
    assert b.n_samples == 7
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
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (one / "lens.md").read_text() == (two / "lens.md").read_text()


def test_probe_command_under_torchrun_splits_and_equals_one_process(tmp_path) -> None:
    from conftest import (
        tiny_pair,  # tests/conftest.py, as tests/commands/test_cli_probe.py imports it
    )
    from test_functional import write_cogqa_file

    hf, processor = tiny_pair("llava", "llama")
    hf.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = write_cogqa_file(tmp_path / "cogqa.json", n_items=5)  # 15 subquestions: ranks run 8 and 7
    args = [
        "probe",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--no-progress",
        "--batch-size",
        "4",
        "--save-activations",
        "--mode",
        "ovr",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    torchrun_cli([*args, "--out", str(two)])
    acts = HeadActivations.load(two / "activations", mmap=False)
    assert acts.metadata["world_size"] == 2 and acts.metadata["samples_per_rank"] == [8, 7]
    assert torch.equal(
        torch.as_tensor(acts.acts), torch.as_tensor(HeadActivations.load(one / "activations", mmap=False).acts)
    )
    pa, pb = ProbeResult.load(one / "probe"), ProbeResult.load(two / "probe")
    assert torch.equal(pa.ovr_accuracy, pb.ovr_accuracy) and torch.equal(pa.test_index, pb.test_index)
    for name in ("head_scores.csv", "functional_heads.csv", "sparsity.csv"):
        assert (one / name).read_text() == (two / name).read_text(), name
