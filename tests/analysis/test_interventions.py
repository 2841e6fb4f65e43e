"""Head interventions checked against Hugging Face eager Llama with the same edit made by hand."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pytest
import torch
from conftest import FakeBatch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_llama_weights
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from vh_lens.analysis.interventions import (
    HeadMeans,
    ablate_heads,
    head_means,
    query_position_mask,
    scale_heads,
    shift_heads,
)
from vh_lens.core.layout import TokenLayout
from vh_lens.data.sample import Sample

N_LAYERS, D_MODEL, N_HEADS, D_HEAD, D_VOCAB = 2, 32, 4, 8, 50
ATOL = 1e-5


# --------------------------------------------------------------------------------------------
# Tiny models: a Hugging Face Llama and the same weights as a HookedTransformer


def _tl_config(n_kv_heads: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        d_mlp=64,
        n_ctx=64,
        d_vocab=D_VOCAB,
        eps=1e-6,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=D_HEAD,
        rotary_adjacent_pairs=False,
        rotary_base=10000.0,
        final_rms=True,
        gated_mlp=True,
        n_key_value_heads=None if n_kv_heads == N_HEADS else n_kv_heads,
        original_architecture="LlamaForCausalLM",
        dtype=torch.float32,
    )


@dataclass
class Pair:
    hf: LlamaForCausalLM
    tl: HookedTransformer


@pytest.fixture(scope="module", params=[N_HEADS, 2], ids=["mha", "gqa"])
def pair(request) -> Pair:
    """Weights at std 0.5 so attention is far from uniform; ``lm_head`` at std 0.1 keeps the
    logits O(1), so float32 rounding stays well below the 1e-5 tolerance."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=D_VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=request.param,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        attn_implementation="eager",
    )
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1 if "lm_head" in name else 0.5)
    cfg = _tl_config(request.param)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False
    )
    tl.eval()
    return Pair(hf, tl)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch: sample 1 has 3 padding positions, sample 2 has 5."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, D_VOCAB, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    return ids, mask


