"""TransformerLens' own tools on a LlavaLens: the image enters through hook_embed, decompositions
sum to the residual stream, TransformerLens' patching functions take a LlavaBatch, string tokens,
test_prompt and detect_head see the image."""

from __future__ import annotations

import pytest
import torch
from conftest import striped_image, tiny_lens
from transformer_lens import patching as tl_patching
from transformer_lens.utils import get_act_name

from vh_lens import patching
from vh_lens.core.fast_attention import takes_fast_path

QUESTIONS = ["What is in the picture?", "How many red circles are there in this rather large image?"]


def _batch(model, n=2):
    images = [striped_image((70, 40), 0), striped_image((50, 90), 1)][:n]
    return model.prepare(images=images, questions=QUESTIONS[:n])


def _metric(model, clean):
    with torch.no_grad():
        last = model(clean)[:, -1]
    order = last.argsort(-1, descending=True)
    return patching.logit_diff_metric(clean, order[:, 0], order[:, 1])


# --------------------------------------------------------------------------------------------
# hook_embed and decompositions


@pytest.mark.parametrize(("kind", "n_kv"), [("llava", None), ("llava", 2), ("llava_next", None)])
def test_decompositions_sum_to_the_final_residual(kind, n_kv):
    model = tiny_lens(kind, "llama", n_kv)
    batch = _batch(model)
    assert not bool(batch.attention_mask.all())  # left padding
    torch.set_grad_enabled(False)  # TransformerLens' decompositions multiply by weights that require grad
    try:
        _check_decompositions(model, batch)
    finally:
        torch.set_grad_enabled(True)


def _check_decompositions(model, batch):
    _, cache = model.run_with_cache(batch)
    final = cache[get_act_name("resid_post", model.cfg.n_layers - 1)]
    assert torch.equal(cache["hook_embed"], batch.embeds)  # the image features come out of hook_embed
    assert torch.equal(cache["blocks.0.hook_resid_pre"], batch.embeds)
    stack, labels = cache.decompose_resid(apply_ln=False, return_labels=True)
    assert labels[0] == "embed"
    assert float((stack.sum(0) - final).abs().max()) < 1e-5
    full = cache.get_full_resid_decomposition(apply_ln=False, expand_neurons=False)
    assert float((full.sum(0) - final).abs().max()) < 1e-4
    heads = cache.stack_head_results(layer=-1)  # [layer*head, batch, pos, d_model]
    rest = cache["hook_embed"] + sum(
        cache[get_act_name("mlp_out", l)] + model.lm.blocks[l].attn.b_O for l in range(model.cfg.n_layers)
    )
    assert float((heads.sum(0) + rest - final).abs().max()) < 1e-4


def test_logit_attrs_reproduce_the_logit_difference():
    model = tiny_lens()
    batch = _batch(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch)
    metric = _metric(model, batch)
    with torch.no_grad():
        stack = cache.decompose_resid(
            apply_ln=False, pos_slice=-1
        )  # [component, batch, d_model]; logit_attrs scales it
        attrs = cache.logit_attrs(stack, tokens=metric.answer_ids, incorrect_tokens=metric.foil_ids, pos_slice=-1)
    assert torch.allclose(attrs.sum(0), metric.per_sample(logits), atol=1e-4)


def test_a_hook_on_hook_embed_sees_and_changes_the_image_whatever_the_order():
    model = tiny_lens()
    batch = _batch(model)
    image = torch.stack([lay.image_mask for lay in batch.layout])
    seen = []

    def zero_image(x, *, hook):
        seen.append(x.clone())
        return x * (~image)[..., None].to(x)

    with torch.no_grad(), model.hooks([("hook_embed", zero_image)]):  # added before the run's own hooks
        got = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)])
        want = model(batch.with_embeds(batch.embeds * (~image)[..., None]))
    assert torch.equal(seen[0], batch.embeds)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, model(batch), atol=1e-3)  # the image mattered


def test_generation_is_unchanged_by_a_hook_free_splice():
    model = tiny_lens()
    batch = _batch(model)
    tokens = model.generate_tokens(batch, 3, stop_at_eos=False)
    # greedy by hand: append each token and rerun the whole sequence
    for step in range(3):
        with torch.no_grad():
            nxt = model(batch)[:, -1].argmax(-1)
        assert torch.equal(nxt, tokens[:, step])
        batch = model.append_tokens(batch, nxt[:, None])


