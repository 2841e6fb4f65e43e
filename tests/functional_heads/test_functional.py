"""Interventions on functional heads: hooks touch only the named heads, controls, the report."""

from __future__ import annotations

import dataclasses
import json
import random
from functools import partial
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from conftest import tiny_lens
from transformer_lens.utilities import get_act_name

import vh_lens
from vh_lens.data.cogvision import load_cogvision, subquestion_samples
from vh_lens.evaluation.answers import normalize_answer
from vh_lens.evaluation.scoring import evaluate
from vh_lens.functional_heads.activations import collect_head_activations
from vh_lens.functional_heads.interventions import function_hooks, intervene_on_functions, random_heads
from vh_lens.functional_heads.probes import probe_heads
from vh_lens.functional_heads.report import CSV_COLUMNS, FunctionInterventionReport, InterventionRun
from vh_lens.functional_heads.selection import FunctionDirections
from vh_lens.plotting.functional import plot_function_interventions
from vh_lens.testing import TINY_WORDS

FUNCTIONS = ("Retrieval", "Math Calculation", "Inference")


def write_cogqa_file(path: Path, n_items: int = 10, seed: int = 0) -> Path:
    """A small file in CogQA's published schema; words from the tiny tokenizer's vocabulary."""
    rng = random.Random(seed)
    words = [w for w in TINY_WORDS if w not in ("USER", "ASSISTANT", "INST")]
    items = []
    for i in range(n_items):
        subs = [{"subquestion": " ".join(rng.choices(words, k=rng.randint(3, 6))) + " ?",
                 "answer": rng.choice(["red", "two", "3", "yes", "the dog"]) if j < 2 else rng.randint(1, 9),
                 "cognitive_skill": FUNCTIONS[(i + j) % len(FUNCTIONS)]}
                for j in range(3)]  # fmt: skip
        items.append({"question": " ".join(rng.choices(words, k=6)) + " ?", "answer": "a long worked answer .",
                      "generated": subs})  # fmt: skip
    path.write_text(json.dumps(items))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny lens, CogQA-format items, their activations and probes."""
    lens = tiny_lens()
    items = load_cogvision(write_cogqa_file(tmp_path_factory.mktemp("cogqa") / "cogqa.json"))
    acts = collect_head_activations(lens, items, progress=False)
    probes = probe_heads(acts, seed=0, mode="ovr", steps=50)
    batch = lens.prepare_samples(subquestion_samples(items[:3]))
    return {"lens": lens, "items": items, "acts": acts, "probes": probes, "batch": batch}


# --- spying on hook_z ----------------------------------------------------------------------


def _spy(z, *, hook, store):
    store[hook.layer()] = z.detach().clone()


def _z_around(lens, batch, hooks) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Every layer's ``hook_z`` just before and just after ``hooks`` (same run, same inputs)."""
    before, after = {}, {}
    names = [get_act_name("z", layer) for layer in range(lens.cfg.n_layers)]
    spies_before = [(name, partial(_spy, store=before)) for name in names]
    spies_after = [(name, partial(_spy, store=after)) for name in names]
    with torch.no_grad():
        lens.run_with_hooks(batch, fwd_hooks=spies_before + list(hooks) + spies_after)
    return before, after


def _changed_heads(lens, batch, hooks) -> set[tuple[int, int]]:
    before, after = _z_around(lens, batch, hooks)
    return {(layer, head) for layer in before for head in range(lens.cfg.n_heads)
            if not torch.equal(before[layer][:, :, head], after[layer][:, :, head])}  # fmt: skip


