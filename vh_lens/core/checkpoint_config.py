"""A checkpoint's config: which LLaVA families and language backbones vh_lens loads, reading and checking
``config.json`` (refusing a checkpoint that asks for its own code), and the HookedTransformer config of the
language backbone built from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformerConfig
from transformers import (
    AutoConfig,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    VipLlavaForConditionalGeneration,
)

from vh_lens.core.conformance import UnsupportedModelError, attention_windows, check_conformance, tl_activation

SUPPORTED_MODELS: dict[str, type[PreTrainedModel]] = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "vipllava": VipLlavaForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
}
"""Hugging Face ``model_type`` -> class of the supported LLaVA families."""

SUPPORTED_BACKBONES = ("llama", "mistral", "qwen2", "phi3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
DEFAULT_MAX_CTX = 4096


def supported_list() -> str:
    names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS.values())
    return f"{names}; language backbones: {', '.join(SUPPORTED_BACKBONES)}"


def check_config(config: PretrainedConfig) -> type[PreTrainedModel]:
    """Return the model class for ``config`` or raise :class:`UnsupportedModelError`.

    Past the family and backbone, every field goes through :func:`vh_lens.core.conformance.check_conformance`:
    a value vh_lens cannot reproduce exactly is refused, naming the config class, field and value.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODELS:
        raise UnsupportedModelError(
            f"unsupported checkpoint: model_type {model_type!r} is not a supported LLaVA. Supported: {supported_list()}"
        )
    text_type = getattr(config.text_config, "model_type", None)
    if text_type not in SUPPORTED_BACKBONES:
        raise UnsupportedModelError(
            f"unsupported language backbone {text_type!r} in a {model_type} checkpoint. Supported: {supported_list()}"
        )
    check_conformance(config)
    return SUPPORTED_MODELS[model_type]


def read_config(folder: Path) -> PretrainedConfig:
    """Read and check the checkpoint's config; clear errors for a missing folder or config."""
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint path is not a folder: {folder}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in checkpoint folder {folder}")
    check_no_remote_code(folder)
    raw = json.loads((folder / "config.json").read_text())
    if not isinstance(raw, dict) or raw.get("model_type") not in SUPPORTED_MODELS:
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        arch = raw.get("architectures") if isinstance(raw, dict) else None
        raise UnsupportedModelError(
            f"unsupported checkpoint {folder}: config.json has model_type {model_type!r}"
            + (f" (architectures {arch})" if arch else "")
            + f", not a supported LLaVA model_type ({', '.join(SUPPORTED_MODELS)}). Supported: {supported_list()}"
        )
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    check_config(config)
    return config


class RemoteCodeError(ValueError):
    """The checkpoint asks for code of its own (an ``auto_map``), which vh_lens never runs."""


_NOT_CONFIGS = ("tokenizer.json", "vocab.json")  # tokenizer data, never read for classes


