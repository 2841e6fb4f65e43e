"""LLaVA-OneVision and SigLIP LLaVA (llava-interleave): loading, layout, equivalence with Hugging Face."""

from __future__ import annotations

import pytest
import torch
from conftest import striped_image, tiny_lens, tiny_pair
from transformer_lens import HookedTransformer
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

import vh_lens
from vh_lens.core.loading import hooked_config
from vh_lens.core.onevision import LlavaOnevisionImageOnlyProcessor

# 150x160 -> 3x3 tiles, 12x12 unpadded cells, ratio 1.5 > 1.1: bilinear downsampling to 8x8
DOWNSAMPLED = (150, 160)
SIZES = [(70, 40), DOWNSAMPLED, (50, 90), (64, 64), (168, 160), (160, 110)]


def _hf_run(hf, processor, prompt, images, onevision):
    arg = [images] if onevision else images
    enc = processor(images=arg if images else None, text=[prompt], return_tensors="pt")
    with torch.no_grad():
        return hf(**enc, output_attentions=True), enc


def _check_against_hf(model, hf, processor, batch, images_per_sample, onevision):
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    worst_logit = worst_pattern = 0.0
    for i, imgs in enumerate(images_per_sample):
        ref, enc = _hf_run(hf, processor, batch.prompts[i], imgs, onevision)
        n = enc.input_ids.shape[1]
        assert torch.equal(batch.input_ids[i, -n:], enc.input_ids[0])
        # layout positions are where the HF processor expanded the placeholders
        hf_image = (enc.input_ids[0] == model.image_token_id).nonzero().flatten() + (batch.input_ids.shape[1] - n)
        assert torch.equal(batch.layout[i].image_positions, hf_image)
        diff = (logits[i, -n:].log_softmax(-1) - ref.logits[0].log_softmax(-1)).abs().max().item()
        assert diff <= 1e-4, f"sample {i}: log-softmax differs by {diff}"
        worst_logit = max(worst_logit, diff)
        for layer in range(model.cfg.n_layers):
            pdiff = (cache["pattern", layer][i, :, -n:, -n:] - ref.attentions[layer][0]).abs().max().item()
            assert pdiff <= 1e-5, f"sample {i} layer {layer}: pattern differs by {pdiff}"
            worst_pattern = max(worst_pattern, pdiff)
    return worst_logit, worst_pattern


# ------------------------------------------------------------------ processor without videos


def test_images_only_processor_has_no_video_part():
    _, processor = tiny_pair("llava_onevision", "qwen2", 2)
    assert isinstance(processor, LlavaOnevisionImageOnlyProcessor)
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    assert not hasattr(processor, "video_processor")
    with pytest.raises(ValueError, match="images and text only"):
        processor(text=["<video> hi"], videos=[[striped_image()]])


# ------------------------------------------------------------------ equivalence with HF


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
def test_onevision_downsampled_tiles_match_hugging_face(processed):
    hf, processor = tiny_pair("llava_onevision", "qwen2", 2)
    model = tiny_lens("llava_onevision", "qwen2", 2, processed)
    images = [striped_image(s, k) for k, s in enumerate(SIZES[:4])]
    questions = ["how many dogs?", "what color is the cat in this picture ?", "is there a red circle", "how many"]
    batch = model.prepare(images=images, questions=questions)
    assert len(set(batch.attention_mask.sum(-1).tolist())) > 1, "the batch must be padded"
    tiles = batch.layout[1].grid("tiles")
    assert tiles.shape == (8, 8), "the 150x160 image must be downsampled from 12x12"
    # the spliced features at our newline positions are the model's image_newline vector, and
    # only there: one per tile row, right after it
    newline = hf.model.image_newline.detach()
    for i, lay in enumerate(batch.layout):
        is_newline = (batch.embeds[i] - newline).abs().amax(-1) == 0
        assert torch.equal(is_newline.nonzero().flatten(), lay.newline_positions)
        assert torch.equal(lay.newline_positions, lay.grid("tiles").positions[:, -1] + 1)
    _check_against_hf(model, hf, processor, batch, [[im] for im in images], onevision=True)