def _hf_logits(hf: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, o_proj_input=None) -> torch.Tensor:
    """HF logits; ``o_proj_input(layer, x)`` may rewrite the input of ``o_proj`` ([b, pos, n_heads*d_head])."""
    handles = []
    if o_proj_input is not None:
        for layer, block in enumerate(hf.model.layers):

            def pre_hook(module, args, layer=layer):
                return (o_proj_input(layer, args[0].clone()),)

            handles.append(block.self_attn.o_proj.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            # TransformerLens numbers positions from the first non-padding token; so must HF.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            return hf(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    finally:
        for h in handles:
            h.remove()


def _tl_logits(tl: HookedTransformer, ids: torch.Tensor, mask: torch.Tensor, hooks=()) -> torch.Tensor:
    with torch.no_grad():
        return tl.run_with_hooks(ids, attention_mask=mask, fwd_hooks=list(hooks))


def _assert_close_on_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> None:
    """Compare at non-padding positions (padding rows are fully masked: HF and TL differ there)."""
    diff = (a - b)[mask.bool()].abs().max()
    assert diff <= ATOL, f"max logit difference {diff:.3g} > {ATOL}"


def _slices(heads: list[int]) -> list[slice]:
    return [slice(h * D_HEAD, (h + 1) * D_HEAD) for h in heads]


HEADS = [(1, 2), (0, 1), (1, 3)]


# --------------------------------------------------------------------------------------------
# Equivalence with Hugging Face


def test_baseline_matches_hf(pair, inputs):
    ids, mask = inputs
    _assert_close_on_tokens(_tl_logits(pair.tl, ids, mask), _hf_logits(pair.hf, ids, mask), mask)


def test_zero_ablation_matches_hf(pair, inputs):
    ids, mask = inputs

    def zero(layer, x):
        for s in _slices([h for l, h in HEADS if l == layer]):
            x[..., s] = 0.0
        return x

    expected = _hf_logits(pair.hf, ids, mask, zero)
    got = _tl_logits(pair.tl, ids, mask, ablate_heads(HEADS, "zero", cfg=pair.tl.cfg))
    _assert_close_on_tokens(got, expected, mask)
    assert (got - _tl_logits(pair.tl, ids, mask)).abs().max() > 1e-2  # the ablation does something


def test_mean_ablation_matches_hf(pair, inputs):
    ids, mask = inputs
    means = HeadMeans(mean=torch.randn(N_LAYERS, N_HEADS, D_HEAD, generator=torch.Generator().manual_seed(2)), count=7)

    def replace(layer, x):
        for (l, h), s in zip(HEADS, _slices([h for _, h in HEADS])):
            if l == layer:
                x[..., s] = means.mean[l, h]
        return x

    expected = _hf_logits(pair.hf, ids, mask, replace)
    got = _tl_logits(pair.tl, ids, mask, ablate_heads(HEADS, "mean", means=means))
    _assert_close_on_tokens(got, expected, mask)
    # a raw [n_layers, n_heads, d_head] tensor works the same
    raw = _tl_logits(pair.tl, ids, mask, ablate_heads(HEADS, "mean", means=means.mean))
    assert torch.equal(raw, got)


def test_uniform_ablation_matches_hf(pair, inputs, monkeypatch):
    ids, mask = inputs
    targets: dict[int, list[int]] = {}
    for layer, head in HEADS:
        targets.setdefault(layer, []).append(head)
    eager = modeling_llama.eager_attention_forward

    def uniform_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        heads = targets.get(module.layer_idx)
        if not heads:
            return out, weights
        allowed = (attention_mask == 0).to(weights.dtype).expand_as(weights)  # HF additive mask: 0 = allowed
        uniform = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)  # fully masked padding rows -> 0
        weights = weights.clone()
        weights[:, heads] = uniform[:, heads]
        values = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        return (weights @ values).transpose(1, 2).contiguous(), weights

    expected_base = _hf_logits(pair.hf, ids, mask)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", uniform_eager)
    expected = _hf_logits(pair.hf, ids, mask)
    assert (expected - expected_base).abs().max() > 1e-2  # the patch is live and changes the output
    got = _tl_logits(pair.tl, ids, mask, ablate_heads(HEADS, "uniform", cfg=pair.tl.cfg))
    _assert_close_on_tokens(got, expected, mask)


def test_uniform_pattern_keeps_causal_and_padding_mask(pair, inputs):
    ids, mask = inputs
    seen = {}

    def grab(pattern, *, hook):
        seen["pattern"] = pattern.clone()

    _tl_logits(pair.tl, ids, mask, [("blocks.1.attn.hook_pattern", grab)])
    base = seen.pop("pattern")
    hooks = ablate_heads([(1, 3)], "uniform") + [("blocks.1.attn.hook_pattern", grab)]
    _tl_logits(pair.tl, ids, mask, hooks)
    pattern = seen["pattern"]
    seq = ids.shape[1]
    allowed = torch.ones(seq, seq).tril().bool()[None] & mask.bool()[:, None, :]  # [b, q, k]
    allowed = allowed & mask.bool()[:, :, None]  # padding query rows attend nowhere
    expected = allowed.float() / allowed.float().sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(pattern[:, 3], expected, atol=1e-6, rtol=0)
    assert torch.equal(pattern[:, :3], base[:, :3])


# --------------------------------------------------------------------------------------------
# What the hooks touch


def _z(tl, ids, mask, hooks, layer=1) -> torch.Tensor:
    seen = {}

    def grab(z, *, hook):
        seen["z"] = z.clone()

    _tl_logits(tl, ids, mask, list(hooks) + [(f"blocks.{layer}.attn.hook_z", grab)])
    return seen["z"]


