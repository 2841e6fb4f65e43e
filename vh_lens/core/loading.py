"""Loading a LLaVA checkpoint: the language backbone into a HookedTransformer, layer by layer.

The language model is never built as a Hugging Face module when loading from a folder: each
layer's tensors are read from the memory-mapped safetensors files (:mod:`vh_lens.core.tensor_source`:
checked sizes, shapes and finiteness), converted to TransformerLens' layout as views, processed
(fold layer norm, centre unembed, ...) as TransformerLens' ``ProcessWeights`` does
(:mod:`vh_lens.core.processing`) and written block by block into the HookedTransformer, so host memory
peaks near the size of what stays loaded. The vision tower and projector stay Hugging Face modules.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import einops
import torch
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import (
    AutoConfig,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    VipLlavaForConditionalGeneration,
)

from vh_lens.core.conformance import (
    UnsupportedModelError,
    attention_biases,
    attention_windows,
    check_conformance,
    tl_activation,
)
from vh_lens.core.devices import check_n_devices, place_layers
from vh_lens.core.processing import process_group, working_dtype, write
from vh_lens.core.tensor_source import CheckpointError, TensorSource, normalise_key

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


# --------------------------------------------------------------------------- conversion


def _split_heads(w: torch.Tensor, n: int) -> torch.Tensor:
    return einops.rearrange(w, "(n h) m -> n m h", n=n)


def convert_layer(
    src: TensorSource, layer: int, cfg: HookedTransformerConfig, text_config: PretrainedConfig, part: str
) -> dict[str, torch.Tensor]:
    """Half a decoder layer (``part`` ``"attn"`` or ``"mlp"``, each with its norm) of a Llama /
    Mistral / Qwen2 / Phi-3 checkpoint in TransformerLens keys ``blocks.0.*`` and layout: views of
    the checkpoint's tensors in its dtype (no copy); :func:`vh_lens.core.processing.write` converts
    them block by block to the working dtype.

    The biases read are the ones the config declares (``conformance.attention_biases``: Qwen2's
    q/k/v, Llama's q/k/v/o with ``attention_bias``), each required; the others are zero.
    """
    p = f"lm.layers.{layer}."
    work = working_dtype(cfg.dtype)
    text_type = text_config.model_type

    def get(name: str) -> torch.Tensor:
        return src.get(p + name)

    if part == "mlp":
        if text_type == "phi3":
            gate, up = torch.tensor_split(get("mlp.gate_up_proj.weight"), 2, dim=0)
        else:
            gate, up = get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")
        return {
            "blocks.0.ln2.w": get("post_attention_layernorm.weight"),
            "blocks.0.mlp.W_in": up.T,
            "blocks.0.mlp.W_gate": gate.T,
            "blocks.0.mlp.b_in": torch.zeros(cfg.d_mlp, dtype=work),  # type: ignore[arg-type]
            "blocks.0.mlp.W_out": get("mlp.down_proj.weight").T,
            "blocks.0.mlp.b_out": torch.zeros(cfg.d_model, dtype=work),
        }
    n_h = cfg.n_heads
    n_kv = cfg.n_key_value_heads or n_h
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    d_head = cfg.d_head
    biases = attention_biases(text_config)
    sd: dict[str, torch.Tensor] = {"blocks.0.ln1.w": get("input_layernorm.weight")}
    if text_type == "phi3":
        w_q, w_k, w_v = get("self_attn.qkv_proj.weight").split([n_h * d_head, n_kv * d_head, n_kv * d_head], dim=0)
    else:
        w_q, w_k, w_v = (get(f"self_attn.{x}_proj.weight") for x in "qkv")
    sd["blocks.0.attn.W_Q"] = _split_heads(w_q, n_h)
    sd[f"blocks.0.attn.{gqa}W_K"] = _split_heads(w_k, n_kv)
    sd[f"blocks.0.attn.{gqa}W_V"] = _split_heads(w_v, n_kv)
    for x, n, pre in (("q", n_h, ""), ("k", n_kv, gqa), ("v", n_kv, gqa)):
        bias = get(f"self_attn.{x}_proj.bias").reshape(n, d_head) if x in biases else torch.zeros(n, d_head, dtype=work)
        sd[f"blocks.0.attn.{pre}b_{x.upper()}"] = bias
    sd["blocks.0.attn.W_O"] = einops.rearrange(get("self_attn.o_proj.weight"), "m (n h) -> n h m", n=n_h)
    sd["blocks.0.attn.b_O"] = get("self_attn.o_proj.bias") if "o" in biases else torch.zeros(cfg.d_model, dtype=work)
    return sd


def _outer_groups(src: TensorSource, cfg: HookedTransformerConfig) -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
    """Final norm with unembedding in TransformerLens keys and layout (views of the checkpoint's
    tensors), one group at a time, each with the processing flags it overrides.

    The unembedding is the token embedding when the LLaVA config ties them
    (``cfg.tie_word_embeddings``, set by :func:`hooked_config`, as Hugging Face ties), else the
    checkpoint's ``lm_head.weight``, which must then be there.

    The embedding is not here: TransformerLens' processing leaves it unchanged for RMS-normed
    models, so it is copied straight into the model.
    """
    if cfg.tie_word_embeddings:
        head = src.get("lm.embed_tokens.weight")
    elif "head.weight" in src:
        head = src.get("head.weight")
    else:
        raise UnsupportedModelError(
            "checkpoint has no lm_head.weight and its config does not tie word embeddings (tie_word_embeddings = False)"
        )
    if tuple(head.shape) != (cfg.d_vocab, cfg.d_model):
        raise UnsupportedModelError(
            f"unembedding has shape {tuple(head.shape)}, the config says vocab_size x hidden_size = {(cfg.d_vocab, cfg.d_model)}"
        )
    yield (
        {
            "ln_final.w": src.get("lm.norm.weight"),
            "unembed.W_U": head.T,
            "unembed.b_U": torch.zeros(cfg.d_vocab, dtype=working_dtype(cfg.dtype)),
        },
        {},
    )


def load_backbone(
    src: TensorSource,
    config: PretrainedConfig,
    cfg: HookedTransformerConfig,
    *,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool = True,
) -> HookedTransformer:
    """Build the HookedTransformer and fill it group by group from ``src``.

    Each decoder layer is converted and processed as two groups (norm + attention, norm + MLP),
    then the embedding, then final norm + unembedding; each group is written block by block of
    rows into the model's parameters, and the checkpoint pages it mapped are dropped, so host
    memory peaks near the size of what stays loaded. ``center_writing_weights`` changes nothing:
    TransformerLens skips it for RMS norm, which every supported backbone has.
    """
    del center_writing_weights  # see above: a no-op for RMS-normed models, as in TransformerLens
    split = getattr(cfg, "n_devices", 1) > 1
    lm = HookedTransformer(cfg, move_to_device=not split)
    if split:
        place_layers(lm)
    target = _Filled(lm.state_dict())
    flags = dict(
        fold_ln=fold_ln,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        work=working_dtype(cfg.dtype),
    )
    for layer in range(cfg.n_layers):
        for part in ("attn", "mlp"):
            group = convert_layer(src, layer, cfg, config.text_config, part)
            _copy_into(
                target,
                process_group(group, cfg, **{**flags, "center_unembed": False}),
                flags["work"],
                f"blocks.{layer}.",
            )
            del group
            src.release()
    write(target["embed.W_E"], src.get("lm.embed_tokens.weight"), None, False, flags["work"])  # RMS: W_E unprocessed
    src.release()
    for group, overrides in _outer_groups(src, cfg):
        _copy_into(
            target, process_group(group, cfg, **{**flags, "fold_value_biases": False, **overrides}), flags["work"]
        )
        del group
        src.release()
    unfilled = [name for name, _ in lm.named_parameters() if name not in target.read]
    if unfilled:  # parameters were allocated uninitialised: every one must come from the checkpoint
        raise RuntimeError(f"loading left HookedTransformer parameters unset: {unfilled[:5]}")
    return lm


class _Filled(dict):
    """The model's state dict, remembering which entries were looked up to be written."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)


def _copy_into(target: dict[str, torch.Tensor], recipes: dict, work: torch.dtype, layer_prefix: str = "") -> None:
    """Write :func:`~vh_lens.core.processing.process_group` recipes into the model's parameters."""
    for key, (value, scale, centre) in recipes.items():
        if layer_prefix:
            key = key.replace("blocks.0.", layer_prefix, 1)
        if key not in target:
            raise KeyError(f"converted tensor {key} has no place in the HookedTransformer")
        try:
            write(target[key], value, scale, centre, work)
        except ValueError as err:
            raise CheckpointError(f"checkpoint tensor for {key}: {err}") from None


# --------------------------------------------------------------------------- vision side


def build_vision(config: PretrainedConfig, src: TensorSource, dtype: torch.dtype | None = None) -> nn.Module:
    """The LLaVA model part without its language model: vision tower, projector, image newline.

    Built on the meta device, where every checkpoint tensor's shape is checked against the
    model's; then only the vision weights are materialised, in ``dtype``, and read.

    Raises:
        CheckpointError: a tensor of the model is missing from the checkpoint or has another shape.
    """
    from vh_lens.core.image_tokens import leading_image_tokens

    model_cls = check_config(config)
    leading_image_tokens(config)  # refuse a tower / strategy the layout cannot follow before reading weights
    with torch.device("meta"):
        full = model_cls(config)
    tied = full.lm_head.weight is full.get_input_embeddings().weight
    expected = {n: tuple(t.shape) for k, t in full.state_dict().items() if (n := normalise_key(k)) is not None}
    src.check_shapes(expected, optional={"head.weight"} if tied else set())
    vision = full.model
    del vision.language_model
    if dtype is not None:
        vision.to(dtype)  # on the meta device: allocates nothing
    vision.to_empty(device="cpu")
    tower = vision.vision_tower
    for module in tower.modules():  # non-persistent buffers (position ids) are not in the checkpoint
        if module._non_persistent_buffers_set:
            tower._init_weights(module)
    state = {k: src.get(k) for k in src.names if not k.startswith(("lm.", "head."))}
    missing, unexpected = vision.load_state_dict(state, strict=False)
    del state
    src.release()
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the {model_cls.__name__} vision side: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    vision.eval()
    return vision


def load_llava(
    source: str | Path | PreTrainedModel,
    *,
    processor=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    n_ctx: int | None = None,
    fast_attention: bool = True,
    check_finite: bool = True,
    n_devices: int = 1,
):
    """Load a LLaVA checkpoint as a :class:`~vh_lens.LlavaLens`.

    The language backbone becomes a :class:`transformer_lens.HookedTransformer` with
    TransformerLens' weight processing (fold layer norm, centre writing weights, centre
    unembed, fold value biases) on by default, as ``HookedTransformer.from_pretrained`` does;
    pass ``fold_ln=False, center_writing_weights=False, center_unembed=False,
    fold_value_biases=False`` (or use :func:`load_llava_no_processing`) for the raw weights.
    Nothing is fetched from a network.

    Args:
        source: a local Hugging Face checkpoint folder (config, safetensors, processor files),
            or an in-memory ``LlavaForConditionalGeneration`` /
            ``LlavaNextForConditionalGeneration`` / ``VipLlavaForConditionalGeneration``
            (then pass ``processor``; the model's vision modules are shared, not copied).
        processor: the Hugging Face processor; read from the folder when not given.
        device: where to put the model (default: CPU).
        dtype: parameter dtype (default: the checkpoint's, float32 for an in-memory model's).
        n_ctx: context length of the HookedTransformer (default ``min(max positions, 4096)``).
        fast_attention: let layers whose pattern no hook reads use fused attention
            (:mod:`vh_lens.core.fast_attention`; same results, faster); ``False`` always runs
            TransformerLens' own attention. Switch later with ``model.fast_attention = ...``.
        check_finite: check every tensor read (language and vision side) for NaN and infinity
            and refuse a checkpoint holding any (measured: 0.7 s of 18 s for LLaVA-1.5-7B in float16); ``False`` skips it.
        n_devices: split the language backbone's layers over this many CUDA devices from
            ``device`` on (TransformerLens' layer split, :func:`vh_lens.core.devices.layer_devices`), for models that do
            not fit one GPU; the vision tower, projector and embedding stay on the first device.

    Returns:
        A :class:`~vh_lens.LlavaLens`.

    Raises:
        FileNotFoundError: the folder, its config, weights or processor files are missing.
        UnsupportedModelError: not a supported LLaVA family or language backbone.
        CheckpointError: a broken safetensors file or index, a tensor missing, of the wrong shape
            or holding NaN or infinity; the message names the file and the tensor.

    Example:
        >>> model = vh_lens.load_llava("/models/llava-1.5-7b-hf", dtype=torch.float16)  # doctest: +SKIP
    """
    from vh_lens.core.model import LlavaLens

    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(source, PreTrainedModel):
        config = source.config
        check_config(config)
        if processor is None:
            raise ValueError("load_llava: an in-memory model needs processor=...")
        src = TensorSource.from_module(source, check_finite=check_finite)
        for key in src.names:  # the vision side is shared, not copied: still checked for NaN / inf
            if not key.startswith(("lm.", "head.")):
                src.get(key)
        vision = source.model
        dtype = dtype or source.dtype
    elif isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        config = read_config(folder)
        processor = processor if processor is not None else load_processor(folder)
        src = TensorSource.from_folder(folder, check_finite=check_finite)
        dtype = dtype or _checkpoint_dtype(config)
        with _single_threaded():
            vision = build_vision(config, src, dtype)
    else:
        raise TypeError(
            f"load_llava: source must be a folder path or a Hugging Face LLaVA model, got {type(source).__name__}"
        )
    n_devices = check_n_devices(n_devices, device, int(config.text_config.num_hidden_layers))
    cfg = hooked_config(config, dtype=dtype, device=device, n_ctx=n_ctx, fold_ln=fold_ln)
    cfg.n_devices = n_devices  # checked above (TransformerLens' config checks only at construction)
    with _single_threaded():
        lm = load_backbone(
            src,
            config,
            cfg,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        )
    del src
    if not isinstance(source, PreTrainedModel):
        vision.to(device=device)
    return LlavaLens(lm, vision, processor, config, fast_attention=fast_attention)


@contextlib.contextmanager
def _single_threaded():
    """One intra-op thread while loading: the work is memory-bound copies (the transposing ones
    single-threaded in torch anyway), and on a shared machine torch's threads wait on each other:
    measured on 2 busy cores, 1 thread loaded 1.6-1.7 s where 2 took 1.5-12 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_llava_no_processing(source, **kwargs):
    """:func:`load_llava` without weight processing, as ``from_pretrained_no_processing`` does."""
    flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return load_llava(source, **{**flags, **kwargs})


def _checkpoint_dtype(config: PretrainedConfig) -> torch.dtype:
    dt = getattr(config, "dtype", None) or getattr(config.text_config, "dtype", None) or "float32"
    return dt if isinstance(dt, torch.dtype) else getattr(torch, str(dt).replace("torch.", ""))


def load_processor(folder: Path):
    """The checkpoint's processor with the PIL image backend (never torchvision)."""
    from transformers import AutoProcessor

    if not any(
        (folder / f).is_file()
        for f in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")
    ):
        raise FileNotFoundError(f"no processor files (preprocessor_config.json, tokenizer files) in {folder}")
    config_file = folder / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "llava_onevision":
        from vh_lens.core.onevision import load_onevision_processor

        processor = load_onevision_processor(folder)  # images only: HF's wants a torchvision video processor
    else:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    processor.tokenizer.padding_side = "left"
    return processor
