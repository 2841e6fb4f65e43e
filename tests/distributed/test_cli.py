"""``vh-lens mask`` under torchrun (2 ranks): one output, from rank 0, equal to one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import vh_lens
from tests.distributed.conftest import ROOT
from vh_lens.cli import main
from vh_lens.data.shapes import shapes
from vh_lens.toy import TOY_PATH, load_toy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_dist")
    (root / "images").mkdir()
    lines = []
    counting = [s for s in shapes(40, seed=5) if str(s.answer).isdigit()][:7]  # 7: ranks run 4 and 3
    for i, s in enumerate(counting):
        s.load_image().save(root / "images" / f"{i}.png")
        lines.append({"image": f"{i}.png", "question": s.question, "choices": [str(n) for n in range(8)],
                      "answer": "ABCDEFGH"[int(s.answer)]})
    assert len(lines) == 7
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    scores = vh_lens.scan_visual_heads(load_toy(), shapes(6, seed=1), batch_size=3, progress=False)
    scores.save(root / "scores")
    return root


def _args(root, out) -> list[str]:
    return ["mask", "--model", str(TOY_PATH), "--data", str(root / "data.jsonl"), "--format", "jsonl",
            "--images", str(root / "images"), "--scores", str(root / "scores"), "--out", str(out),
            "--ks", "2", "5", "--seeds", "0", "1", "--batch-size", "2", "--no-progress"]


def test_mask_command_under_torchrun_writes_one_result_equal_to_one_process(files) -> None:
    one, two = files / "one", files / "two"
    assert main(_args(files, one)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), VH_LENS_DIST_TIMEOUT="120")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "vh_lens.cli", *_args(files, two)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = vh_lens.MaskingResult.load(one), vh_lens.MaskingResult.load(two)
    assert b.metadata["world_size"] == 2 and b.metadata["samples_per_rank"] == [4, 3]
    assert a.rows == b.rows and a.baseline == b.baseline and a.n_samples == b.n_samples == 7
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(".")) == []  # no partial folders left
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_scan_command_refuses_several_ranks(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["scan", "--out", "unused"]) == 1
    assert "does not split across torchrun ranks" in capsys.readouterr().err