def test_interventions_touch_only_named_heads(pair, inputs):
    ids, mask = inputs
    tl = pair.tl
    base = _z(tl, ids, mask, [])
    heads = [(1, 2), (1, 0)]  # unsorted on purpose: per-head values follow this order
    others = [1, 3]
    means = torch.randn(N_LAYERS, N_HEADS, D_HEAD)
    u = torch.randn(2, D_HEAD)
    sigma = torch.tensor([0.5, 2.0])

    zero = _z(tl, ids, mask, ablate_heads(heads, "zero"))
    assert torch.equal(zero[:, :, [0, 2]], torch.zeros_like(zero[:, :, [0, 2]]))
    mean = _z(tl, ids, mask, ablate_heads(heads, "mean", means=means))
    assert torch.equal(mean[:, :, 2], means[1, 2].expand_as(mean[:, :, 2]))
    assert torch.equal(mean[:, :, 0], means[1, 0].expand_as(mean[:, :, 0]))
    scaled = _z(tl, ids, mask, scale_heads(heads, [3.0, -1.0]))
    torch.testing.assert_close(scaled[:, :, 2], 3.0 * base[:, :, 2], atol=0, rtol=0)
    torch.testing.assert_close(scaled[:, :, 0], -base[:, :, 0], atol=0, rtol=0)
    shifted = _z(tl, ids, mask, shift_heads(heads, u, alpha=5.0, sigma=sigma))
    for i, (_, h) in enumerate(heads):
        step = 5.0 * sigma[i] * u[i] / u[i].norm()
        torch.testing.assert_close(shifted[:, :, h], base[:, :, h] + step, atol=1e-6, rtol=0)
    for edited in (zero, mean, scaled, shifted):
        assert torch.equal(edited[:, :, others], base[:, :, others])


def test_scale_one_is_identity_and_zero_is_zero_ablation(pair, inputs):
    ids, mask = inputs
    base = _tl_logits(pair.tl, ids, mask)
    assert torch.equal(_tl_logits(pair.tl, ids, mask, scale_heads(HEADS, 1.0)), base)
    zero = _tl_logits(pair.tl, ids, mask, ablate_heads(HEADS, "zero"))
    assert torch.equal(_tl_logits(pair.tl, ids, mask, scale_heads(HEADS, 0.0)), zero)


def test_positions_restrict_the_edit(pair, inputs):
    ids, mask = inputs
    base = _z(pair.tl, ids, mask, [])
    last = _z(pair.tl, ids, mask, scale_heads([(1, 1)], 0.0, positions=[-1]))
    assert torch.equal(last[:, -1, 1], torch.zeros_like(last[:, -1, 1]))
    assert torch.equal(last[:, :-1], base[:, :-1])
    layouts = [_layout(int((m == 0).sum()), ids.shape[1], query=q) for m, q in zip(mask, [4, 6, 8])]
    where = query_position_mask(layouts)
    per_sample = _z(pair.tl, ids, mask, ablate_heads([(1, 1)], positions=where))
    expected = base.clone()
    expected[torch.arange(3), torch.tensor([4, 6, 8]), 1] = 0.0
    assert torch.equal(per_sample, expected)


def test_hooks_compose_with_user_hooks(pair, inputs):
    ids, mask = inputs
    calls = []
    user = ("blocks.0.attn.hook_z", lambda z, *, hook: calls.append(hook.name))
    _tl_logits(pair.tl, ids, mask, ablate_heads([(0, 1)]) + [user] + scale_heads([(1, 0)], 2.0))
    assert calls == ["blocks.0.attn.hook_z"]


# --------------------------------------------------------------------------------------------
# Hook lifetime and validation


def _no_hooks_left(tl: HookedTransformer) -> bool:
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in tl.hook_dict.values())