@pytest.mark.parametrize(
    "kind,backbone,kv",
    [
        ("llava", "llama", None),
        ("llava_next", "llama", None),
        ("llava_interleave", "qwen2", None),
        ("vip_llava", "llama", None),
        ("llava_onevision", "qwen2", 2),
    ],
)
def test_several_images_per_prompt_match_hugging_face(kind, backbone, kv):
    hf, processor = tiny_pair(kind, backbone, kv)
    model = tiny_lens(kind, backbone, kv)
    per_sample = [
        [striped_image((70, 40), 0), striped_image((50, 90), 1)],
        [striped_image(DOWNSAMPLED, 2)],
        [striped_image((64, 64), 3), striped_image((40, 100), 4), striped_image((90, 60), 5)],
        [],
    ]
    prompts = [
        "USER: <image> and <image> how many dogs ? ASSISTANT:",
        "USER: <image> what color is the cat ? ASSISTANT:",
        "USER: <image> <image> is there <image> a red circle ASSISTANT:",
        "USER: how many ? ASSISTANT:",
    ]
    batch = model.prepare(images=per_sample, prompts=prompts)
    _check_against_hf(model, hf, processor, batch, per_sample, onevision=kind == "llava_onevision")
    for lay, imgs in zip(batch.layout, per_sample):
        assert lay.n_images == len(imgs)
        assert [im.image_size for im in lay.images] == [im.size for im in imgs]
        if imgs:  # every image token belongs to exactly one image, in order
            assert torch.equal(torch.cat([im.positions for im in lay.images]), lay.image_positions)
            firsts = [int(im.positions[0]) for im in lay.images]
            assert firsts == sorted(firsts)
    one = batch.layout[1]
    assert one.image_size == per_sample[1][0].size and one.grid("base") is one.images[0].grid("base")
    several = batch.layout[0]
    assert several.image_size is None
    with pytest.raises(ValueError, match="holds 2 images: pass image="):
        several.region_mask((0, 0, 10, 10))
    with pytest.raises(ValueError, match="holds 2 images"):
        several.grid("base")
    left = several.region_mask((0, 0, 35, 40), image=0)
    assert left.any() and torch.isin(left.nonzero().flatten(), several.images[0].positions).all()
    assert not torch.isin(left.nonzero().flatten(), several.images[1].positions).any()
    with pytest.raises(ValueError, match="outside the image"):
        several.region_mask((0, 0, 60, 40), image=1)  # image 1 is 50 wide
    if kind == "llava_onevision":  # several images: no tiles, one grid and one newline token each
        g = model.config.vision_config.image_size // model.config.vision_config.patch_size
        for im in several.images:
            assert [x.name for x in im.grids] == ["base"] and im.grids[0].shape == (g, g)
            assert im.newline_positions.numel() == 1 and int(im.newline_positions[0]) == int(im.positions[-1])


def test_image_count_errors_name_the_prompt():
    model = tiny_lens("llava", "llama")
    a, b = striped_image((70, 40), 0), striped_image((50, 90), 1)
    with pytest.raises(ValueError, match="prompt 1 holds 2 image placeholders '<image>' but 3 images were given"):
        model.prepare(images=[[a], [a, b, a]], prompts=["USER: <image> hi", "USER: <image> <image> hi"])
    with pytest.raises(ValueError, match="prompt 0 holds 2 image placeholders '<image>' but 1 image was given"):
        model.prepare(images=[a], prompts=["USER: <image> <image> hi"])
    with pytest.raises(ValueError, match="questions must be a list of strings"):
        model.prepare(images=[a], questions="how many dogs?")
    with pytest.raises(ValueError, match="prompts must be a list of strings"):
        model.prepare(images=[a], prompts="USER: <image> hi")
    # questions with several images: one placeholder per image before the question
    batch = model.prepare(images=[[a, b]], questions=["how many dogs?"])
    assert batch.prompts[0].count("<image>") == 2 and batch.layout[0].n_images == 2


def test_generate_past_the_context_is_refused_before_running():
    hf, processor = tiny_pair("llava", "llama")
    model = vh_lens.load_llava(hf, processor=processor, n_ctx=40)
    batch = model.prepare(images=[striped_image((56, 56))], questions=["how many dogs?"])
    length = batch.input_ids.shape[1]
    assert length < 40
    with pytest.raises(ValueError, match=f"at most {40 - length + 1} new tokens"):
        model.generate_tokens(batch, max_new_tokens=40 - length + 2)
    assert model.generate_tokens(batch, max_new_tokens=40 - length + 1, stop_at_eos=False).shape == (1, 40 - length + 1)


