"""Tiny random-weight LLaVA models with locally built processors, for tests and demos.

Nothing here is downloaded: configs are written out, the tokenizer is a word-level one built
with the ``tokenizers`` library, and image processors use the PIL backend.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    MistralConfig,
    Phi3Config,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)

from vh_lens.core.onevision import LlavaOnevisionImageOnlyProcessor
from vh_lens.core.prompts import LLAVA_15_CHAT_TEMPLATE
from vh_lens.core.tokenizer import IMAGE_TOKEN, build_word_tokenizer

Kind = Literal["llava", "llava_interleave", "llava_next", "llava_onevision", "vip_llava"]
Vision = Literal["clip", "siglip"]
VIDEO_TOKEN = "<video>"
Backbone = Literal["llama", "mistral", "qwen2", "phi3"]

TINY_WORDS = (
    "USER ASSISTANT INST how many people are there is a an the dog cat what color of this that "
    "in on image picture yes no one two three four five six seven red green blue shapes circle "
    "square these objects answer with option letter from given choices directly describe"
).split()

FAMILIES: tuple[tuple[str, str, int | None], ...] = (
    ("llava", "llama", None),
    ("llava", "llama", 2),  # grouped-query attention
    ("llava", "mistral", None),
    ("llava", "qwen2", None),
    ("llava", "phi3", None),
    ("llava_next", "llama", None),
    ("llava_next", "mistral", None),
    ("vip_llava", "llama", None),
    ("llava_interleave", "qwen2", None),  # LLaVA with a SigLIP tower (no CLS, strategy "full")
    ("llava_onevision", "qwen2", 2),  # SigLIP, anyres_max tiles with bilinear downsampling
)
"""``(kind, backbone, n_kv_heads)`` of the families checked against Hugging Face."""

_TEXT_CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "phi3": Phi3Config}
_MODEL_CLASSES = {
    "llava": (LlavaConfig, LlavaForConditionalGeneration),
    "llava_interleave": (LlavaConfig, LlavaForConditionalGeneration),
    "llava_next": (LlavaNextConfig, LlavaNextForConditionalGeneration),
    "llava_onevision": (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration),
    "vip_llava": (VipLlavaConfig, VipLlavaForConditionalGeneration),
}


def tiny_llava(
    kind: Kind = "llava",
    backbone: Backbone = "llama",
    seed: int = 0,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_mlp: int = 128,
    image_size: int = 56,
    patch_size: int = 14,
    vision_layers: int = 2,
    init_std: float = 0.15,
    rope_parameters: dict | None = None,
    tie_word_embeddings: bool = False,
    image_pad: bool = False,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
    config_overrides: dict | None = None,
    vision: Vision | None = None,
    vision_aspect_ratio: str = "anyres_max_4",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random-weight Hugging Face LLaVA model and its processor, small enough for CPU tests.

    Weights are re-initialised with ``init_std`` (not Hugging Face's 0.02) and norm weights
    around 1 with spread, so attention is far from uniform and position or masking bugs show.
    The model uses eager attention, so ``output_attentions=True`` returns real patterns.
    ``model.save_pretrained(d)`` and ``processor.save_pretrained(d)`` give a folder that
    :func:`vh_lens.load_llava` reads.

    Args:
        kind: ``"llava"`` (LLaVA-1.5), ``"llava_interleave"`` (``LlavaForConditionalGeneration``
            with a SigLIP tower, as llava-interleave checkpoints), ``"llava_next"`` (anyres
            tiles and image-newline tokens), ``"llava_onevision"`` (SigLIP, anyres tiles up to
            ``vision_aspect_ratio``, image-newline tokens; an images-only processor) or
            ``"vip_llava"`` (features from several CLIP layers).
        backbone: the language model: ``"llama"``, ``"mistral"``, ``"qwen2"`` or ``"phi3"``.
        seed: seed of the weights.
        n_kv_heads: key/value heads (grouped-query attention when fewer than ``n_heads``).
            Mistral defaults to ``n_heads // 2``.
        image_size: the vision tower's input size; the image grid is ``image_size // patch_size``.
        rope_parameters: passed to the text config (e.g. Llama-3's ``{"rope_type": "llama3", ...}``).
        image_pad: LLaVA-1.5 only: pad images to a square instead of centre cropping.
        vision: ``"clip"`` (a CLS token, centre crop; strategy ``"default"``) or ``"siglip"``
            (no CLS token, the image resized to a square; strategy ``"full"``). Default: SigLIP
            for ``"llava_interleave"`` and ``"llava_onevision"``, CLIP otherwise. ViP-LLaVA and
            LLaVA-NeXT take CLIP only.
        vision_aspect_ratio: OneVision only: ``"anyres_max_N"``; tile features beyond about
            ``N`` base grids are downsampled (bilinear), as in the real checkpoints' ``anyres_max_9``.
        text_overrides, vision_overrides, config_overrides: extra keyword arguments of the text,
            vision and LLaVA configs (e.g. ``text_overrides={"attention_bias": True}``), applied
            last; the processor follows ``vision_feature_select_strategy``.

    Returns:
        ``(model, processor)``, the model in eval mode on the CPU in float32.

    Example:
        >>> model, processor = tiny_llava("llava_next", "mistral", seed=1)
    """
    if kind not in _MODEL_CLASSES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(_MODEL_CLASSES)}")
    if backbone not in _TEXT_CONFIGS:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(_TEXT_CONFIGS)}")
    if vision is None:
        vision = "siglip" if kind in ("llava_interleave", "llava_onevision") else "clip"
    if vision not in ("clip", "siglip") or (vision == "siglip" and kind in ("llava_next", "vip_llava")):
        raise ValueError(f"vision {vision!r} is not available for kind {kind!r}")
    if kind == "llava_interleave":
        kind = "llava"
    onevision = kind == "llava_onevision"
    tokenizer = build_word_tokenizer(
        TINY_WORDS, extra_special=(IMAGE_TOKEN, VIDEO_TOKEN) if onevision else (IMAGE_TOKEN,)
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if n_kv_heads is None:
        n_kv_heads = n_heads // 2 if backbone == "mistral" else n_heads
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if rope_parameters is not None:
        text_kwargs["rope_parameters"] = rope_parameters
    if backbone == "mistral":
        text_kwargs["sliding_window"] = None
    text_config = _TEXT_CONFIGS[backbone](**{**text_kwargs, **(text_overrides or {})})
    vision_kwargs = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        **(vision_overrides or {}),
    )
    if vision == "siglip":
        vision_config = SiglipVisionConfig(vision_use_head=False, **vision_kwargs)
    else:
        vision_config = CLIPVisionConfig(projection_dim=32, **vision_kwargs)
    config_cls, model_cls = _MODEL_CLASSES[kind]
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    overrides = dict(config_overrides or {})
    common.update({k: overrides.pop(k) for k in list(overrides) if k in common})
    if kind == "vip_llava":
        config = config_cls(**{"vision_feature_layer": [-2, -1, 0], **common, **overrides})
    elif kind == "llava_next":
        pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
        config = config_cls(
            **{
                "vision_feature_layer": -2,
                "vision_feature_select_strategy": "default",
                "image_grid_pinpoints": pinpoints,
                **common,
                **overrides,
            }
        )
    elif onevision:
        config = config_cls(
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_grid_pinpoints=[[a * image_size, b * image_size] for a in (1, 2, 3) for b in (1, 2, 3)],
            vision_aspect_ratio=vision_aspect_ratio,
            video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
            **common,
            **overrides,
        )
    else:
        strategy = "full" if vision == "siglip" else "default"
        config = config_cls(
            **{
                "vision_feature_layer": -1 if vision == "siglip" else -2,
                "vision_feature_select_strategy": strategy,
                **common,
                **overrides,
            }
        )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"

    torch.manual_seed(seed)
    model = model_cls(config)
    _reinit_(model, seed=seed, std=init_std)
    model.eval()

    processor = _tiny_processor(kind, tokenizer, image_size, patch_size, config, image_pad=image_pad, vision=vision)
    return model, processor