def test_bare_image_ids_are_refused_and_text_ids_run():
    model = tiny_lens()
    batch = _batch(model)
    with pytest.raises(ValueError, match="image token"):
        model.lm(batch.input_ids)
    with pytest.raises(ValueError, match="image token"):
        model.lm.run_with_cache(batch.input_ids)
    text = model.prepare(questions=["Is it?"])
    with torch.no_grad():
        assert torch.allclose(model.lm(text.input_ids), model(text), atol=1e-6)


# --------------------------------------------------------------------------------------------
# TransformerLens' patching functions with a LlavaLens and a LlavaBatch


def _setup():
    model = tiny_lens()
    clean = _batch(model)
    corrupt = patching.noise_image_embeddings(clean, seed=1)
    metric = _metric(model, clean)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        m_c, m_r = float(metric(model(clean))), float(metric(model(corrupt)))
    return model, clean, corrupt, metric, cache, m_c, m_r


def _by_hand(model, corrupt, cache, metric, name, where):
    """The metric after setting ``act[where] = clean[where]`` at ``name`` (a plain hook written here)."""

    def hook(act, *, hook):
        act = act.clone()
        act[where] = cache[name][where]
        return act

    with torch.no_grad():
        return float(metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])))


def test_resid_pre_patching_agrees_with_editing_the_embeddings():
    model, clean, corrupt, metric, cache, m_c, m_r = _setup()
    with torch.no_grad():
        got = tl_patching.get_act_patch_resid_pre(model, corrupt, cache, metric)
    assert got.shape == (model.cfg.n_layers, clean.shape[1])
    lay = clean.layout[0]
    for p in [0, int(lay.image_positions[3]), clean.shape[1] - 1]:
        embeds = corrupt.embeds.clone()
        embeds[:, p] = clean.embeds[:, p]
        with torch.no_grad():
            want = float(metric(model(corrupt.with_embeds(embeds))))
        assert abs(float(got[0, p]) - want) < 1e-5
    # a text position before any image: nothing differs there at layer 0, so nothing is restored
    assert abs(float(patching.normalise(got[0, 0], m_c, m_r))) < 1e-5
    # after the last attention, the last position carries everything the logits read: full effect
    with torch.no_grad():
        mid = tl_patching.get_act_patch_resid_mid(model, corrupt, cache, metric)
    assert abs(float(patching.normalise(mid[-1, -1], m_c, m_r)) - 1.0) < 1e-5


LAYER_POS = ["get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out"]
BY_POS = {
    "z": "get_act_patch_attn_head_out_by_pos",
    "q": "get_act_patch_attn_head_q_by_pos",
    "k": "get_act_patch_attn_head_k_by_pos",
    "v": "get_act_patch_attn_head_v_by_pos",
}
ALL_POS = {
    "z": "get_act_patch_attn_head_out_all_pos",
    "q": "get_act_patch_attn_head_q_all_pos",
    "k": "get_act_patch_attn_head_k_all_pos",
    "v": "get_act_patch_attn_head_v_all_pos",
    "pattern": "get_act_patch_attn_head_pattern_all_pos",
}