def _auto_map(value: object, where: str = "") -> tuple[str, object] | None:
    """The first ``auto_map`` entry anywhere in a JSON value: ``(key path, value)``."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "auto_map" and item:
                return path, item
            found = _auto_map(item, path)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _auto_map(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def check_no_remote_code(folder: Path) -> None:
    """Refuse a checkpoint folder whose json files ask for the checkpoint's own code.

    Hugging Face's ``Auto*`` classes load the classes named by an ``auto_map`` (in
    ``config.json``, ``processor_config.json``, ``preprocessor_config.json``,
    ``tokenizer_config.json``, ...) from python files in the checkpoint, after asking on stdin
    whether to run them. vh_lens never runs code from a checkpoint and never prompts: it reads
    every top-level ``*.json`` of the folder first (``tokenizer.json``, ``vocab.json`` and weight
    indexes aside)
    and refuses any ``auto_map``, naming the file and the entry. It is called by
    :func:`read_config`, so :func:`load_llava` checks the folder before any Hugging Face
    loader sees it; the loaders also get ``trust_remote_code=False`` where vh_lens calls them.

    Raises:
        RemoteCodeError: some json file holds an ``auto_map``.
        ValueError: a json file of the folder is not valid JSON (named).
    """
    for path in sorted(Path(folder).glob("*.json")):
        if path.name in _NOT_CONFIGS or path.name.endswith(".safetensors.index.json") or not path.is_file():
            # a weight index names shards, never classes; its own errors are the weight reader's
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        found = _auto_map(value)
        if found is not None:
            key, entry = found
            raise RemoteCodeError(
                f"{path} asks for the checkpoint's own code ({key}: {json.dumps(entry)[:200]}); vh_lens never runs "
                "code from a checkpoint: remove the auto_map to use the standard Hugging Face classes"
            )


# --------------------------------------------------------------------------- config


def _rope(text_config: PretrainedConfig) -> dict:
    """TransformerLens rotary settings of a checked text config (see ``conformance_rules._rope_parameters``)."""
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))
    out: dict = {"rotary_base": float(theta)}
    rope_type = params.get("rope_type", "default")
    if rope_type == "llama3":
        out.update(
            use_NTK_by_parts_rope=True,
            NTK_by_parts_factor=float(params["factor"]),
            NTK_by_parts_low_freq_factor=float(params["low_freq_factor"]),
            NTK_by_parts_high_freq_factor=float(params["high_freq_factor"]),
            NTK_original_ctx_len=int(params["original_max_position_embeddings"]),
        )
    elif rope_type not in ("default", None):
        raise UnsupportedModelError(f"rope scaling {rope_type!r} is not supported (supported: default, llama3)")
    # only Phi-3 rotates part of each head (Llama, Mistral and Qwen2 rotate all of it)
    out["partial_rotary_factor"] = (
        float(params.get("partial_rotary_factor", 1.0)) if text_config.model_type == "phi3" else 1.0
    )
    return out


def hooked_config(
    config: PretrainedConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_ctx: int | None = None,
    fold_ln: bool = True,
) -> HookedTransformerConfig:
    """The HookedTransformer config of a LLaVA checkpoint's language backbone, from its own config.

    Args:
        config: the LLaVA config (its ``text_config`` is used).
        n_ctx: context length; defaults to ``min(max_position_embeddings, 4096)`` (the
            causal mask is ``n_ctx x n_ctx`` per layer); sliding windows become TransformerLens
            local attention on the layers that have one (``conformance.attention_windows``:
            all layers for Mistral and Phi-3, Qwen2's ``layer_types``).
        fold_ln: whether the weights will be folded (``RMSPre`` normalisation instead of ``RMS``).
    """
    check_config(config)
    tc = config.text_config
    d_head = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    n_kv = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    rope = _rope(tc)
    partial = rope.pop("partial_rotary_factor")
    max_pos = int(tc.max_position_embeddings)
    ctx = int(n_ctx) if n_ctx is not None else min(max_pos, DEFAULT_MAX_CTX)
    # a window at least n_ctx long masks nothing: that layer is global
    windows = [w if w is not None and w < ctx else None for w in attention_windows(tc)]
    local = any(w is not None for w in windows)
    window = next((w for w in windows if w is not None), None)
    cfg = HookedTransformerConfig(
        d_model=tc.hidden_size,
        d_head=d_head,
        n_heads=tc.num_attention_heads,
        n_key_value_heads=n_kv if n_kv != tc.num_attention_heads else None,
        d_mlp=tc.intermediate_size,
        n_layers=tc.num_hidden_layers,
        n_ctx=ctx,
        d_vocab=tc.vocab_size,
        eps=tc.rms_norm_eps,
        act_fn=tl_activation(tc.hidden_act),
        normalization_type="RMSPre" if fold_ln else "RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=int(d_head * partial),
        rotary_adjacent_pairs=False,
        use_attn_scale=True,
        original_architecture=_ARCHITECTURES[tc.model_type],
        tokenizer_prepends_bos=True,
        default_prepend_bos=False,
        use_local_attn=local,
        window_size=window,
        attn_types=["local" if w is not None else "global" for w in windows] if local else None,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),  # read by _outer_groups
        init_weights=False,
        dtype=dtype,
        device=str(device),
        model_name=getattr(config, "_name_or_path", "") or "llava",
        **rope,
    )
    return cfg
