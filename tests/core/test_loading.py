"""Loading from folders and in-memory models, configs of the real checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import striped_image, tiny_pair
from transformer_lens import HookedTransformer
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)

import vh_lens
from vh_lens.core.loading import hooked_config


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    hf, processor = tiny_pair("llava", "llama", 2)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llava-llama"  # a name holding "llama" must not mislead
    hf.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_load_saved_checkpoint_by_path_matches_in_memory(saved_checkpoint):
    hf, processor = tiny_pair("llava", "llama", 2)
    from_disk = vh_lens.load_llava(str(saved_checkpoint))
    in_memory = vh_lens.load_llava(hf, processor=processor)
    assert from_disk.cfg.n_key_value_heads == 2
    assert from_disk.tokenizer.padding_side == "left"
    img = striped_image()
    a = from_disk.prepare(images=[img], questions=["how many dogs?"])
    b = in_memory.prepare(images=[img], questions=["how many dogs?"])
    assert torch.equal(a.input_ids, b.input_ids)
    with torch.no_grad():
        assert (from_disk(a).log_softmax(-1) - in_memory(b).log_softmax(-1)).abs().max() <= 1e-4
    # the Hugging Face language model is not kept
    assert not hasattr(from_disk.vision, "language_model")
    assert not any(p.device.type == "meta" for p in from_disk.parameters())


def test_weight_processing_matches_transformer_lens_own(saved_checkpoint):
    """Layer-by-layer processing gives the weights of TransformerLens' whole-state-dict processing."""
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf, processor = tiny_pair("llava", "llama", 2)
    mine = vh_lens.load_llava(hf, processor=processor).lm
    cfg = hooked_config(hf.config, fold_ln=False)
    cfg.init_weights = True
    ref = HookedTransformer(cfg)

    class _Shim:  # convert_llama_weights wants .model and .lm_head
        model = hf.model.language_model
        lm_head = hf.lm_head

    ref.load_and_process_state_dict(convert_llama_weights(_Shim, cfg))
    assert ref.cfg.normalization_type == "RMSPre"
    for name, value in ref.state_dict().items():
        if name.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos")):
            continue
        assert torch.allclose(mine.state_dict()[name], value, atol=1e-6), name


def _real_configs():
    clip336 = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    llama7 = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    llama13 = LlamaConfig(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    mistral7 = MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32064,
        max_position_embeddings=32768,
        rope_theta=1e6,
        sliding_window=None,
        rms_norm_eps=1e-5,
    )
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    return {
        "llava-1.5-7b": (
            LlavaForConditionalGeneration,
            LlavaConfig(vision_config=clip336, text_config=llama7, image_token_index=32000),
            (32, 32, 128, None),
        ),
        "llava-1.5-13b": (
            LlavaForConditionalGeneration,
            LlavaConfig(vision_config=clip336, text_config=llama13, image_token_index=32000),
            (40, 40, 128, None),
        ),
        "llava-v1.6-mistral-7b": (
            LlavaNextForConditionalGeneration,
            LlavaNextConfig(
                vision_config=clip336, text_config=mistral7, image_token_index=32000, image_grid_pinpoints=pinpoints
            ),
            (32, 32, 128, 8),
        ),
        "vip-llava-7b": (
            VipLlavaForConditionalGeneration,
            VipLlavaConfig(vision_config=clip336, text_config=llama7, image_token_index=32000),
            (32, 32, 128, None),
        ),
    }


@pytest.mark.parametrize("name", list(_real_configs()))
def test_real_configs_on_meta_device(name):
    model_cls, config, (n_layers, n_heads, d_head, n_kv) = _real_configs()[name]
    cfg = hooked_config(config, fold_ln=False)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads, cfg.d_vocab) == (
        n_layers,
        n_heads,
        d_head,
        n_kv,
        32064,
    )
    if name == "llava-v1.6-mistral-7b":
        assert cfg.rotary_base == 1e6 and cfg.d_mlp == 14336
    with torch.device("meta"):
        hf = model_cls(config)
        cfg.device = "meta"
        tl = HookedTransformer(cfg, move_to_device=False)
    lm_params = sum(p.numel() for p in hf.model.language_model.parameters()) + hf.lm_head.weight.numel()
    # TransformerLens adds zero biases that the backbone does not have; count the weights
    tl_params = sum(p.numel() for n, p in tl.named_parameters() if not n.split(".")[-1].lstrip("_").startswith("b_"))
    assert tl_params == lm_params


# ------------------------------------------------------------------ errors


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        vh_lens.load_llava(tmp_path / "nope")


def test_unsupported_checkpoint_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(
        vh_lens.UnsupportedModelError,
        match="LlavaForConditionalGeneration.*LlavaNextForConditionalGeneration.*VipLlavaForConditionalGeneration",
    ):
        vh_lens.load_llava(tmp_path)


def test_unsupported_backbone(tmp_path):
    hf, _ = tiny_pair("llava", "llama")
    config = hf.config.to_dict()
    config["text_config"]["model_type"] = "gemma"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(vh_lens.UnsupportedModelError, match="backbone 'gemma'"):
        vh_lens.load_llava(tmp_path)


def test_missing_weights(tmp_path):
    hf, processor = tiny_pair("llava", "llama")
    hf.config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        vh_lens.load_llava(tmp_path)


def test_in_memory_model_needs_processor():
    hf, _ = tiny_pair("llava", "llama")
    with pytest.raises(ValueError, match="processor"):
        vh_lens.load_llava(hf)


@pytest.fixture(scope="module")
def lens():
    hf, processor = tiny_pair("llava", "llama")
    return vh_lens.load_llava(hf, processor=processor)