def test_every_transformer_lens_patching_function_takes_a_llava_batch():
    import pandas as pd

    model, clean, corrupt, metric, cache, m_c, m_r = _setup()
    n_layers, n_pos = model.cfg.n_layers, clean.shape[1]
    positions = [0, int(clean.layout[0].image_positions[5]), n_pos - 1]
    with torch.no_grad():
        for name in LAYER_POS:
            act = name.removeprefix("get_act_patch_")
            got = getattr(tl_patching, name)(model, corrupt, cache, metric)
            assert got.shape == (n_layers, n_pos)
            for layer in range(n_layers):
                for p in positions:
                    want = _by_hand(model, corrupt, cache, metric, get_act_name(act, layer), (slice(None), p))
                    assert abs(float(got[layer, p]) - want) < 1e-5, (name, layer, p)
        for act, name in BY_POS.items():  # [layer, pos, head]: a few rows given as index_df
            rows = pd.DataFrame(
                [(l, p, h) for l in range(n_layers) for p in positions for h in (0, 3)],
                columns=["layer", "pos", "head"],
            )
            got = getattr(tl_patching, name.replace("get_act_patch_", "get_act_patch_"))(
                model, corrupt, cache, metric, index_axis_names=None, index_df=rows
            )
            for value, (l, p, h) in zip(got.tolist(), rows.itertuples(index=False)):
                want = _by_hand(model, corrupt, cache, metric, get_act_name(act, l), (slice(None), p, h))
                assert abs(value - want) < 1e-5, (name, l, p, h)
        for act, name in ALL_POS.items():
            got = getattr(tl_patching, name)(model, corrupt, cache, metric)
            assert got.shape == (n_layers, model.cfg.n_heads)
            for l in range(n_layers):
                for h in range(model.cfg.n_heads):
                    where = (slice(None), h) if act == "pattern" else (slice(None), slice(None), h)
                    want = _by_hand(model, corrupt, cache, metric, get_act_name(act, l), where)
                    assert abs(float(got[l, h]) - want) < 1e-5, (name, l, h)
        rows = pd.DataFrame([(1, 2, n_pos - 1), (0, 1, positions[1])], columns=["layer", "head", "dest_pos"])
        got = tl_patching.get_act_patch_attn_head_pattern_by_pos(
            model, corrupt, cache, metric, index_axis_names=None, index_df=rows
        )
        for value, (l, h, d) in zip(got.tolist(), rows.itertuples(index=False)):
            assert (
                abs(value - _by_hand(model, corrupt, cache, metric, get_act_name("pattern", l), (slice(None), h, d)))
                < 1e-5
            )
        rows = pd.DataFrame(
            [(1, 2, n_pos - 1, positions[1]), (0, 3, n_pos - 1, 0)], columns=["layer", "head", "dest_pos", "src_pos"]
        )
        got = tl_patching.get_act_patch_attn_head_pattern_dest_src_pos(
            model, corrupt, cache, metric, index_axis_names=None, index_df=rows
        )
        for value, (l, h, d, s) in zip(got.tolist(), rows.itertuples(index=False)):
            assert (
                abs(value - _by_hand(model, corrupt, cache, metric, get_act_name("pattern", l), (slice(None), h, d, s)))
                < 1e-5
            )
        every = tl_patching.get_act_patch_attn_head_all_pos_every(model, corrupt, cache, metric)
        assert every.shape == (5, n_layers, model.cfg.n_heads)
        block = tl_patching.get_act_patch_block_every(model, corrupt, cache, metric)
        assert block.shape == (3, n_layers, n_pos)
        assert (
            abs(
                float(block[0, 0, positions[1]])
                - float(tl_patching.get_act_patch_resid_pre(model, corrupt, cache, metric)[0, positions[1]])
            )
            < 1e-6
        )


def test_patching_everything_gives_one_and_nothing_zero():
    model, clean, corrupt, metric, cache, m_c, m_r = _setup()
    image = torch.stack([lay.image_mask for lay in clean.layout])
    everything = patching.Sites(
        "regions", "resid_pre", (image, torch.zeros_like(image)), (None, None), ("image", "nothing"), None
    )
    result = patching.activation_patch(model, clean, corrupt, metric, everything)
    assert abs(float(result.effect[0, 0]) - 1.0) < 1e-5  # the corruption touched only image positions
    assert abs(float(result.effect[0, 1])) < 1e-6
    assert torch.allclose(result.effect[:, 1], torch.zeros(model.cfg.n_layers, dtype=result.effect.dtype), atol=1e-6)
    heads = patching.activation_patch(
        model, clean, corrupt, metric, patching.head_sites(clean, model.cfg.n_heads, "all")
    )
    assert heads.effect.shape == (model.cfg.n_layers, model.cfg.n_heads)


# --------------------------------------------------------------------------------------------
# Gradients through the fused attention path


def test_gradients_through_the_fused_path_equal_transformer_lens_attention():
    model = tiny_lens()
    batch = _batch(model)
    metric = _metric(model, batch)
    grads = []
    for fast in (True, False):
        model.fast_attention = fast
        stored = {}

        def keep(x, *, hook):
            if hook.name == "hook_embed":
                x = x.detach().requires_grad_(True)
            stored[hook.name] = x
            return x

        names = ["hook_embed", "blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"]
        seen_fast = []
        value = metric(
            model.run_with_hooks(
                batch,
                fwd_hooks=[(n, keep) for n in names]
                + [
                    (
                        "blocks.1.hook_resid_pre",
                        lambda x, hook: seen_fast.append(takes_fast_path(model.lm.blocks[1].attn)),
                    )
                ],
            )
        )
        grads.append(torch.autograd.grad(value, [stored[n] for n in names]))
        assert seen_fast == [fast]
    model.fast_attention = True
    for g_fast, g_tl in zip(*grads):
        scale = float(g_tl.abs().max())
        assert scale > 0
        assert float((g_fast - g_tl).abs().max()) <= 1e-5 * max(1.0, scale)


