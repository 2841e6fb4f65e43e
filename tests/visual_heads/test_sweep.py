"""The shared-prefix sweep gives the naive sweep's MaskingResult on the toy model, to the last sample."""

from __future__ import annotations

import pytest
import torch

import vh_lens
from vh_lens import engine
from vh_lens.analysis.interventions import ablate_heads
from vh_lens.data.shapes import shapes
from vh_lens.evaluation.scoring import AccuracyReducer
from vh_lens.sweep import run_conditions_shared_prefix, sweep_cost
from vh_lens.toy import load_toy


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    model = load_toy()
    return model, vh_lens.scan_visual_heads(model, shapes(6, seed=1), batch_size=3, progress=False)


@pytest.mark.parametrize("method", ["zero", "mean", "uniform"])
def test_shared_prefix_sweep_equals_naive_masking_result(toy, method: str) -> None:
    model, scores = toy
    samples = shapes(9, seed=7)  # 9 samples in batches of 4: a short last batch, padding differs per batch
    kw = dict(ks=(2, 6, 20), control_seeds=(0, 1, 2), method=method, batch_size=4, progress=False)
    naive = vh_lens.masking_experiment(model, samples, scores, sweep="naive", **kw)
    shared = vh_lens.masking_experiment(model, samples, scores, **kw)
    assert naive.metadata["sweep"] == "naive" and shared.metadata["sweep"] == "shared prefix"
    assert shared.baseline == naive.baseline
    assert len(shared.rows) == len(naive.rows) == 9
    for a, b in zip(naive.rows, shared.rows, strict=True):
        assert a == b


def test_shared_prefix_gives_the_same_predictions_and_logit_bits(toy) -> None:
    model, _ = toy
    prepared = engine.prepare(model, shapes(5, seed=3), batch_size=3, answers="score")
    heads = {"l1": [(1, 0), (1, 3), (4, 2)], "l3": [(3, 1), (5, 5)], "l5": [(5, 0)], "l0": [(0, 2), (2, 1)]}
    conditions = [engine.Condition("baseline")] + [
        engine.Condition(name, tuple(ablate_heads(h, "zero"))) for name, h in heads.items()
    ]
    assert [c.start_layer for c in conditions] == [0, 1, 3, 5, 0]

    class Logits(AccuracyReducer):
        def update(self, output, item):
            super().update(output, item)
            self.logits = getattr(self, "logits", []) + [output.clone()]

    naive = engine.run_conditions(model, prepared, conditions, lambda _: Logits("score"))
    shared = run_conditions_shared_prefix(model, prepared, conditions, lambda _: Logits("score"))
    for c in conditions:
        assert naive[c.name].result().predictions == shared[c.name].result().predictions
        for x, y in zip(naive[c.name].logits, shared[c.name].logits, strict=True):
            assert torch.equal(x, y), c.name
    # the ablations changed something (the comparison is not between identical runs)
    assert not torch.equal(naive["l1"].logits[0], naive["baseline"].logits[0])


def test_sweep_cost_by_hand() -> None:
    assert sweep_cost(32, [None] + [0] * 4 + [11] * 4 + [22] * 4) == {
        "naive": 13 * 32.0,
        "shared": 32 + 4 * 32 + 4 * 21 + 4 * 10.0,
        "ratio": (32 + 128 + 84 + 40) / 416,
    }


@pytest.mark.parametrize(("method", "per_forward"), [("zero", 3), ("mean", 4), ("uniform", 50)])
def test_batched_sweep_equals_naive_masking_result(toy, method: str, per_forward: int) -> None:
    model, scores = toy
    samples = shapes(9, seed=7)  # batches of 4, 4, 1: a short last batch, padding differs per batch
    kw = dict(ks=(2, 6, 20), control_seeds=(0, 1, 2), method=method, batch_size=4, progress=False)
    naive = vh_lens.masking_experiment(model, samples, scores, sweep="naive", **kw)
    batched = vh_lens.masking_experiment(
        model, samples, scores, sweep="batched", conditions_per_forward=per_forward, **kw
    )
    assert batched.metadata["sweep"] == "batched shared prefix"
    assert batched.baseline == naive.baseline and batched.rows == naive.rows


def test_batched_sweep_gives_each_condition_its_own_rows(toy) -> None:
    from vh_lens.sweep import run_conditions_batched

    model, _ = toy
    prepared = engine.prepare(model, shapes(5, seed=3), batch_size=3, answers="score")
    heads = {
        "l1": [(1, 0), (1, 3), (4, 2)],
        "l1b": [(1, 5)],
        "l3": [(3, 1), (5, 5)],
        "l0": [(0, 2), (2, 1)],
        "l0b": [(0, 7)],
    }
    conditions = [engine.Condition("baseline")] + [
        engine.Condition(name, tuple(ablate_heads(h, "zero"))) for name, h in heads.items()
    ]

    class Logits(AccuracyReducer):
        def update(self, output, item):
            super().update(output, item)
            self.logits = getattr(self, "logits", []) + [output.clone()]

    naive = engine.run_conditions(model, prepared, conditions, lambda _: Logits("score"))
    batched = run_conditions_batched(model, prepared, conditions, lambda _: Logits("score"), conditions_per_forward=2)
    for c in conditions:
        assert naive[c.name].result().predictions == batched[c.name].result().predictions
        for x, y in zip(naive[c.name].logits, batched[c.name].logits, strict=True):
            assert torch.allclose(x, y, atol=1e-5, rtol=0), c.name
    assert not torch.allclose(naive["l1"].logits[0], naive["l1b"].logits[0], atol=1e-3)  # rows not mixed up
    with pytest.raises(ValueError, match="conditions_per_forward"):
        run_conditions_batched(model, prepared, conditions, lambda _: Logits("score"), conditions_per_forward=0)
    with pytest.raises(ValueError, match="one forward's logits"):
        run_conditions_batched(model, prepared, conditions, lambda _: AccuracyReducer("generate"))