# ------------------------------------------------------------------ loading from a folder


@pytest.mark.parametrize("kind,kv", [("llava_onevision", 2), ("llava_interleave", None)])
def test_loads_from_a_folder_like_in_memory(tmp_path, kind, kv):
    hf, processor = tiny_pair(kind, "qwen2", kv)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    if kind == "llava_onevision":  # a published folder also holds a video processor config: ignored
        (tmp_path / "video_preprocessor_config.json").write_text(
            '{"video_processor_type": "LlavaOnevisionVideoProcessor"}'
        )
    model = vh_lens.load_llava(tmp_path)
    assert type(model.processor).__name__ == type(processor).__name__
    ref = tiny_lens(kind, "qwen2", kv)
    images = [striped_image(DOWNSAMPLED, 0), striped_image((70, 40), 1)]
    with torch.no_grad():
        a = model(model.prepare(images=images, questions=["how many dogs?", "what color ?"]))
        b = ref(ref.prepare(images=images, questions=["how many dogs?", "what color ?"]))
    assert (a - b).abs().max() <= 1e-4


# ------------------------------------------------------------------ analyses on OneVision


def test_visual_head_scan_and_logit_lens_on_onevision():
    from vh_lens.data.sample import Sample

    model = tiny_lens("llava_onevision", "qwen2", 2)
    images = [striped_image(DOWNSAMPLED, 0), striped_image((70, 40), 1)]
    samples = [Sample(image=im, question="how many dogs?", answer="two", box=(0, 0, 40, 30)) for im in images]
    scores = vh_lens.scan_visual_heads(
        model, samples, batch_size=2, progress=False, attention="pattern", keep_per_sample=True
    )
    qk = vh_lens.scan_visual_heads(model, samples, batch_size=2, progress=False, attention="qk")
    torch.testing.assert_close(scores.mean["image_weight"], qk.mean["image_weight"], atol=1e-5, rtol=0)
    # reference: the image weight by hand from the cached pattern
    batch = model.prepare_samples(samples)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    for i, lay in enumerate(batch.layout):
        row = cache["pattern", 1][i, :, lay.query_position]
        expected = row[:, lay.image_positions].sum(-1).double()
        torch.testing.assert_close(scores.per_sample["image_weight"][i, 1], expected, atol=1e-5, rtol=0)
    # logit lens: the last layer's lens is the model's own prediction (HF-checked above)
    lens = vh_lens.logit_lens(model, batch)
    with torch.no_grad():
        logits = model(batch)
    query = batch.query_positions
    probs = logits[torch.arange(len(batch)), query].float().softmax(-1)
    assert torch.equal(lens.final_ids, probs.argmax(-1))
    assert (lens.final_rank[-1] == 1).all()
    torch.testing.assert_close(lens.final_prob[-1], probs.max(-1).values, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ real configs


def _siglip_so400m() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )


def _qwen2(size: str) -> Qwen2Config:
    if size == "0.5b":
        return Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=152000,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            max_window_layers=24,
        )
    return Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152128,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        max_window_layers=28,
    )