def _tiny_processor(kind, tokenizer, image_size, patch_size, config, *, image_pad=False, vision="clip"):
    square = {"height": image_size, "width": image_size}
    if kind == "llava_onevision":
        return LlavaOnevisionImageOnlyProcessor(
            image_processor=LlavaOnevisionImageProcessorPil(
                size=square, image_grid_pinpoints=config.image_grid_pinpoints
            ),
            tokenizer=tokenizer,
            num_image_tokens=(image_size // patch_size) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio=config.vision_aspect_ratio,
            chat_template=LLAVA_15_CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
            video_token=VIDEO_TOKEN,
        )
    if vision == "siglip":  # llava-interleave: SigLIP resizes to a square, no CLS token
        return LlavaProcessor(
            image_processor=SiglipImageProcessorPil(size=square),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
            chat_template=LLAVA_15_CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
        )
    common_ip = dict(size={"shortest_edge": image_size}, crop_size=square)
    if kind == "llava_next":
        image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=config.image_grid_pinpoints, **common_ip)
        processor_cls = LlavaNextProcessor
    else:
        image_processor = (
            LlavaImageProcessorPil(do_pad=True, **common_ip) if image_pad else CLIPImageProcessorPil(**common_ip)
        )
        processor_cls = LlavaProcessor
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=getattr(config, "vision_feature_select_strategy", "default"),
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


@torch.no_grad()
def _reinit_(model: torch.nn.Module, *, seed: int, std: float) -> None:
    """Re-initialise every parameter: weights N(0, std) scaled by fan-in, norms around 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            values = 1.0 + 0.2 * torch.randn(param.shape, generator=gen)
        elif name.endswith("bias") or param.ndim == 1:
            values = 0.1 * torch.randn(param.shape, generator=gen)
        elif "embed" in name and "patch" not in name:
            values = torch.randn(param.shape, generator=gen)
        else:
            fan_in = math.prod(param.shape[1:])
            values = torch.randn(param.shape, generator=gen) * std * math.sqrt(64 / max(fan_in, 1))
        param.copy_(values.to(param.dtype))
