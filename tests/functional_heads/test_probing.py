"""Functional-head probing: collection through hook_z, batched probes, selection, plots."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from conftest import striped_image, tiny_lens
from transformer_lens import HookedTransformer, HookedTransformerConfig

from vh_lens.core.layout import TokenLayout
from vh_lens.data.cogvision import CogItem, SubQuestion
from vh_lens.data.sample import Sample
from vh_lens.functional_heads.activations import HeadActivations, collect_head_activations
from vh_lens.functional_heads.logistic import fit_batched_logistic
from vh_lens.functional_heads.probes import ProbeResult, probe_heads
from vh_lens.functional_heads.selection import (
    elbow_index,
    jaccard_overlap,
    mean_difference_directions,
    select_heads,
    split_by_group,
)
from vh_lens.plotting.functional import (
    plot_function_head_maps,
    plot_function_overlap,
    plot_heads_per_layer,
    plot_sorted_scores,
)

# --- a stand-in for vh_lens.LlavaLens around a plain HookedTransformer ---------------------


class FakeLens:
    """The model API the probing code uses, on a HookedTransformer and a toy tokenizer.

    A question is whitespace-separated words: an integer word is that token id, any other word
    maps to a fixed id. Batches are left padded with token 0, like LlavaLens'.
    """

    def __init__(self, lm: HookedTransformer) -> None:
        self.lm = lm
        self.cfg = lm.cfg

    def _ids(self, text: str) -> list[int]:
        return [int(w) if w.isdigit() else 1 + sum(w.encode()) % (self.cfg.d_vocab - 1) for w in text.split()]

    def prepare_samples(self, samples, *, with_answers: bool = False):
        seqs = [(self._ids(s.question), self._ids(s.answer) if with_answers else []) for s in samples]
        length = max(len(p) + len(a) for p, a in seqs)
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        mask = torch.zeros(len(seqs), length, dtype=torch.long)
        layouts = []
        for i, (prompt, answer) in enumerate(seqs):
            pad = length - len(prompt) - len(answer)
            ids[i, pad:] = torch.tensor(prompt + answer)
            mask[i, pad:] = 1
            layouts.append(
                TokenLayout(
                    seq_len=length,
                    n_pad=pad,
                    image_positions=torch.zeros(0, dtype=torch.long),
                    newline_positions=torch.zeros(0, dtype=torch.long),
                    text_positions=torch.arange(pad, pad + len(prompt)),
                    query_position=pad + len(prompt) - 1,
                    answer_positions=torch.arange(pad + len(prompt), length),
                )
            )
        return SimpleNamespace(input_ids=ids, attention_mask=mask, layout=layouts)

    def run_with_hooks(self, batch, fwd_hooks=()):
        return self.lm.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=list(fwd_hooks))


@pytest.fixture(scope="module")
def tiny_lm() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        n_ctx=64,
        d_vocab=50,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        seed=0,
    )
    return HookedTransformer(cfg).eval()


# --- planted copying heads in a hand-set attention-only model ------------------------------

N_LABELS = 4
PLANTED = {(0, 1), (1, 2)}
QUERY, LABEL0, FILLER0, VOCAB = 1, 2, 2 + N_LABELS, 24


def _copying_model() -> HookedTransformer:
    """Heads (0, 1) and (1, 2): the query token attends to the label token and copies its identity.

    Residual dims: 0..3 the label's one-hot, 4 "is a label token", 5 "is the query token",
    8..31 filler content. Every ``W_O`` is zero, so both layers read the token embeddings.
    The other heads attend uniformly (zero QK) and read only filler content.
    """
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        n_ctx=32,
        d_vocab=VOCAB,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="relu",
        seed=0,
    )
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    state = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
    embed = torch.zeros(VOCAB, 32)
    embed[LABEL0 : LABEL0 + N_LABELS, :N_LABELS] = torch.eye(N_LABELS)
    embed[LABEL0 : LABEL0 + N_LABELS, 4] = 1.0
    embed[QUERY, 5] = 1.0
    embed[FILLER0:, 8:] = torch.randn(VOCAB - FILLER0, 24, generator=gen)
    state["embed.W_E"] = embed
    for layer in range(2):
        w_q, w_k, w_v = (torch.zeros(4, 32, 8) for _ in range(3))
        w_v[:, 8:] = torch.randn(4, 24, 8, generator=gen)
        for lay, head in PLANTED:
            if lay == layer:
                w_q[head, 5, 0] = 10.0
                w_k[head, 4, 0] = 10.0
                w_v[head] = 0.0
                w_v[head, :N_LABELS, :N_LABELS] = torch.eye(N_LABELS)
        state[f"blocks.{layer}.attn.W_Q"], state[f"blocks.{layer}.attn.W_K"], state[f"blocks.{layer}.attn.W_V"] = (
            w_q,
            w_k,
            w_v,
        )
    for name in state:
        if name.endswith(("IGNORE", "mask")):
            state[name] = model.state_dict()[name]
    model.load_state_dict(state)
    return model


def _copy_samples(n_groups: int = 40, per_group: int = 3, seed: int = 1) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for g in range(n_groups):
        for _ in range(per_group):
            label = int(torch.randint(N_LABELS, (1,), generator=gen))
            n_fill = int(torch.randint(3, 9, (1,), generator=gen))
            fill = torch.randint(FILLER0, VOCAB, (n_fill,), generator=gen).tolist()
            at = int(torch.randint(0, n_fill + 1, (1,), generator=gen))
            tokens = fill[:at] + [LABEL0 + label] + fill[at:] + [QUERY]
            samples.append(
                Sample(
                    image=None,
                    question=" ".join(map(str, tokens)),
                    answer=str(FILLER0),
                    metadata={"function": f"f{label}", "group": g},
                )
            )
    return samples


def test_planted_copying_heads_rank_first() -> None:
    model = FakeLens(_copying_model())
    acts = collect_head_activations(model, _copy_samples(), batch_size=16, progress=False)
    assert acts.acts.shape == (120, 2, 4, 8) and acts.acts.dtype == torch.float16
    # the planted heads hold the label's one-hot at the query position
    label_idx = torch.tensor([int(x[1:]) for x in acts.labels])
    assert torch.allclose(acts.acts[:, 0, 1, :N_LABELS].float(), F.one_hot(label_idx, N_LABELS).float(), atol=1e-3)
    result = probe_heads(acts, seed=0, steps=100)
    assert result.functions == ("f0", "f1", "f2", "f3")
    for f in result.functions:
        assert set(result.functional_heads(f, k=2)) == PLANTED
        scores = result.scores(f)
        others = torch.ones(2, 4, dtype=torch.bool)
        for lay, head in PLANTED:
            assert scores[lay, head] == 1.0
            others[lay, head] = False
        assert scores[others].max() < 0.85
    top_mc = torch.topk(result.multiclass_accuracy.flatten(), 2).indices
    assert {(int(i) // 4, int(i) % 4) for i in top_mc} == PLANTED
    assert result.multiclass_accuracy[0, 1] == 1.0


# --- collection against per-sample unpadded runs --------------------------------------------


def _int_samples() -> list[Sample]:
    prompts = ["5 6 7 8 9 10", "11 12", "3 4 5 6", "20 21 22"]
    answers = ["13 14 15", "16", "17 18", "19 30"]
    return [
        Sample(image=None, question=q, answer=a, metadata={"function": "AB"[i % 2], "group": i // 2})
        for i, (q, a) in enumerate(zip(prompts, answers, strict=True))
    ]


def _unpadded_z(lm: HookedTransformer, ids: list[int]) -> torch.Tensor:
    _, cache = lm.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n.endswith("hook_z"))
    return torch.stack([cache["z", layer][0] for layer in range(lm.cfg.n_layers)], dim=1)  # [pos, layer, head, d]


def test_collect_last_prompt_and_answer_mean_match_unpadded_runs(tiny_lm: HookedTransformer, tmp_path: Path) -> None:
    model = FakeLens(tiny_lm)
    samples = _int_samples()
    last = collect_head_activations(model, samples, batch_size=3, progress=False, dtype=torch.float32)
    mean = collect_head_activations(
        model, samples, position="answer_mean", batch_size=3, progress=False, dtype=torch.float32
    )
    for i, s in enumerate(samples):
        prompt, answer = model._ids(s.question), model._ids(s.answer)
        z = _unpadded_z(tiny_lm, prompt + answer)
        torch.testing.assert_close(last.acts[i], z[len(prompt) - 1], atol=1e-5, rtol=1e-4)
        # positions predicting the answer tokens: the last prompt token and all answer tokens but the last
        expected = z[len(prompt) - 1 : len(prompt) + len(answer) - 1].mean(0)
        torch.testing.assert_close(mean.acts[i], expected, atol=1e-5, rtol=1e-4)
    assert last.labels == ("A", "B", "A", "B") and last.groups == (0, 0, 1, 1)
    assert mean.metadata["position"] == "answer_mean"
    # streamed to a float16 memmap on disk
    streamed = collect_head_activations(model, samples, batch_size=3, out_dir=tmp_path / "acts", progress=False)
    assert isinstance(streamed.acts, np.memmap) and streamed.acts.dtype == np.float16
    np.testing.assert_allclose(streamed.acts, last.acts.numpy(), atol=2e-2, rtol=2e-3)
    again = HeadActivations.load(tmp_path / "acts")
    assert again.labels == last.labels and again.groups == last.groups and again.metadata == streamed.metadata
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == ["acts.npy", "head_activations.json"]


def test_collect_through_llava_lens() -> None:
    """The real model API: prepare_samples(..., with_answers=True) and layout.answer_positions."""
    model = tiny_lens()
    samples = [
        Sample(image=None, question="how many dog are there", answer="two dog", metadata={"function": "A"}),
        Sample(image=striped_image(), question="what color is the cat", answer="red", metadata={"function": "B"}),
        Sample(image=None, question="is this a cat", answer="yes no yes", metadata={"function": "A"}),
    ]
    last = collect_head_activations(model, samples, batch_size=2, progress=False, dtype=torch.float32)
    mean = collect_head_activations(
        model, samples, position="answer_mean", batch_size=2, progress=False, dtype=torch.float32
    )
    assert last.groups == (0, 1, 2)
    for i, s in enumerate(samples):
        batch = model.prepare_samples([s], with_answers=True)  # alone: no padding
        q, answer = batch.layout[0].query_position, batch.layout[0].answer_positions
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_z"))
        z = torch.stack([cache["z", layer][0] for layer in range(model.cfg.n_layers)], dim=1)
        torch.testing.assert_close(last.acts[i], z[q], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mean.acts[i], z[q : int(answer[-1])].mean(0), atol=1e-5, rtol=1e-4)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_collect_from_cog_items_and_errors(tiny_lm: HookedTransformer) -> None:
    model = FakeLens(tiny_lm)
    items = [
        CogItem(
            image=None,
            question=f"main question {g}",
            answer=None,
            item_id=str(g),
            subquestions=(
                SubQuestion("what is it", "a thing", "Retrieval"),
                SubQuestion("so what", "it is", "Inference"),
            ),
        )
        for g in range(2)
    ]
    acts = collect_head_activations(model, items, progress=False)
    assert acts.labels == ("Retrieval", "Inference") * 2 and acts.groups == (0, 0, 1, 1)
    with pytest.raises(ValueError, match="position"):
        collect_head_activations(model, items, position="first", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all Sample or all CogItem"):
        collect_head_activations(model, [items[0], _int_samples()[0]], progress=False)
    no_answer = FakeLens(tiny_lm)
    no_answer.prepare_samples = lambda samples, with_answers=False: FakeLens.prepare_samples(no_answer, samples)
    with pytest.raises(ValueError, match="answer_positions"):
        collect_head_activations(no_answer, _int_samples(), position="answer_mean", progress=False)


# --- the batched logistic regression ---------------------------------------------------------


def _reference_fit(x, targets, weight, kind, l2):
    """One head, one problem, torch's own losses and LBFGS: an independent fit of the objective."""
    n, d = x.shape
    k = targets.shape[1] if kind == "ovr" else int(targets.max()) + 1
    w = torch.zeros(d, k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=5000,
        tolerance_grad=1e-10,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    x = x.double()

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        if kind == "ovr":
            loss = (
                F.binary_cross_entropy_with_logits(logits, targets.double(), weight=weight.double(), reduction="sum")
                / n
            )
        else:
            loss = (F.cross_entropy(logits, targets, reduction="none") * weight.double()).sum() / n
        loss = loss + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


@pytest.mark.parametrize("kind", ["ovr", "softmax"])
def test_batched_fit_matches_independent_per_head_fits(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    heads, n, d, k = 5, 90, 4, 3
    x = torch.randn(heads, n, d, generator=gen)
    y = torch.randint(k, (n,), generator=gen)
    x[0, :, :k] += 2.5 * F.one_hot(y, k)  # an informative head, next to noise heads
    x[1, :, 0] += 1.0 * y
    onehot = F.one_hot(y, k).float()
    if kind == "ovr":
        targets, weight = onehot, 0.5 + torch.rand(n, k, generator=gen)
    else:
        targets, weight = y, 0.5 + torch.rand(n, generator=gen)
    w, b = fit_batched_logistic(x, targets, weight, kind=kind, l2=1e-2, steps=300, tol=1e-6)
    assert w.shape == (heads, d, k) and b.shape == (heads, k)
    for h in range(heads):
        w_ref, b_ref = _reference_fit(x[h], targets, weight, kind, 1e-2)
        torch.testing.assert_close(w[h], w_ref, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(b[h], b_ref, atol=2e-3, rtol=2e-3)


def test_batched_fit_on_separable_hand_case() -> None:
    # x = -2, -1, 1, 2 with y = x > 0: by symmetry b = 0, and w solves
    # l2 * w = (sigmoid(-w) + 2 * sigmoid(-2 w)) / 2 (gradient of the mean log-loss + l2/2 w^2).
    l2 = 1e-2
    x = torch.tensor([[[-2.0], [-1.0], [1.0], [2.0]]])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lhs, rhs = l2 * mid, (1 / (1 + math.exp(mid)) + 2 / (1 + math.exp(2 * mid))) / 2
        lo, hi = (mid, hi) if lhs < rhs else (lo, mid)
    w, b = fit_batched_logistic(x, y, kind="ovr", l2=l2, steps=500, tol=1e-7)
    assert w.item() == pytest.approx(lo, rel=1e-3)
    assert b.item() == pytest.approx(0.0, abs=1e-3)
    assert ((x[0] @ w[0] + b[0] > 0).float() == y).all()


# --- probes on planted activations -------------------------------------------------------------


def _planted_acts(seed: int = 0) -> tuple[HeadActivations, dict[str, tuple[int, int]]]:
    """Noise everywhere; function f's label is linearly readable only from head planted[f]."""
    gen = torch.Generator().manual_seed(seed)
    n_groups, per_group, layers, heads, d = 60, 4, 3, 4, 6
    functions = ("alpha", "beta", "gamma")
    planted = {"alpha": (0, 2), "beta": (2, 1), "gamma": (1, 3)}
    y = torch.randint(3, (n_groups * per_group,), generator=gen)
    acts = torch.randn(n_groups * per_group, layers, heads, d, generator=gen)
    for i, f in enumerate(functions):
        lay, head = planted[f]
        acts[:, lay, head, :2] += 3.0 * (y == i).float()[:, None] * torch.tensor([1.0, -1.0])
    labels = tuple(functions[int(i)] for i in y)
    groups = tuple(i // per_group for i in range(len(y)))
    return HeadActivations(acts=acts.half(), labels=labels, groups=groups, metadata={"toy": True}), planted


def test_probes_rank_planted_heads_first() -> None:
    acts, planted = _planted_acts()
    result = probe_heads(acts, seed=3, test_fraction=0.25, steps=150)
    for f, head in planted.items():
        assert result.functional_heads(f, k=1) == [head]
        assert result.functional_heads(f, k=1, metric="accuracy") == [head]
        assert result.scores(f)[head] > 0.9
        assert result.functional_heads(f, k=1, source="multiclass") == [head]
    assert result.multiclass_weights.shape == (3, 3, 4, 6)
    assert result.config["n_train"] + result.config["n_test"] == acts.n_samples
    # probe weights on raw activations reproduce the probe's decisions on the raw data
    lay, head = planted["alpha"]
    raw = acts.acts[result.test_index, lay, head].float()
    logits = raw @ result.ovr_weights[0, lay, head] + result.ovr_bias[0, lay, head]
    truth = torch.tensor([acts.labels[i] == "alpha" for i in result.test_index.tolist()])
    balanced = 0.5 * (((logits > 0) & truth).sum() / truth.sum() + ((logits <= 0) & ~truth).sum() / (~truth).sum())
    assert float(balanced) == pytest.approx(float(result.ovr_balanced_accuracy[0, lay, head]), abs=1e-6)
    only_ovr = probe_heads(acts, seed=3, mode="ovr", steps=50)
    assert only_ovr.multiclass_accuracy is None and only_ovr.ovr_accuracy.shape == (3, 3, 4)


def test_probe_split_by_group_and_chunking() -> None:
    acts, _ = _planted_acts()
    result = probe_heads(acts, seed=1, steps=60, chunk_layers=1)
    train_groups = {acts.groups[i] for i in result.train_index.tolist()}
    test_groups = {acts.groups[i] for i in result.test_index.tolist()}
    assert not train_groups & test_groups
    assert len(test_groups) == round(0.3 * 60)
    whole = probe_heads(acts, seed=1, steps=60)
    torch.testing.assert_close(result.ovr_balanced_accuracy, whole.ovr_balanced_accuracy)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_probe_functions_and_errors() -> None:
    acts, _ = _planted_acts()
    labels = list(acts.labels)
    labels[0] = "rare"  # one sample: only on one side of any split
    rare = HeadActivations(acts=acts.acts, labels=tuple(labels), groups=acts.groups)
    result = probe_heads(rare, mode="multiclass", steps=30)
    assert result.functions == ("alpha", "beta", "gamma") and result.config["dropped_functions"] == ["rare"]
    with pytest.raises(ValueError, match="rare"):
        probe_heads(rare, functions=["alpha", "rare"], steps=5)
    picked = probe_heads(acts, functions=["gamma", "alpha"], mode="ovr", steps=30)
    assert picked.functions == ("gamma", "alpha")
    assert picked.config["n_train"] + picked.config["n_test"] == sum(x in ("gamma", "alpha") for x in acts.labels)
    with pytest.raises(ValueError, match="mode"):
        probe_heads(acts, mode="svm")  # type: ignore[arg-type]


def test_split_by_group() -> None:
    groups = [g for g in range(20) for _ in range(g % 3 + 1)]
    train, test = split_by_group(groups, test_fraction=0.3, seed=5)
    assert sorted(train.tolist() + test.tolist()) == list(range(len(groups)))
    assert not {groups[i] for i in train.tolist()} & {groups[i] for i in test.tolist()}
    assert len({groups[i] for i in test.tolist()}) == 6
    again = split_by_group(groups, test_fraction=0.3, seed=5)
    assert torch.equal(again[1], test)
    assert not torch.equal(split_by_group(groups, test_fraction=0.3, seed=6)[1], test)
    with pytest.raises(ValueError, match="2 groups"):
        split_by_group([1, 1, 1])
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_group(groups, test_fraction=1.0)


# --- selection ---------------------------------------------------------------------------------


def test_elbow_on_hand_curve() -> None:
    # chord from (0, 1) to (7, 0) lies at 1 - i/7; the largest gap to it is at i = 3 (0.571 - 0.2)
    assert elbow_index([1.0, 0.9, 0.8, 0.2, 0.15, 0.1, 0.05, 0.0]) == 3
    assert elbow_index(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])) == 0  # a straight line: no elbow
    assert elbow_index([0.5, 0.4]) == 0
    with pytest.raises(ValueError):
        elbow_index([])


def _hand_result() -> ProbeResult:
    a = torch.full((2, 4), 0.5)
    a[0, 0], a[0, 1] = 0.9, 0.8
    b = torch.full((2, 4), 0.5)
    b[0, 1], b[1, 0] = 0.85, 0.95
    scores = torch.stack([a, b])
    return ProbeResult(
        functions=("A", "B"),
        train_index=torch.arange(6),
        test_index=torch.arange(6, 9),
        config={"mode": "ovr"},
        ovr_accuracy=scores.clone(),
        ovr_balanced_accuracy=scores.clone(),
        ovr_weights=torch.randn(2, 2, 4, 3),
        ovr_bias=torch.zeros(2, 2, 4),
    )


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_selection_summaries_on_hand_result(tmp_path: Path) -> None:
    result = _hand_result()
    assert result.functional_heads("A", k=2) == [(0, 0), (0, 1)]
    assert result.functional_heads("B", k=2) == [(1, 0), (0, 1)]
    assert result.functional_heads("A") == [(0, 0), (0, 1)]  # elbow of 0.9, 0.8, 0.5 x 6
    assert result.sparsity(k=2) == {"A": 0.25, "B": 0.25}
    assert result.layer_distribution("A", k=2).tolist() == [2, 0]
    assert result.layer_distribution("B", k=2).tolist() == [1, 1]
    torch.testing.assert_close(result.overlap(k=2), torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]]))
    rows = result.to_rows()
    assert len(rows) == 16
    assert rows[0] == {
        "probe": "ovr",
        "function": "A",
        "layer": 0,
        "head": 0,
        "accuracy": pytest.approx(0.9),
        "balanced_accuracy": pytest.approx(0.9),
        "rank": 1,
    }
    with pytest.raises(KeyError, match="unknown function"):
        result.functional_heads("C")
    with pytest.raises(ValueError, match="multiclass"):
        result.scores("A", source="multiclass")
    with pytest.raises(ValueError, match="needs k"):
        result.functional_heads("A", method="topk")
    loaded = ProbeResult.load(result.save(tmp_path / "probe"))
    assert loaded.functions == result.functions and loaded.config == result.config
    torch.testing.assert_close(loaded.ovr_weights, result.ovr_weights)
    assert loaded.multiclass_accuracy is None
    with pytest.raises(ValueError, match="overlap"):
        ProbeResult(
            functions=("A", "B"),
            train_index=torch.arange(3),
            test_index=torch.arange(2, 4),
            ovr_accuracy=torch.zeros(2, 2, 4),
            ovr_balanced_accuracy=torch.zeros(2, 2, 4),
        )
    with pytest.raises(ValueError, match="ovr_weights"):
        ProbeResult(
            functions=("A", "B"),
            train_index=torch.arange(3),
            test_index=torch.arange(3, 4),
            ovr_balanced_accuracy=torch.zeros(2, 2, 4),
            ovr_weights=torch.zeros(2, 3, 4, 5),
        )