HEADS = [(1, 2), (0, 1), (1, 0)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"mode": "remove", "removal": "zero"}, lambda z, l, h, c: torch.zeros_like(z)),
        ({"mode": "remove", "removal": "mean"}, lambda z, l, h, c: c["means"][l, h].expand_as(z)),
        ({"mode": "remove", "removal": "scale"}, lambda z, l, h, c: 1e-5 * z),
        ({"mode": "emphasise", "emphasis": "scale", "alpha": 3.0}, lambda z, l, h, c: 3.0 * z),
        ({"mode": "emphasise", "emphasis": "shift", "alpha": 2.5},
         lambda z, l, h, c: z + 2.5 * c["sigma"][1, l, h] * c["u"][1, l, h]),
    ],
    ids=["zero", "mean", "scale-remove", "scale-emphasise", "shift"],
)  # fmt: skip
def test_hooks_change_only_the_named_heads_as_specified(setup, options, expected) -> None:
    lens, batch, cfg = setup["lens"], setup["batch"], setup["lens"].cfg
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, cfg.n_layers, cfg.n_heads, cfg.d_head, generator=gen)
    consts = {
        "means": torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=gen),
        "u": u / u.norm(dim=-1, keepdim=True),
        "sigma": torch.rand(2, cfg.n_layers, cfg.n_heads, generator=gen) + 0.5,
    }
    directions = FunctionDirections(functions=("A", "B"), u=consts["u"], sigma=consts["sigma"])
    hooks = function_hooks(HEADS, "B", means=consts["means"], directions=directions, cfg=cfg, **options)
    before, after = _z_around(lens, batch, hooks)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            z, out = before[layer][:, :, head], after[layer][:, :, head]
            if (layer, head) in HEADS:
                torch.testing.assert_close(out, expected(z, layer, head, consts), rtol=1e-6, atol=1e-6)
                assert not torch.equal(out, z)
            else:
                assert torch.equal(out, z), f"head {(layer, head)} was not named but changed"


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_hook_options_are_validated(setup) -> None:
    cfg = setup["lens"].cfg
    with pytest.raises(ValueError, match="not used"):
        function_hooks(HEADS, mode="remove", removal="zero", alpha=0.5)
    with pytest.raises(ValueError, match="needs means"):
        function_hooks(HEADS, mode="remove", removal="mean")
    with pytest.raises(ValueError, match="needs directions"):
        function_hooks(HEADS, mode="emphasise", emphasis="shift")
    with pytest.raises(ValueError, match="mode"):
        function_hooks(HEADS, mode="boost")
    with pytest.raises(ValueError, match="out of range"):
        function_hooks([(5, 0)], cfg=cfg)


def test_random_heads_exclude_and_match_count() -> None:
    exclude = [(0, 0), (1, 3), (2, 1)]
    draws = [random_heads(3, 4, 3, exclude, seed) for seed in range(20)]
    for heads in draws:
        assert len(heads) == len(set(heads)) == 3
        assert not set(heads) & set(exclude)
        assert all(0 <= layer < 3 and 0 <= head < 4 for layer, head in heads)
    assert random_heads(3, 4, 3, exclude, 7) == random_heads(3, 4, 3, exclude, 7)
    assert len({tuple(h) for h in draws}) > 1
    # every eligible head is reachable, no excluded one ever is
    assert set().union(*map(set, draws)) == {(l_, h) for l_ in range(3) for h in range(4)} - set(exclude)
    with pytest.raises(ValueError, match="only 2 heads"):
        random_heads(1, 4, 3, [(0, 0), (0, 1)])


# --- the experiment ------------------------------------------------------------------------


class RecordingLens:
    """The tiny lens, recording the hooks of every evaluation (``model.hooks`` calls)."""

    def __init__(self, lens) -> None:
        self._lens = lens
        self.hook_sets: list[list] = []

    def __getattr__(self, name):
        return getattr(self._lens, name)

    def hooks(self, fwd_hooks=(), **kwargs):
        self.hook_sets.append(list(fwd_hooks))
        return self._lens.hooks(fwd_hooks=fwd_hooks, **kwargs)


def test_intervention_runs_touch_functional_heads_and_disjoint_random_heads(setup) -> None:
    lens, probes = setup["lens"], setup["probes"]
    model = RecordingLens(lens)
    report = intervene_on_functions(model, setup["items"][:4], probes, k=2, control_seeds=(0, 1), max_new_tokens=2,
                                    progress=False)  # fmt: skip
    assert model.hook_sets[0] == []  # the baseline
    assert len(model.hook_sets) == 1 + len(report.runs) == 1 + 3 * len(probes.functions)
    for run, hooks in zip(report.runs, model.hook_sets[1:], strict=True):
        functional = probes.functional_heads(run.function, k=2)
        if run.condition == "functional":
            assert list(run.heads) == functional
        else:
            assert len(run.heads) == len(functional) and not set(run.heads) & set(functional)
        assert _changed_heads(lens, setup["batch"], hooks) == set(run.heads)
        before, after = _z_around(lens, setup["batch"], hooks)
        for layer, head in run.heads:  # zero removal
            assert torch.count_nonzero(after[layer][:, :, head]) == 0


