"""The fused attention path: same numbers as TransformerLens' attention and Hugging Face, taken
only when no hook reads the pattern; the scan's query-key rows equal the pattern rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import striped_image, tiny_lens

import vh_lens
from vh_lens.core.fast_attention import mlp_supported, takes_fast_path
from vh_lens.data.sample import Sample
from vh_lens.testing import FAMILIES, tiny_llava
from vh_lens.visual_heads.scan import HEAD_METRICS, scan_visual_heads

QUESTIONS = ["What is in the picture?", "How many red circles are there in this rather large image?", "Is it?"]


def _images():
    return [striped_image((70, 40), 0), striped_image((50, 90), 1), striped_image((64, 64), 2)]


def _both_paths(model, batch, names=("hook_z", "hook_post")):
    """Logits and the named activations with the fused path on, then off."""
    out = []
    for fast in (True, False):
        model.fast_attention = fast
        with torch.no_grad():
            logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.split(".")[-1] in names)
        out.append((logits, cache))
    model.fast_attention = True
    return out


@pytest.mark.parametrize(("kind", "backbone", "n_kv"), FAMILIES, ids=[f"{k}-{b}-{n}" for k, b, n in FAMILIES])
def test_fused_path_equals_transformer_lens_attention(kind, backbone, n_kv):
    model = tiny_lens(kind, backbone, n_kv)
    batch = model.prepare(images=_images(), questions=QUESTIONS)  # left padded
    assert not bool(batch.attention_mask.all())
    assert all(takes_fast_path(block.attn) for block in model.lm.blocks)
    assert all(mlp_supported(block.mlp) and hasattr(block.mlp, "_vh_tl_forward") for block in model.lm.blocks)
    (fast, fast_cache), (slow, slow_cache) = _both_paths(model, batch)
    assert {n.split(".")[-1] for n in fast_cache} == {"hook_z", "hook_post"}
    valid = batch.attention_mask.bool()
    assert float((fast - slow)[valid].abs().max()) < 1e-5
    for name in fast_cache:
        assert float((fast_cache[name] - slow_cache[name]).abs().max()) < 1e-5, name
    # padded query rows: TransformerLens zeroes them (NaN cleanup); the fused path too
    assert float(fast_cache["blocks.0.attn.hook_z"][~valid].abs().max()) == 0.0


def test_pattern_hooks_send_the_layer_back_to_transformer_lens():
    model = tiny_lens("llava", "llama")
    attn = model.lm.blocks[1].attn
    batch = model.prepare(images=_images()[:2], questions=QUESTIONS[:2])
    seen = []

    def grab(pattern, hook):
        assert not takes_fast_path(attn)
        seen.append(pattern.shape)

    assert takes_fast_path(attn)
    with torch.no_grad():
        model.run_with_hooks(
            batch, fwd_hooks=[("blocks.1.attn.hook_attn_scores", grab), ("blocks.1.attn.hook_pattern", grab)]
        )
    assert len(seen) == 2 and takes_fast_path(attn)  # hooks removed: fused again
    with model.hooks(bwd_hooks=[("blocks.1.attn.hook_pattern", lambda g, hook: None)]):
        assert not takes_fast_path(attn) and takes_fast_path(model.lm.blocks[0].attn)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch)
    n = batch.input_ids.shape[1]
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, model.cfg.n_heads, n, n)
    model.fast_attention = False
    assert not takes_fast_path(attn)
    model.fast_attention = True


def test_gradients_agree_on_both_paths():
    model = tiny_lens("llava", "llama", 2)
    batch = model.prepare(images=_images(), questions=QUESTIONS)
    grads = []
    for fast in (True, False):
        model.fast_attention = fast
        model.lm.zero_grad(set_to_none=True)
        logits = model(batch)
        logits[:, -1].logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.lm.named_parameters() if "attn" in n and p.grad is not None})
    model.fast_attention = True
    model.lm.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, g in grads[0].items():
        scale = float(grads[1][name].abs().max()) + 1e-6
        assert float((g - grads[1][name]).abs().max()) / scale < 1e-4, name


def test_sliding_window_matches_hugging_face_on_both_paths():
    hf, processor = tiny_llava("llava", "mistral", seed=3)
    hf.config.text_config.sliding_window = 9  # far shorter than the prompts
    hf.model.language_model.config.sliding_window = 9
    model = vh_lens.load_llava(hf, processor=processor)
    assert model.lm.blocks[0].attn.attn_type == "local" and model.cfg.window_size == 9
    batch = model.prepare(images=_images()[:2], questions=QUESTIONS[:2])
    (fast, _), (slow, _) = _both_paths(model, batch)
    for i in range(2):
        enc = processor(images=[_images()[i]], text=[batch.prompts[i]], return_tensors="pt")
        with torch.no_grad():
            ref = hf(**enc).logits[0].log_softmax(-1)
        n_pad = batch.layout[i].n_pad
        for got in (fast, slow):
            assert float((got[i, n_pad:].log_softmax(-1) - ref).abs().max()) < 1e-4
    # a window that changes nothing would make this test vacuous
    hf.config.text_config.sliding_window = None
    hf.model.language_model.config.sliding_window = None
    enc = processor(images=[_images()[1]], text=[batch.prompts[1]], return_tensors="pt")
    with torch.no_grad():
        full = hf(**enc).logits[0].log_softmax(-1)
    assert float((fast[1, batch.layout[1].n_pad :].log_softmax(-1) - full).abs().max()) > 1e-2


def _samples():
    ims = _images()
    return [
        Sample(image=ims[0], question="how many dogs?", box=(0.0, 0.0, 30.0, 20.0)),
        Sample(image=ims[1], question="what color is the cat in this picture ?", box=(10.0, 40.0, 50.0, 90.0)),
        Sample(image=None, question="is there a red circle"),
        Sample(image=ims[2], question="is there a red circle in the image", box=(5.0, 5.0, 60.0, 30.0)),
        Sample(image=ims[0], question="what?"),
    ]


@pytest.mark.parametrize(
    ("kind", "backbone", "n_kv"), [("llava", "llama", 2), ("llava_next", "mistral", None), ("llava", "phi3", None)]
)
@pytest.mark.parametrize("query", ["last_prompt", "answer_token"])
def test_scan_rows_from_queries_and_keys_equal_pattern_rows(kind, backbone, n_kv, query):
    model = tiny_lens(kind, backbone, n_kv)
    samples = _samples()
    kw = {"batch_size": 3, "query": query, "keep_per_sample": True, "progress": False}
    qk = scan_visual_heads(model, samples, attention="qk", **kw)
    pattern = scan_visual_heads(model, samples, attention="pattern", **kw)
    for m in (*HEAD_METRICS, "detection"):
        np.testing.assert_allclose(qk.per_sample[m].numpy(), pattern.per_sample[m].numpy(), atol=1e-6, rtol=0)
    assert float(qk.per_sample["image_weight"].max()) > 0.05  # image tokens are attended at all


def test_scan_rows_respect_a_sliding_window():
    hf, processor = tiny_llava("llava", "mistral", seed=4)
    hf.config.text_config.sliding_window = 7
    model = vh_lens.load_llava(hf, processor=processor)
    kw = {"batch_size": 2, "keep_per_sample": True, "progress": False}
    qk = scan_visual_heads(model, _samples(), attention="qk", **kw)
    pattern = scan_visual_heads(model, _samples(), attention="pattern", **kw)
    np.testing.assert_allclose(
        qk.per_sample["text_weight"].numpy(), pattern.per_sample["text_weight"].numpy(), atol=1e-6
    )
    # sample 1's long question: the window (7 keys) ends after the image, so no image weight
    assert float(qk.per_sample["image_weight"][1].abs().max()) == 0.0
    assert float(qk.per_sample["image_weight"][0].max()) > 0.0  # short question: the image is in reach


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_scan_attention_argument_is_checked():
    model = tiny_lens("llava", "llama")
    with pytest.raises(ValueError, match="attention must be"):
        scan_visual_heads(model, _samples()[:1], attention="flash", progress=False)  # type: ignore[arg-type]

    class NoLm:
        cfg = model.cfg

    with pytest.raises(ValueError, match="attention='qk' needs"):
        scan_visual_heads(NoLm(), _samples()[:1], attention="qk", progress=False)