def test_hooks_are_removed_when_the_run_raises(pair, inputs):
    ids, mask = inputs
    tl = pair.tl

    def boom(x, *, hook):
        raise RuntimeError("boom")

    hooks = ablate_heads(HEADS, "uniform") + ablate_heads([(0, 0)]) + [("blocks.1.hook_resid_post", boom)]
    with pytest.raises(RuntimeError, match="boom"):
        tl.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks)
    assert _no_hooks_left(tl)
    with pytest.raises(RuntimeError, match="boom"):
        with tl.hooks(fwd_hooks=hooks):
            tl(ids, attention_mask=mask)
    assert _no_hooks_left(tl)
    # a bad head index without cfg raises inside the run, and the hooks are gone as well
    with pytest.raises(ValueError, match=r"\(1, 7\)"):
        tl.run_with_hooks(ids, attention_mask=mask, fwd_hooks=scale_heads([(1, 7)], 0.5))
    assert _no_hooks_left(tl)
    assert torch.equal(_tl_logits(tl, ids, mask), tl(ids, attention_mask=mask).detach())


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_validation_errors(pair):
    cfg = pair.tl.cfg
    with pytest.raises(ValueError, match=r"\(2, 0\).*layer 2 out of range"):
        ablate_heads([(2, 0)], cfg=cfg)
    with pytest.raises(ValueError, match=r"\(0, 4\).*head 4 out of range"):
        scale_heads([(0, 1), (0, 4)], 0.0, cfg=cfg)
    with pytest.raises(ValueError, match="more than once"):
        ablate_heads([(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="negative"):
        ablate_heads([(0, -1)])
    with pytest.raises(ValueError, match="pair of ints"):
        ablate_heads([(0, 1.5)])
    with pytest.raises(ValueError, match="no heads"):
        ablate_heads([])
    with pytest.raises(ValueError, match="unknown ablation method"):
        ablate_heads([(0, 1)], "random")
    with pytest.raises(ValueError, match="needs means"):
        ablate_heads([(0, 1)], "mean")
    with pytest.raises(ValueError, match="no mean"):
        ablate_heads([(1, 3)], "mean", means=torch.zeros(1, 4, D_HEAD))
    with pytest.raises(ValueError, match="one value per head"):
        scale_heads([(0, 1), (1, 1)], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="directions"):
        shift_heads([(0, 1)], torch.ones(2, D_HEAD))
    with pytest.raises(ValueError, match="zero"):
        shift_heads([(0, 1)], torch.zeros(1, D_HEAD))
    with pytest.raises(ValueError, match="positions"):
        scale_heads([(0, 1)], 0.0, positions=torch.tensor([0.5]))


def test_positions_out_of_range_raise(pair, inputs):
    ids, mask = inputs
    with pytest.raises(ValueError, match="out of range"):
        _tl_logits(pair.tl, ids, mask, scale_heads([(0, 1)], 0.0, positions=[9]))
    with pytest.raises(ValueError, match="does not fit"):
        _tl_logits(pair.tl, ids, mask, scale_heads([(0, 1)], 0.0, positions=torch.ones(8, dtype=torch.bool)))
    assert _no_hooks_left(pair.tl)


# --------------------------------------------------------------------------------------------
# head_means through a minimal stand-in for the vh_lens model API


def _layout(n_pad: int, seq: int, query: int | None = None) -> TokenLayout:
    empty = torch.zeros(0, dtype=torch.long)
    return TokenLayout(
        seq_len=seq,
        n_pad=n_pad,
        image_positions=empty,
        newline_positions=empty,
        text_positions=torch.arange(n_pad, seq),
        query_position=seq - 1 if query is None else query,
    )


class FakeModel:
    """The slice of the model API that :func:`head_means` uses, around a HookedTransformer."""

    def __init__(self, lm: HookedTransformer) -> None:
        self.lm = lm
        self.cfg = lm.cfg
        self.prepared: list[int] = []

    def prepare_samples(self, samples: list[Sample]) -> FakeBatch:
        self.prepared.append(len(samples))
        tokens = [[4 + (ord(c) % 40) for c in s.question] for s in samples]
        seq = max(map(len, tokens))
        ids = torch.zeros(len(tokens), seq, dtype=torch.long)
        mask = torch.zeros(len(tokens), seq, dtype=torch.long)
        for i, t in enumerate(tokens):
            ids[i, seq - len(t) :] = torch.tensor(t)
            mask[i, seq - len(t) :] = 1
        return FakeBatch(ids, mask, [_layout(seq - len(t), seq) for t in tokens])

    def run_with_hooks(self, batch: FakeBatch, fwd_hooks=()):
        return self.lm.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=list(fwd_hooks))


def _batch(ids: torch.Tensor, mask: torch.Tensor) -> FakeBatch:
    return FakeBatch(ids, mask, [_layout(int((m == 0).sum()), ids.shape[1]) for m in mask])


def _all_z(tl, ids, mask) -> torch.Tensor:
    """[n_layers, b, pos, n_heads, d_head] from a full cache (the independent reference)."""
    with torch.no_grad():
        _, cache = tl.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n.endswith("hook_z"))
    return torch.stack([cache["z", layer] for layer in range(N_LAYERS)])