def test_report_shape_and_baseline_equals_evaluate(setup, tmp_path: Path) -> None:
    lens, probes, acts = setup["lens"], setup["probes"], setup["acts"]
    samples = subquestion_samples(setup["items"], context="none")
    # Gold answers the tiny model gets right on every other sample, so accuracies are not all 0.
    texts = [p.text for p in evaluate(lens, samples, method="generate", max_new_tokens=2, progress=False).predictions]
    samples = [dataclasses.replace(s, answer=t) if i % 2 == 0 and normalize_answer(t) else s
               for i, (s, t) in enumerate(zip(samples, texts, strict=True))]  # fmt: skip
    report = intervene_on_functions(lens, samples, probes, mode="emphasise", emphasis="shift", acts=acts,
                                    control_seeds=(0, 3), max_new_tokens=2, batch_size=4, progress=False)  # fmt: skip

    # the baseline is evaluate() with no hooks on the same questions (subquestions, then main questions)
    mains = [s for s in samples if s.metadata["sub_index"] == s.metadata["n_subquestions"] - 1]
    main_samples = [dataclasses.replace(s, question=s.metadata["main_question"]) for s in mains]
    reference = evaluate(lens, samples + main_samples, method="generate", max_new_tokens=2, batch_size=4,
                         progress=False).predictions  # fmt: skip
    for f in probes.functions:
        hits = [p.correct for p, s in zip(reference, samples) if s.metadata["function"] == f]
        assert report.counts[f] == len(hits)
        assert report.baseline[f] == pytest.approx(sum(hits) / len(hits))
    assert report.baseline_main == pytest.approx(sum(p.correct for p in reference[len(samples) :]) / len(mains))
    assert max(report.baseline.values()) > 0
    assert report.n_main == len(setup["items"])

    # shape: one functional and two random runs per function; tables, plot, save/load
    assert report.functions == probes.functions
    assert (report.mode, report.method, report.alpha) == ("emphasise", "shift", 5.0)
    assert [(r.function, r.condition, r.seed) for r in report.runs] == [
        (f, c, s) for f in probes.functions for c, s in (("functional", None), ("random", 0), ("random", 3))
    ]
    rows = report.to_rows()
    assert [r["function"] for r in rows] == list(probes.functions) and list(rows[0]) == list(CSV_COLUMNS)
    for row in rows:
        f = row["function"]
        assert row["n_heads"] == len(probes.functional_heads(f)) and row["n_seeds"] == 2
        assert row["baseline_own"] == report.baseline[f]
        others = [g for g in probes.functions if g != f]
        expected = sum(report.baseline[g] * report.counts[g] for g in others) / sum(report.counts[g] for g in others)
        assert row["baseline_other"] == pytest.approx(expected)
        accs = [r.accuracy[f] for r in report.runs_of(f, "random")]
        assert row["random_own_mean"] == pytest.approx(sum(accs) / 2)
        assert row["random_own_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2)
    assert report.to_csv().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert len(report.to_markdown().splitlines()) == 4 + len(probes.functions)
    fig = plot_function_interventions(report)
    assert isinstance(fig, go.Figure) and len(fig.data) == 9
    assert vh_lens.plotting.plot_function_interventions is plot_function_interventions  # the top-level name still works
    assert list(fig.data[0].x) == list(probes.functions)

    report.save(tmp_path / "rep")
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["interventions.csv", "interventions.json",
                                                                     "interventions.md"]  # fmt: skip
    loaded = FunctionInterventionReport.load(tmp_path / "rep")
    assert loaded.to_json() == report.to_json() and loaded.runs == report.runs


def test_intervention_errors(setup) -> None:
    lens, probes, items = setup["lens"], setup["probes"], setup["items"]
    with pytest.raises(ValueError, match="needs acts"):
        intervene_on_functions(lens, items, probes, removal="mean", progress=False)
    with pytest.raises(ValueError, match="needs acts"):
        intervene_on_functions(lens, items, probes, mode="emphasise", emphasis="shift", progress=False)
    with pytest.raises(ValueError, match="unknown or no functions"):
        intervene_on_functions(lens, items, probes, functions=["Vision"], progress=False)
    with pytest.raises(ValueError, match="k must be"):
        intervene_on_functions(lens, items, probes, k=0, progress=False)
    one_layer = {name: getattr(probes, name)[:, :1]
                 for name in ("ovr_accuracy", "ovr_balanced_accuracy", "ovr_weights", "ovr_bias")}  # fmt: skip
    other = dataclasses.replace(probes, **one_layer)
    with pytest.raises(ValueError, match="1 layers"):
        intervene_on_functions(lens, items, other, progress=False)


def test_report_validation() -> None:
    run = InterventionRun("A", "functional", None, ((0, 1),), {"A": 0.5, "B": 1.0}, None)
    base = dict(functions=("A",), counts={"A": 2, "B": 1}, n_main=0, baseline={"A": 0.5, "B": 0.0},
                baseline_main=None, runs=(run,))  # fmt: skip
    assert FunctionInterventionReport(**base).summary("A")["functional_other"] == 1.0
    with pytest.raises(ValueError, match="seed"):
        InterventionRun("A", "random", None, ((0, 1),), {"A": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        InterventionRun("A", "functional", None, ((0, 1),), {"A": 1.5})
    with pytest.raises(ValueError, match="baseline_main"):
        FunctionInterventionReport(**{**base, "n_main": 3})
    with pytest.raises(ValueError, match="one functional run"):
        FunctionInterventionReport(**{**base, "runs": ()})
    with pytest.raises(ValueError, match="method"):
        FunctionInterventionReport(**base, mode="emphasise", method="zero")