def _real_configs():
    ov = dict(
        image_token_index=151646,
        video_token_index=151647,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    return {
        "llava-onevision-qwen2-0.5b-ov": (
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionConfig(
                vision_config=_siglip_so400m(), text_config=_qwen2("0.5b"), tie_word_embeddings=True, **ov
            ),
            (24, 14, 64, 2, 896, 4864, 152000),
        ),
        "llava-onevision-qwen2-7b-ov": (
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionConfig(vision_config=_siglip_so400m(), text_config=_qwen2("7b"), **ov),
            (28, 28, 128, 4, 3584, 18944, 152128),
        ),
        "llava-interleave-qwen-0.5b": (
            LlavaForConditionalGeneration,
            LlavaConfig(
                vision_config=_siglip_so400m(),
                text_config=_qwen2("0.5b"),
                image_token_index=151646,
                vision_feature_select_strategy="full",
                vision_feature_layer=-1,
                tie_word_embeddings=True,
            ),
            (24, 14, 64, 2, 896, 4864, 152000),
        ),
    }


@pytest.mark.parametrize("name", list(_real_configs()))
def test_real_siglip_configs_on_meta_device(name):
    model_cls, config, (n_layers, n_heads, d_head, n_kv, d_model, d_mlp, vocab) = _real_configs()[name]
    cfg = hooked_config(config, fold_ln=False)
    got = (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads, cfg.d_model, cfg.d_mlp, cfg.d_vocab)
    assert got == (n_layers, n_heads, d_head, n_kv, d_model, d_mlp, vocab)
    assert cfg.rotary_base == 1e6 and cfg.original_architecture == "Qwen2ForCausalLM"
    with torch.device("meta"):
        hf = model_cls(config)
        cfg.device = "meta"
        tl = HookedTransformer(cfg, move_to_device=False)
    lm = hf.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters()) + hf.lm_head.weight.numel()
    bias_params = sum(p.numel() for n, p in lm.named_parameters() if n.endswith("bias"))  # Qwen2's q, k, v biases
    tl_weights = sum(p.numel() for n, p in tl.named_parameters() if not n.split(".")[-1].lstrip("_").startswith("b_"))
    tl_qkv_biases = sum(
        p.numel() for n, p in tl.named_parameters() if n.split(".")[-1].lstrip("_") in ("b_Q", "b_K", "b_V")
    )
    assert tl_weights == lm_params - bias_params and tl_qkv_biases == bias_params
    # the vision side: 26 SigLIP layers and a 27 x 27 grid of 729 tokens per base view
    vc = config.vision_config
    assert (vc.image_size // vc.patch_size) ** 2 == 729 and sum(
        type(m).__name__ == "SiglipEncoderLayer" for m in hf.model.vision_tower.modules()
    ) == 26


