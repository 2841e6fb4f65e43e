"""Paper B on the engine: the frozen configs, the activation reducer, the shared random control."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import striped_image, tiny_lens
from test_functional import setup  # noqa: F401  (the module-scoped fixture: tiny lens, items, acts, probes)
from test_probing import _planted_acts

from vh_lens import engine
from vh_lens.core import hooks
from vh_lens.data.sample import Sample
from vh_lens.functional_heads.activations import HeadActivationsReducer, collect_head_activations
from vh_lens.functional_heads.config import CollectionConfig, InterventionConfig, ProbeConfig
from vh_lens.functional_heads.interventions import intervene_on_functions, random_heads
from vh_lens.functional_heads.probes import ProbeResult, probe_heads

# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "changes", "field"),
    [
        (CollectionConfig, {"position": "first"}, "position"),
        (CollectionConfig, {"batch_size": 0}, "batch_size"),
        (CollectionConfig, {"dtype": "float64"}, "dtype"),
        (CollectionConfig, {"context": "all"}, "context"),
        (ProbeConfig, {"mode": "svm"}, "mode"),
        (ProbeConfig, {"test_fraction": 1.0}, "test_fraction"),
        (ProbeConfig, {"l2": -1.0}, "l2"),
        (ProbeConfig, {"steps": 0}, "steps"),
        (ProbeConfig, {"chunk_layers": 0}, "chunk_layers"),
        pytest.param(ProbeConfig, {"functions": (1, 2)}, "functions", marks=pytest.mark.unchecked_arguments),
        (InterventionConfig, {"functions": "Retrieval"}, "functions"),
        (InterventionConfig, {"mode": "boost"}, "mode"),
        (InterventionConfig, {"removal": "noise"}, "removal"),
        (InterventionConfig, {"mode": "emphasise", "emphasis": "zero"}, "emphasis"),
        (InterventionConfig, {"alpha": 0.5}, "alpha"),  # zero removal takes no alpha
        (InterventionConfig, {"k": 0}, "k"),
        (InterventionConfig, {"control_seeds": (1, 1)}, "control_seeds"),
        (InterventionConfig, {"main_answer": "first"}, "main_answer"),
        (InterventionConfig, {"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_configs_refuse_bad_fields_by_name(cls, changes, field) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**changes)


def test_configs_round_trip_and_resolve_alpha() -> None:
    for conf in (CollectionConfig(position="answer_mean", dtype="float32"), ProbeConfig(functions=["b", "a"], steps=5),
                 InterventionConfig(mode="emphasise", emphasis="scale", control_seeds=[3], k=2)):  # fmt: skip
        data = json.loads(json.dumps(conf.to_dict()))
        assert type(conf).from_dict(data) == conf
    assert ProbeConfig(functions=["b", "a"]).functions == ("b", "a")  # lists are frozen to tuples
    assert InterventionConfig().resolved_alpha is None and InterventionConfig().method == "zero"
    assert InterventionConfig(removal="scale").resolved_alpha == 1e-5
    assert InterventionConfig(mode="emphasise", emphasis="scale").resolved_alpha == 2.0
    shift = InterventionConfig(mode="emphasise", alpha=3)
    assert (shift.method, shift.resolved_alpha) == ("shift", 3.0)
    with pytest.raises(ValueError, match="no field"):
        InterventionConfig.from_dict({"mode": "remove", "heads": 3})


def test_probe_config_equals_keywords_and_is_recorded() -> None:
    acts, _ = _planted_acts()
    by_keywords = probe_heads(acts, seed=3, mode="ovr", steps=40, test_fraction=0.25)
    conf = ProbeConfig(seed=3, mode="ovr", steps=40, test_fraction=0.25)
    by_config = probe_heads(acts, config=conf)
    overridden = probe_heads(acts, config=conf.replace(steps=5), steps=40)  # keywords win over the config
    for result in (by_config, overridden):
        assert torch.equal(result.ovr_balanced_accuracy, by_keywords.ovr_balanced_accuracy)
        assert torch.equal(result.ovr_weights, by_keywords.ovr_weights)
    assert by_config.probe_config == conf and by_config.config["steps"] == 40
    # a result saved before the config existed (no functions / chunk_layers keys) still gives its settings
    old = {k: v for k, v in by_config.config.items() if k not in ("functions", "chunk_layers")}
    legacy = ProbeResult(functions=by_config.functions, train_index=by_config.train_index,
                         test_index=by_config.test_index, config=old, ovr_accuracy=by_config.ovr_accuracy,
                         ovr_balanced_accuracy=by_config.ovr_balanced_accuracy)  # fmt: skip
    assert legacy.probe_config == conf


# --- the activation reducer ----------------------------------------------------------------


def _samples() -> list[Sample]:
    questions = ["how many dog are there", "what color is the cat", "is this a cat", "is there a dog",
                 "what is it", "how many cat"]  # fmt: skip
    return [Sample(image=striped_image() if i % 2 else None, question=q, answer="two dog",
                   metadata={"function": "AB"[i % 2]}) for i, q in enumerate(questions)]  # fmt: skip


def test_collection_config_and_reducer_merge() -> None:
    model = tiny_lens()
    samples = _samples()
    whole = collect_head_activations(model, samples, batch_size=3, dtype=torch.float32, progress=False)
    same = collect_head_activations(model, samples, progress=False,
                                    config=CollectionConfig(batch_size=3, dtype="float32"))  # fmt: skip
    assert torch.equal(same.acts, whole.acts)
    assert whole.metadata["config"] == {"position": "last_prompt", "batch_size": 3, "dtype": "float32",
                                        "context": "chain"}  # fmt: skip
    assert whole.metadata["question_format"] == model.question_format  # the model's own format, not passed
    # two processes' halves (same batch boundaries), merged, equal one run over everything
    batches = list(engine.iter_batches(model, samples, batch_size=3))
    shape = (len(samples), model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    first = engine.run(model, batches[:1], HeadActivationsReducer(torch.zeros(shape), "last_prompt"))
    second = engine.run(model, batches[1:], HeadActivationsReducer(torch.zeros(shape), "last_prompt"))
    first.merge(second)
    assert torch.equal(first.result(), whole.acts) and first.filled == [(0, 3), (3, 6)]
    restored = HeadActivationsReducer(torch.zeros(shape), "last_prompt")
    restored.load_state_dict(first.state_dict())
    assert torch.equal(restored.result(), whole.acts)
    with pytest.raises(ValueError, match="same shape"):
        first.merge(HeadActivationsReducer(torch.zeros(1, 1, 1, 1), "last_prompt"))


# --- interventions -----------------------------------------------------------------------------


def test_random_heads_is_the_shared_sampler_with_the_old_draws() -> None:
    assert random_heads is hooks.random_heads
    exclude = [(0, 0), (1, 3), (2, 1)]
    for seed in range(10):
        # the paper B sampler before the engine: a seeded permutation of the eligible heads, in draw order
        eligible = [(layer, head) for layer in range(3) for head in range(4) if (layer, head) not in exclude]
        perm = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))
        assert random_heads(3, 4, 3, exclude, seed) == [eligible[int(i)] for i in perm[:3]]


def test_intervention_config_equals_keywords_and_is_recorded(setup) -> None:  # noqa: F811
    lens, probes, items = setup["lens"], setup["probes"], setup["items"][:3]
    common = {"k": 1, "control_seeds": (0,), "max_new_tokens": 2, "batch_size": 4}
    by_keywords = intervene_on_functions(lens, items, probes, progress=False, **common)
    conf = InterventionConfig(**common)
    by_config = intervene_on_functions(lens, items, probes, config=conf, progress=False)
    by_dict = intervene_on_functions(lens, items, probes, config=conf.to_dict() | {"k": 2}, k=1, progress=False)
    for report in (by_config, by_dict):
        assert report.to_json() == by_keywords.to_json()
    assert by_config.metadata["config"] == conf.to_dict()
    assert by_config.metadata["question_format"] == lens.question_format
    assert InterventionConfig.from_dict(by_config.metadata["config"]) == conf