def test_error_images_do_not_match_prompts(lens):
    with pytest.raises(ValueError, match="got 1 images for 2 prompts"):
        lens.prepare(images=[striped_image()], questions=["a", "b"])


def test_error_prompt_without_placeholder(lens):
    with pytest.raises(ValueError, match="no image placeholder"):
        lens.prepare(images=[striped_image()], prompts=["USER: how many dogs? ASSISTANT:"])


def test_error_placeholder_without_image(lens):
    with pytest.raises(ValueError, match="but no image was given"):
        lens.prepare(images=[None], prompts=["USER: <image>\nhow many? ASSISTANT:"])


def test_error_empty_batch(lens):
    with pytest.raises(ValueError, match="empty batch"):
        lens.prepare(images=[], questions=[])


def test_error_missing_image_file(lens, tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        lens.prepare(images=[tmp_path / "missing.png"], questions=["how many?"])


def test_rgba_and_grayscale_images_are_converted(lens):
    rgb = striped_image((60, 60))
    rgba, gray = rgb.convert("RGBA"), rgb.convert("L")
    batch = lens.prepare(images=[rgb, rgba, gray], questions=["how many?"] * 3)
    with torch.no_grad():
        logits = lens(batch)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)  # RGBA of an opaque RGB image is the same image
    assert torch.isfinite(logits[2]).all()


def test_prompts_keep_raw_text(lens):
    prompt = "USER: <image>\nhow many dogs? ASSISTANT:"
    batch = lens.prepare(images=[striped_image()], prompts=[prompt])
    assert batch.prompts == [prompt]


@pytest.mark.parametrize("family", [("llava", "llama", 2), ("llava", "qwen2", None), ("llava", "phi3", None)])
@pytest.mark.parametrize(
    "flags",
    [
        dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
        dict(fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=True),
        dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    ],
    ids=["all", "no_fold_ln", "fold_ln_only"],
)
def test_block_processing_matches_process_weights_on_whole_state_dict(family, flags):
    """vh_lens.core.processing (group by group, block by block, written into the model) gives the
    weights of TransformerLens' ProcessWeights.process_weights on the whole converted state dict."""
    from transformer_lens.weight_processing import ProcessWeights

    from vh_lens.core.backbone import _outer_groups, convert_layer
    from vh_lens.core.tensor_source import TensorSource

    hf, processor = tiny_pair(*family)
    mine = vh_lens.load_llava(hf, processor=processor, **flags).lm.state_dict()
    cfg = hooked_config(hf.config, fold_ln=False)  # the weights still carry their norms
    src = TensorSource.from_module(hf)
    whole = {"embed.W_E": src.get("lm.embed_tokens.weight").clone()}
    for layer in range(cfg.n_layers):
        for part in ("attn", "mlp"):
            group = convert_layer(src, layer, cfg, hf.config.text_config, part)
            whole.update({k.replace("blocks.0.", f"blocks.{layer}.", 1): v.float().clone() for k, v in group.items()})
    for group, _ in _outer_groups(src, cfg):
        whole.update({k: v.float().clone() for k, v in group.items()})
    if family[1] == "qwen2":
        assert whole["blocks.0.attn.b_V"].abs().max() > 0  # a value bias to fold
    ref = ProcessWeights.process_weights(whole, cfg, **flags)
    assert set(mine) <= set(ref) | {n for n in mine if n.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos"))}
    for name, value in mine.items():
        if name.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos")):
            continue
        assert value.shape == ref[name].shape, name
        assert torch.allclose(value, ref[name], atol=1e-6, rtol=0), name
    if flags["fold_ln"]:  # folded norms are gone from the model (RMSPre) and identity in the reference
        assert not any(".ln" in n and n.endswith(".w") for n in mine)
        assert torch.equal(ref["blocks.0.ln1.w"], torch.ones_like(ref["blocks.0.ln1.w"]))


def test_float64_model_is_processed_in_float64():
    """A float64 model's folded weights are float64 products (working dtype), not float32 ones."""
    import copy

    import einops

    hf, processor = tiny_pair("llava", "llama")
    hf64 = copy.deepcopy(hf).to(torch.float64)
    lens = vh_lens.load_llava(hf64, processor=processor)
    attn = hf64.model.language_model.layers[0]
    w_q = einops.rearrange(attn.self_attn.q_proj.weight.detach(), "(n h) m -> n m h", n=lens.cfg.n_heads)
    ln = attn.input_layernorm.weight.detach()
    got = lens.lm.blocks[0].attn.W_Q
    assert got.dtype == torch.float64
    assert torch.equal(got, w_q * ln[None, :, None])
    assert not torch.equal(got, (w_q.float() * ln.float()[None, :, None]).double())


def test_float32_weights_loaded_as_float16_are_rounded_once():
    """Folding into a narrower dtype multiplies in float32 and rounds once, as TransformerLens does."""
    import einops

    hf, processor = tiny_pair("llava", "llama")
    lens = vh_lens.load_llava(hf, processor=processor, dtype=torch.float16, center_unembed=False)
    layer = hf.model.language_model.layers[1]
    w_up = layer.mlp.up_proj.weight.detach()
    ln = layer.post_attention_layernorm.weight.detach()
    assert torch.equal(lens.lm.blocks[1].mlp.W_in, (w_up.T * ln[:, None]).half())
    w_q = einops.rearrange(layer.self_attn.q_proj.weight.detach(), "(n h) m -> n m h", n=lens.cfg.n_heads)
    ln1 = layer.input_layernorm.weight.detach()
    assert torch.equal(lens.lm.blocks[1].attn.W_Q, (w_q * ln1[None, :, None]).half())
    assert not torch.equal(lens.lm.blocks[1].attn.W_Q, w_q.half() * ln1.half()[None, :, None])