def test_visual_head_metrics_over_one_image_or_all():
    from vh_lens.visual_heads.scan import visual_head_hooks

    model = tiny_lens("llava_interleave", "qwen2")
    per_sample = [[striped_image((70, 40), 0), striped_image((50, 90), 1)], [striped_image((64, 64), 2)], []]
    prompts = [
        "USER: <image> and <image> how many dogs ? ASSISTANT:",
        "USER: <image> what color ? ASSISTANT:",
        "USER: how many ? ASSISTANT:",
    ]
    batch = model.prepare(images=per_sample, prompts=prompts)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    q = batch.query_positions
    rows = {layer: cache["pattern", layer][torch.arange(3), :, q].double() for layer in range(model.cfg.n_layers)}
    for image in (None, 0):
        got = {}
        hooks = visual_head_hooks(
            batch.layout, lambda layer, m: got.__setitem__(layer, m), n_layers=model.cfg.n_layers, image=image
        )
        model.run_with_hooks(batch, fwd_hooks=hooks)
        for layer, r in rows.items():
            for i, lay in enumerate(batch.layout):
                pos = lay.image_positions if image is None or not lay.has_image else lay.images[image].positions
                w = r[i][:, pos].sum(-1)
                torch.testing.assert_close(got[layer]["image_weight"][i], w, atol=1e-6, rtol=0)
                p = r[i][:, pos] / w[:, None].clamp(min=1e-30)
                conc = 1 + (p * torch.log(p + 1e-12)).sum(-1) / torch.log(torch.tensor(float(max(pos.numel(), 2))))
                expected = torch.where((w > 0) & (pos.numel() > 1), conc, torch.zeros_like(conc))
                torch.testing.assert_close(got[layer]["concentration"][i], expected, atol=1e-5, rtol=0)
                text = r[i][:, lay.text_positions].sum(-1)  # other images' tokens are never text
                torch.testing.assert_close(got[layer]["text_weight"][i], text, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sample 1 holds 1 image"):
        visual_head_hooks(batch.layout, lambda *a: None, n_layers=2, image=1)
    with pytest.raises(ValueError, match="pass image="):
        visual_head_hooks(batch.layout, lambda *a: None, n_layers=2, boxes=[(0, 0, 5, 5), None, None])


@pytest.mark.parametrize("kind,backbone,kv", [("llava_next", "llama", None), ("llava_onevision", "qwen2", 2)])
def test_extreme_aspect_ratios_match_hugging_face(kind, backbone, kv):
    """Up to 50:1: unpadding can keep no tile row (or column) at all; HF handles it, so do we."""
    hf, processor = tiny_pair(kind, backbone, kv)
    model = tiny_lens(kind, backbone, kv)
    sizes = [(560, 56), (1000, 20), (20, 1000), (50, 2500)]
    images = [striped_image(s, k) for k, s in enumerate(sizes)]
    batch = model.prepare(images=images, questions=["how many dogs?"] * len(images))
    _check_against_hf(model, hf, processor, batch, [[im] for im in images], onevision=kind == "llava_onevision")
    wide = batch.layout[1].grid("tiles")
    assert 0 in wide.shape or wide.shape[0] <= 1, "a 50:1 image keeps (almost) no tile rows"
    for lay, size in zip(batch.layout, sizes):
        assert lay.region_positions((0, 0, *size)).numel() > 0


def test_bilinear_sources_hand_computed():
    from vh_lens.core.geometry import _bilinear_sources

    # align_corners=False: output i samples input 1.5 i + 0.25 (12 -> 8), mixing floor and floor + 1
    assert _bilinear_sources(12, 8) == [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11)]
    # 9 -> 3: output i lands exactly on input 3 i + 1: one source each
    assert _bilinear_sources(9, 3) == [(1, 1), (4, 4), (7, 7)]
    # 4 -> 3: input 4/3 (i + 0.5) - 0.5
    assert _bilinear_sources(4, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="no cells"):
        _bilinear_sources(5, 0)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_downsampled_cell_box_is_the_union_of_its_sources():
    from vh_lens.core.geometry import cell_boxes_llava_next, cell_boxes_onevision, onevision_max_patches

    hf, processor = tiny_pair("llava_onevision", "qwen2", 2)
    c, vc = hf.config, hf.config.vision_config
    ip = processor.image_processor
    base, tiles = cell_boxes_onevision(
        DOWNSAMPLED, ip, c.image_grid_pinpoints, vc.image_size, vc.patch_size, c.vision_aspect_ratio
    )
    base_next, src = cell_boxes_llava_next(DOWNSAMPLED, ip, c.image_grid_pinpoints, vc.image_size, vc.patch_size)
    assert torch.equal(base, base_next) and src.shape[:2] == (12, 12) and tiles.shape[:2] == (8, 8)
    rows = [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11)]  # 12 -> 8, by hand above
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(rows):
            block = src[r0 : r1 + 1, c0 : c1 + 1].reshape(-1, 4)
            union = torch.stack([block[:, 0].min(), block[:, 1].min(), block[:, 2].max(), block[:, 3].max()])
            torch.testing.assert_close(tiles[i, j], union)
    assert onevision_max_patches("anyres_max_9") == 9
    for bad in ("anyres", "anyres_max_0", "max_9", 9):
        with pytest.raises(ValueError, match="anyres_max_N"):
            onevision_max_patches(bad)


def test_vision_towers_the_layout_cannot_follow_are_refused(tmp_path):
    from vh_lens.core.image_tokens import leading_image_tokens

    hf, processor = tiny_pair("llava_interleave", "qwen2")
    assert leading_image_tokens(hf.config) == 0
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    config.vision_feature_select_strategy = "default"  # would drop a real SigLIP patch
    with pytest.raises(ValueError, match="no CLS token: it would drop a real patch"):
        leading_image_tokens(config)
    hf.save_pretrained(tmp_path)  # a folder is refused before the vision and language weights are read
    processor.save_pretrained(tmp_path)
    raw = (
        (tmp_path / "config.json")
        .read_text()
        .replace('"vision_feature_select_strategy": "full"', '"vision_feature_select_strategy": "default"')
    )
    (tmp_path / "config.json").write_text(raw)
    with pytest.raises(ValueError, match="would drop a real patch"):
        vh_lens.load_llava(tmp_path)
    clip, _ = tiny_pair("llava", "llama")
    full = clip.config.__class__.from_dict(clip.config.to_dict())
    full.vision_feature_select_strategy = "full"
    assert leading_image_tokens(full) == 1  # LLaVA keeps the CLS token before the grid
    nxt, _ = tiny_pair("llava_next", "llama")
    full_next = nxt.config.__class__.from_dict(nxt.config.to_dict())
    full_next.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="cannot keep the CLS token"):
        leading_image_tokens(full_next)
