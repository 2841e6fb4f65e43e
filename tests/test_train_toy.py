"""scripts/train_toy.py on a very small configuration: it runs, saves a loadable checkpoint, is deterministic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_toy.py"
SMALL = [
    "--steps", "3", "--batch-size", "6", "--eval-n", "8", "--eval-every", "2", "--log-every", "1",
    "--n-layers", "2", "--d-model", "32", "--n-heads", "4", "--d-mlp", "64",
    "--vision-layers", "1", "--vision-hidden", "16", "--vision-pretrain-steps", "3", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_toy():
    spec = importlib.util.spec_from_file_location("train_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_counts_by_hand(train_toy):
    cls = torch.tensor([[0, 3, 3, 5, 0, 3], [1, 0, 0, 0, 0, 1]])
    assert train_toy.class_counts(cls).tolist() == [[0, 3, 3, 1, 0, 3], [2, 0, 0, 0, 0, 2]]


def test_training_runs_saves_and_is_deterministic(train_toy, tmp_path):
    import vh_lens

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        train_toy.main(["--out", str(out), *SMALL])
        runs.append(out)
    a, b = (load_file(out / "model.safetensors") for out in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((runs[0] / "train_log.json").read_text())
    assert log["steps_done"] == 3 and log["command"].startswith("python scripts/train_toy.py")
    assert [h["step"] for h in log["history"]] == [2, 3]
    assert set(log["final_accuracy"]) >= {"counting", "exists"}
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".*old"))
    model = vh_lens.load_llava(runs[0])
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    # a second run into the same folder replaces it whole
    train_toy.main(["--out", str(runs[0]), *SMALL, "--seed", "5"])
    c = load_file(runs[0] / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((runs[0] / "train_log.json").read_text())["args"]["seed"] == 5