def test_head_means_all_and_last_prompt(pair, inputs):
    ids, mask = inputs
    model = FakeModel(pair.tl)
    z = _all_z(pair.tl, ids, mask)
    keep = mask.bool()
    means = head_means(model, _batch(ids, mask), positions="all")
    torch.testing.assert_close(means.mean, z[:, keep].mean(1), atol=1e-6, rtol=1e-5)
    assert means.count == int(keep.sum()) and means.positions == "all"
    last = head_means(model, [_batch(ids, mask)], positions="last_prompt")
    torch.testing.assert_close(last.mean, z[:, :, -1].mean(1), atol=1e-6, rtol=1e-5)
    assert last.count == 3


def test_head_means_streams_batches_and_samples(pair, inputs, tmp_path):
    ids, mask = inputs
    model = FakeModel(pair.tl)
    first, second = _batch(ids[:1], mask[:1]), _batch(ids[1:, 3:], mask[1:, 3:])  # different lengths
    z1, z2 = (
        _all_z(pair.tl, first.input_ids, first.attention_mask),
        _all_z(pair.tl, second.input_ids, second.attention_mask),
    )
    pooled = torch.cat([z1[:, first.attention_mask.bool()], z2[:, second.attention_mask.bool()]], dim=1).mean(1)
    torch.testing.assert_close(head_means(model, [first, second]).mean, pooled, atol=1e-6, rtol=1e-5)

    samples = [Sample(image=None, question=q) for q in ["abc", "hello there", "x", "longer question here"]]
    from_samples = head_means(model, samples, batch_size=3)
    assert model.prepared == [3, 1]
    batches = [model.prepare_samples(samples[:3]), model.prepare_samples(samples[3:])]
    torch.testing.assert_close(from_samples.mean, head_means(model, batches).mean, atol=1e-6, rtol=1e-5)

    assert from_samples.save(tmp_path / "means") == tmp_path / "means"
    loaded = HeadMeans.load(tmp_path / "means")
    assert torch.equal(loaded.mean, from_samples.mean)
    assert (loaded.count, loaded.positions) == (from_samples.count, from_samples.positions)
    assert _no_hooks_left(pair.tl)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_head_means_validation(pair, inputs):
    with pytest.raises(ValueError, match="positions"):
        head_means(FakeModel(pair.tl), [], positions="first")
    with pytest.raises(ValueError, match="no positions"):
        head_means(FakeModel(pair.tl), [])
    with pytest.raises(ValueError, match="count"):
        HeadMeans(mean=torch.zeros(2, 4, 8), count=0)
    with pytest.raises(ValueError, match="n_layers, n_heads, d_head"):
        HeadMeans(mean=torch.zeros(4, 8), count=1)


def test_hook_fns_are_partials():
    """Hooks are plain functions with bound arguments: picklable-ish and inspectable."""
    ((name, fn),) = ablate_heads([(1, 2)], "uniform")
    assert name == "blocks.1.attn.hook_attn_scores" and isinstance(fn, partial)
    ((name, fn),) = shift_heads([(0, 3)], torch.ones(1, D_HEAD))
    assert name == "blocks.0.attn.hook_z"
