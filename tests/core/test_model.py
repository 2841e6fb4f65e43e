"""The spliced HookedTransformer against the Hugging Face LLaVA model (eager attention)."""

from __future__ import annotations

import pytest
import torch
from conftest import striped_image, tiny_lens, tiny_pair

from vh_lens.testing import (
    FAMILIES,  # llava x {llama MHA, llama GQA, mistral, qwen2, phi3}, llava_next x {llama, mistral}, vip_llava x llama
)

QUESTIONS = ["how many dogs?", "what color is the cat in this picture ?", "is there a red circle in the image"]


def _images():
    return [striped_image((70, 40), 0), striped_image((50, 90), 1), striped_image((64, 64), 2)]


def _hf_single(hf, processor, prompt, image):
    enc = processor(images=[image] if image is not None else None, text=[prompt], return_tensors="pt")
    with torch.no_grad():
        return hf(**enc, output_attentions=True), enc


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
@pytest.mark.parametrize("kind,backbone,kv", FAMILIES, ids=[f"{k}-{b}-kv{v}" for k, b, v in FAMILIES])
def test_logits_and_patterns_match_hugging_face(kind, backbone, kv, processed):
    hf, processor = tiny_pair(kind, backbone, kv)
    model = tiny_lens(kind, backbone, kv, processed)
    images = _images()
    batch = model.prepare(images=images, questions=QUESTIONS)
    lengths = batch.attention_mask.sum(-1).tolist()
    assert len(set(lengths)) == 3, "the three prompts must have different lengths"
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    for i in range(3):
        ref, enc = _hf_single(hf, processor, batch.prompts[i], images[i])
        n = enc.input_ids.shape[1]
        assert torch.equal(batch.input_ids[i, -n:], enc.input_ids[0])
        diff = (logits[i, -n:].log_softmax(-1) - ref.logits[0].log_softmax(-1)).abs().max().item()
        assert diff <= 1e-4, f"sample {i}: log-softmax differs by {diff}"
        for layer in range(model.cfg.n_layers):
            mine = cache["pattern", layer][i, :, -n:, -n:]
            theirs = ref.attentions[layer][0]
            assert mine.shape == theirs.shape
            pdiff = (mine - theirs).abs().max().item()
            assert pdiff <= 1e-5, f"sample {i} layer {layer}: pattern differs by {pdiff}"
            # no attention leaks onto padding
            assert (
                cache["pattern", layer][i, :, -n:, :-n].abs().max().item() == 0
                if n < batch.input_ids.shape[1]
                else True
            )


def test_text_only_sample_in_a_batch_matches_hugging_face():
    hf, processor = tiny_pair("llava", "llama")
    model = tiny_lens("llava", "llama")
    images = [striped_image(), None]
    batch = model.prepare(images=images, questions=["how many dogs?", "is there a cat"])
    assert not batch.layout[1].has_image and batch.layout[1].n_image_tokens == 0
    with torch.no_grad():
        logits = model(batch)
    ref, enc = _hf_single(hf, processor, batch.prompts[1], None)
    n = enc.input_ids.shape[1]
    assert (logits[1, -n:].log_softmax(-1) - ref.logits[0].log_softmax(-1)).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_padded_batch_equals_each_sample_alone(kind):
    model = tiny_lens(kind, "llama")
    images = _images()
    batch = model.prepare(images=images, questions=QUESTIONS)
    with torch.no_grad():
        logits = model(batch)
        for i in range(3):
            alone = model.prepare(images=[images[i]], questions=[QUESTIONS[i]])
            single = model(alone)[0]
            n = single.shape[0]
            assert (logits[i, -n:] - single).abs().max() <= 1e-4


def test_generate_is_greedy_and_matches_hugging_face():
    hf, processor = tiny_pair("llava", "llama")
    model = tiny_lens("llava", "llama", processed=False)
    images = _images()[:2]
    batch = model.prepare(images=images, questions=QUESTIONS[:2])
    tokens = model.generate_tokens(batch, max_new_tokens=6, stop_at_eos=False)
    for i in range(2):
        enc = processor(images=[images[i]], text=[batch.prompts[i]], return_tensors="pt")
        ref = hf.generate(**enc, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert tokens[i].tolist() == ref[0, enc.input_ids.shape[1] :].tolist()
    # and without a key-value cache: append the tokens and run again
    longer = model.append_tokens(batch, tokens[:, :-1])
    with torch.no_grad():
        logits = model(longer)
    pos = longer.layout[0].answer_positions
    assert torch.equal(logits[0, torch.cat([pos.new_tensor([pos[0] - 1]), pos])].argmax(-1), tokens[0])
    texts = model.generate(batch, max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_run_with_hooks_cache_and_hooks_context():
    model = tiny_lens("llava", "llama")
    batch = model.prepare(images=_images()[:2], questions=QUESTIONS[:2])
    seen = {}

    def grab(pattern, hook):
        seen[hook.name] = pattern.shape

    with torch.no_grad():
        plain = model(batch)
        hooked = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", grab)])
        # the hooked layer runs TransformerLens' attention, the plain run the fused one: float rounding apart
        assert torch.allclose(plain, hooked, rtol=0, atol=1e-5)
        model.fast_attention = False
        assert torch.equal(model(batch), model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", grab)]))
        model.fast_attention = True
        assert seen["blocks.1.attn.hook_pattern"] == (
            2,
            model.cfg.n_heads,
            batch.input_ids.shape[1],
            batch.input_ids.shape[1],
        )
        _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_z"))
        assert set(cache.keys()) == {f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)}

        def zero_resid(resid, hook):
            return torch.zeros_like(resid)

        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", zero_resid)]):
            inside = model(batch)
        after = model(batch)
    assert not torch.allclose(inside, plain)
    assert torch.allclose(after, plain)


def test_hooks_are_removed_when_a_run_raises():
    model = tiny_lens("llava", "llama")
    batch = model.prepare(images=[striped_image()], questions=["how many dogs?"])

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_z", boom)])
    assert all(not hp._forward_hooks for hp in model.lm.hook_dict.values())


def test_llama3_rope_scaling_matches_hugging_face():
    """Llama-3 backbones (grouped-query, "llama3" rope scaling) as in llava-llama-3-8b."""
    import vh_lens

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    from vh_lens.testing import tiny_llava

    hf, processor = tiny_llava("llava", "llama", n_kv_heads=2, rope_parameters=rope)
    model = vh_lens.load_llava(hf, processor=processor)
    assert model.cfg.use_NTK_by_parts_rope and model.cfg.rotary_base == 500000.0
    images = _images()
    batch = model.prepare(images=images, questions=QUESTIONS)
    with torch.no_grad():
        logits = model(batch)
    for i in range(3):
        ref, enc = _hf_single(hf, processor, batch.prompts[i], images[i])
        n = enc.input_ids.shape[1]
        assert (logits[i, -n:].log_softmax(-1) - ref.logits[0].log_softmax(-1)).abs().max() <= 1e-4