@pytest.mark.unchecked_arguments  # passes a method the annotation forbids, to check the error
def test_select_heads_and_jaccard_by_hand() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.5], [0.9, 0.1, 0.3]])
    assert select_heads(scores, k=3) == [(0, 1), (1, 0), (0, 2)]  # tie 0.9: layer 0 first
    assert select_heads(scores, k=1, method="topk") == [(0, 1)]
    curve = torch.tensor([[1.0, 0.9, 0.8, 0.2], [0.15, 0.1, 0.05, 0.0]])  # elbow_index 3 (hand case above)
    assert select_heads(curve) == [(0, 0), (0, 1), (0, 2)]
    assert select_heads(torch.tensor([[3.0, 2.0, 1.0]])) == [(0, 0)]  # straight line: at least one head
    with pytest.raises(ValueError, match="k must be in 1..6"):
        select_heads(scores, k=7)
    with pytest.raises(ValueError, match="method"):
        select_heads(scores, method="best")  # type: ignore[arg-type]
    sets = [{(0, 0), (0, 1)}, {(0, 1), (1, 2)}, set()]
    masks = torch.zeros(3, 2, 3, dtype=torch.bool)
    for i, heads in enumerate(sets):
        for layer, head in heads:
            masks[i, layer, head] = True
    expected = [[len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets]
    torch.testing.assert_close(jaccard_overlap(masks), torch.tensor(expected))


def test_head_activations_chunking_and_means() -> None:
    z = torch.randn(5, 3, 2, 4, generator=torch.Generator().manual_seed(0))
    acts = HeadActivations(acts=z.numpy(), labels=("a",) * 5, groups=tuple(range(5)))
    per_layer = 5 * 2 * 4 * 4  # bytes of one layer of every sample in float32
    assert acts.layers_per_chunk() == 3
    assert acts.layers_per_chunk(2 * per_layer) == 2
    assert acts.layers_per_chunk(1) == 1
    torch.testing.assert_close(acts.head_means(), torch.from_numpy(z.numpy().astype(np.float64).mean(0)).float())


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_head_activations_validation_and_roundtrip(tmp_path: Path) -> None:
    acts, _ = _planted_acts()
    loaded = HeadActivations.load(acts.save(tmp_path / "acts"), mmap=False)
    assert torch.equal(loaded.acts, acts.acts) and loaded.labels == acts.labels and loaded.groups == acts.groups
    assert loaded.metadata == {"toy": True}
    with pytest.raises(ValueError, match="n_samples, n_layers"):
        HeadActivations(acts=torch.zeros(3, 4, 5), labels=("a",) * 3, groups=(0,) * 3)
    with pytest.raises(ValueError, match="labels"):
        HeadActivations(acts=torch.zeros(3, 1, 1, 2), labels=("a",), groups=(0,) * 3)
    with pytest.raises(ValueError, match="float16 or float32"):
        HeadActivations(acts=torch.zeros(3, 1, 1, 2, dtype=torch.float64), labels=("a",) * 3, groups=(0,) * 3)


def test_mean_difference_directions_by_hand() -> None:
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(7, 2, 3, 4, generator=gen)
    labels = ("x", "y", "x", "z", "y", "x", "z")
    acts = HeadActivations(acts=z, labels=labels, groups=tuple(range(7)))
    dirs = mean_difference_directions(acts, chunk_layers=1)
    assert dirs.functions == ("x", "y", "z")
    zn = z.numpy().astype(np.float64)
    for fi, f in enumerate(dirs.functions):
        for lay in range(2):
            for head in range(3):
                pos = np.array([zn[i, lay, head] for i in range(7) if labels[i] == f]).mean(0)
                neg = np.array([zn[i, lay, head] for i in range(7) if labels[i] != f]).mean(0)
                u = (pos - neg) / np.linalg.norm(pos - neg)
                np.testing.assert_allclose(dirs.u[fi, lay, head].numpy(), u, atol=1e-5)
                np.testing.assert_allclose(float(dirs.sigma[fi, lay, head]), np.std(zn[:, lay, head] @ u), atol=1e-5)
    # correct vs incorrect within a function, on a subset of samples
    correct = [True, True, False, True, False, True, False]
    sub = mean_difference_directions(acts, functions=["x"], correct=correct, indices=[0, 2, 5, 1])
    diff = (zn[0] + zn[5]) / 2 - zn[2]
    np.testing.assert_allclose(sub["x"][0].numpy(), diff / np.linalg.norm(diff, axis=-1, keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match="no sample"):
        mean_difference_directions(acts, functions=["x"], correct=[True] * 7)


# --- plots -----------------------------------------------------------------------------------


def test_plots_return_figures() -> None:
    result = _hand_result()
    maps = plot_function_head_maps(result, k=2)
    heatmaps = [t for t in maps.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 2 and np.asarray(heatmaps[1].z).shape == (2, 4)
    marks = [t for t in maps.data if isinstance(t, go.Scatter)]
    assert list(marks[0].x) == [0, 1] and list(marks[0].y) == [0, 0]
    bars = plot_heads_per_layer(result, k=2)
    assert [list(t.y) for t in bars.data] == [[2, 0], [1, 1]]
    overlap = plot_function_overlap(result, k=2)
    np.testing.assert_allclose(np.asarray(overlap.data[0].z), [[1, 1 / 3], [1 / 3, 1]])
    curve = plot_sorted_scores(result, "A")
    assert len(curve.data[0].y) == 8
    with pytest.raises(ValueError, match="unknown"):
        plot_heads_per_layer(result, functions=["nope"])