def test_attribution_matches_activation_patching_for_a_small_corruption():
    model = tiny_lens()
    clean = _batch(model)
    corrupt = patching.noise_image_embeddings(clean, std=1e-3, seed=0)
    metric = _metric(model, clean)
    for sites in (patching.position_sites(clean), patching.head_sites(clean, model.cfg.n_heads, "all")):
        real = patching.activation_patch(model, clean, corrupt, metric, sites)
        est = patching.attribution_patch(model, clean, corrupt, metric, sites)
        assert real.correlation(est) > 0.99
        assert float((real.effect - est.effect).abs().max()) < 0.05
    # the fused and TransformerLens' attention give the same attribution (a large corruption, so
    # that a_c - a_r is not mostly float rounding)
    corrupt = patching.noise_image_embeddings(clean, seed=0)
    for sites in (patching.position_sites(clean), patching.head_sites(clean, model.cfg.n_heads, "query")):
        est = patching.attribution_patch(model, clean, corrupt, metric, sites)
        model.fast_attention = False
        slow = patching.attribution_patch(model, clean, corrupt, metric, sites)
        model.fast_attention = True
        assert float((slow.effect - est.effect).abs().max()) < 1e-4 * max(1.0, float(est.effect.abs().max()))


# --------------------------------------------------------------------------------------------
# Tokens, test_prompt, detect_head


def test_str_tokens_mark_every_image_position():
    model = tiny_lens("llava_next", "llama")
    batch = _batch(model)
    rows = model.to_str_tokens(batch)
    assert model.to_tokens(batch) is batch.input_ids
    for row, lay, ids in zip(rows, batch.layout, batch.input_ids):
        assert len(row) == batch.shape[1]
        assert row[: lay.n_pad] == ["<pad>"] * lay.n_pad
        marks = [row[p] for p in lay.image_positions.tolist()]
        assert len(set(marks)) == lay.n_image_tokens  # one readable marker per image token
        assert marks[0] == "<img:base r0c0>"
        assert sum(m.startswith("<img:tiles") for m in marks) == lay.grid("tiles").positions.numel()
        assert sum(m.startswith("<img:newline") for m in marks) == lay.newline_positions.numel()
        for p in lay.text_positions.tolist():
            assert row[p] == model.tokenizer.decode([int(ids[p])])
    with pytest.raises(ValueError, match="placeholder"):
        model.to_tokens(f"{model.image_token} hi")


def test_test_prompt_ranks_the_answer_by_hand():
    model = tiny_lens()
    image = striped_image((70, 40), 0)
    got = model.test_prompt(image, "What is it?", "a red square", top_k=3)
    batch = model.prepare(images=[image], questions=["What is it?"], answers=["a red square"])
    lay = batch.layout[0]
    with torch.no_grad():
        probs = model(batch)[0].softmax(-1)
    for j, p in enumerate(lay.answer_positions.tolist()):
        target = int(batch.input_ids[0, p])
        row = probs[p - 1]
        assert abs(float(got.probs[j]) - float(row[target])) < 1e-5
        assert int(got.ranks[j]) == int((row > row[target]).sum())
        assert got.top_tokens[j][0] == model.tokenizer.decode([int(row.argmax())])
    assert "rank" in str(got)


def test_detect_head_on_an_image_prompt():
    model = tiny_lens()
    batch = _batch(model, 1)
    scores = patching.detect_head(model, batch, "previous_token_head")
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    n = batch.shape[1]
    prev = torch.zeros(n, n)
    prev[1:, :-1] = torch.eye(n - 1)
    for l in range(model.cfg.n_layers):
        pattern = cache["pattern", l][0]  # [head, q, k]
        want = (pattern * prev).sum((-1, -2)) / pattern.sum((-1, -2))
        assert torch.allclose(scores[l], want, atol=1e-5)
    with pytest.raises(ValueError, match="one sample"):
        patching.detect_head(model, _batch(model, 2), "previous_token_head")


def test_str_tokens_name_the_image_when_a_prompt_holds_several():
    model = tiny_lens("llava_next", "llama")
    images = [striped_image((70, 40), 0), striped_image((50, 90), 1)]
    batch = model.prepare(images=[images, [images[0]]], questions=["how many dogs?", "is there a cat"])
    str_toks = model.to_str_tokens(batch)
    lay = batch.layout[0]
    for image in lay.images:
        first = int(image.grids[0].positions[0, 0])
        assert str_toks[0][first] == f"<img{image.index}:base r0c0>"
    marked = [str_toks[0][p] for p in lay.image_positions.tolist()]
    assert len(set(marked)) == len(marked)  # every image position has its own marker
    assert str_toks[1][int(batch.layout[1].images[0].grids[0].positions[0, 0])] == "<img:base r0c0>"
