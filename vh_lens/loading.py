"""Loading a LLaVA checkpoint: the language backbone into a HookedTransformer, layer by layer.

The language model is never built as a Hugging Face module when loading from a folder: each
layer's tensors are read from the safetensors files, converted to TransformerLens' layout,
processed (fold layer norm, centre unembed, ...) with TransformerLens' own ``ProcessWeights`` and
copied into the HookedTransformer, so host memory peaks near the size of what stays loaded.
The vision tower and projector stay Hugging Face modules.
"""

from __future__ import annotations

import copy
import gc
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import einops
import torch
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.weight_processing import ProcessWeights
from transformers import (
    AutoConfig,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    VipLlavaForConditionalGeneration,
)

SUPPORTED_MODELS: dict[str, type[PreTrainedModel]] = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "vipllava": VipLlavaForConditionalGeneration,
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


class UnsupportedModelError(ValueError):
    """The checkpoint is not one of the supported LLaVA families or backbones."""


def supported_list() -> str:
    names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS.values())
    return f"{names}; language backbones: {', '.join(SUPPORTED_BACKBONES)}"


def check_config(config: PretrainedConfig) -> type[PreTrainedModel]:
    """Return the model class for ``config`` or raise :class:`UnsupportedModelError`."""
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
    every top-level ``*.json`` of the folder first (``tokenizer.json`` and ``vocab.json`` aside)
    and refuses any ``auto_map``, naming the file and the entry. It is called by
    :func:`read_config`, so :func:`load_llava` checks the folder before any Hugging Face
    loader sees it; the loaders also get ``trust_remote_code=False`` where vh_lens calls them.

    Raises:
        RemoteCodeError: some json file holds an ``auto_map``.
        ValueError: a json file of the folder is not valid JSON (named).
    """
    for path in sorted(Path(folder).glob("*.json")):
        if path.name in _NOT_CONFIGS or not path.is_file():
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
    out["partial_rotary_factor"] = float(params.get("partial_rotary_factor", getattr(text_config, "partial_rotary_factor", 1.0)))
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
            causal mask is ``n_ctx x n_ctx`` per layer); a Mistral or Phi-3 sliding window
            becomes TransformerLens local attention.
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
    window = getattr(tc, "sliding_window", None)
    if tc.model_type == "qwen2" and not getattr(tc, "use_sliding_window", False):
        window = None
    local = window is not None and int(window) < ctx
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
        act_fn=tc.hidden_act,
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
        window_size=int(window) if local else None,
        attn_types=["local"] * tc.num_hidden_layers if local else None,
        init_weights=False,
        dtype=dtype,
        device=str(device),
        model_name=getattr(config, "_name_or_path", "") or "llava",
        **rope,
    )
    return cfg


# --------------------------------------------------------------------------- tensors

_LM_PREFIXES = (
    ("model.language_model.", "lm."),
    ("language_model.model.", "lm."),
    ("lm_head.", "head."),
    ("language_model.lm_head.", "head."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("image_newline", "image_newline"),
)


def _normalise_key(key: str) -> str | None:
    """Map a checkpoint key (new or legacy Hugging Face layout) to ``lm.* | head.* | vision side``."""
    for old, new in _LM_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


class TensorSource:
    """Read tensors by normalised name from a checkpoint folder (lazily) or a module."""

    def __init__(
        self,
        getter: Callable[[str], torch.Tensor],
        names: dict[str, str],
        reader: Callable[[str, torch.Tensor], bool] | None = None,
    ):
        self._get = getter
        self._read_into = reader
        self.names = names  # normalised -> original

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def get(self, key: str) -> torch.Tensor:
        if key not in self.names:
            raise KeyError(f"checkpoint has no tensor for {key!r}")
        return self._get(self.names[key])

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Fill ``out`` with the tensor ``key``: straight from the file when dtype and shape match."""
        if key not in self.names:
            raise KeyError(f"checkpoint has no tensor for {key!r}")
        if self._read_into is None or not self._read_into(self.names[key], out):
            with torch.no_grad():
                out.copy_(self._get(self.names[key]))

    def prefixed(self, prefix: str) -> Iterator[str]:
        return (k for k in self.names if k.startswith(prefix))

    @classmethod
    def from_module(cls, model: nn.Module) -> TensorSource:
        state = dict(model.state_dict(keep_vars=False))
        names = {n: k for k in state if (n := _normalise_key(k)) is not None}
        return cls(state.__getitem__, names)

    @classmethod
    def from_folder(cls, folder: Path) -> TensorSource:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({folder / f for f in weight_map.values()})
        elif (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no safetensors weights (model.safetensors or model.safetensors.index.json) in {folder}"
            )
        entries: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            header, start = _read_safetensors_header(path)
            entries.update({k: (path, v, start) for k, v in header.items() if k != "__metadata__"})

        def getter(key: str) -> torch.Tensor:
            path, info, start = entries[key]
            return _read_tensor(path, info, start)

        def reader(key: str, out: torch.Tensor) -> bool:
            path, info, start = entries[key]
            fits = _ST_DTYPES[info["dtype"]] == out.dtype and list(out.shape) == info["shape"]
            if fits and out.is_contiguous() and out.device.type == "cpu":
                _read_tensor(path, info, start, out=out)
                return True
            return False

        names = {n: k for k in entries if (n := _normalise_key(k)) is not None}
        return cls(getter, names, reader)


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def _read_tensor(path: Path, info: dict, start: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor with plain file reads (no memory map, so nothing lingers in memory),
    into ``out`` when given (same dtype and shape, contiguous, on the CPU)."""
    begin, end = info["data_offsets"]
    buf = torch.empty(end - begin, dtype=torch.uint8) if out is None else out.detach().view(-1).view(torch.uint8)
    with open(path, "rb") as f:
        f.seek(start + begin)
        if f.readinto(buf.numpy()) != end - begin:
            raise OSError(f"truncated safetensors file {path}")
    return buf.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


# --------------------------------------------------------------------------- conversion


def _split_heads(w: torch.Tensor, n: int) -> torch.Tensor:
    return einops.rearrange(w, "(n h) m -> n m h", n=n)


def convert_layer(
    src: TensorSource, layer: int, cfg: HookedTransformerConfig, text_type: str, part: str
) -> dict[str, torch.Tensor]:
    """Half a decoder layer (``part`` ``"attn"`` or ``"mlp"``, each with its norm) of a Llama /
    Mistral / Qwen2 / Phi-3 checkpoint in TransformerLens keys ``blocks.0.*``, in float32."""
    p = f"lm.layers.{layer}."

    def get(name: str) -> torch.Tensor:
        return src.get(p + name).float()

    if part == "mlp":
        if text_type == "phi3":
            gate, up = torch.tensor_split(get("mlp.gate_up_proj.weight"), 2, dim=0)
        else:
            gate, up = get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")
        return {
            "blocks.0.ln2.w": get("post_attention_layernorm.weight"),
            "blocks.0.mlp.W_in": up.T,
            "blocks.0.mlp.W_gate": gate.T,
            "blocks.0.mlp.b_in": torch.zeros(cfg.d_mlp),  # type: ignore[arg-type]
            "blocks.0.mlp.W_out": get("mlp.down_proj.weight").T,
            "blocks.0.mlp.b_out": torch.zeros(cfg.d_model),
        }
    n_h = cfg.n_heads
    n_kv = cfg.n_key_value_heads or n_h
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    d_head = cfg.d_head
    sd: dict[str, torch.Tensor] = {"blocks.0.ln1.w": get("input_layernorm.weight")}
    if text_type == "phi3":
        w_q, w_k, w_v = get("self_attn.qkv_proj.weight").split([n_h * d_head, n_kv * d_head, n_kv * d_head], dim=0)
    else:
        w_q, w_k, w_v = (get(f"self_attn.{x}_proj.weight") for x in "qkv")
    sd["blocks.0.attn.W_Q"] = _split_heads(w_q, n_h)
    sd[f"blocks.0.attn.{gqa}W_K"] = _split_heads(w_k, n_kv)
    sd[f"blocks.0.attn.{gqa}W_V"] = _split_heads(w_v, n_kv)
    for x, n, pre in (("q", n_h, ""), ("k", n_kv, gqa), ("v", n_kv, gqa)):
        key = f"self_attn.{x}_proj.bias"
        bias = get(key).reshape(n, d_head) if (p + key) in src else torch.zeros(n, d_head)
        sd[f"blocks.0.attn.{pre}b_{x.upper()}"] = bias
    sd["blocks.0.attn.W_O"] = einops.rearrange(get("self_attn.o_proj.weight"), "m (n h) -> n h m", n=n_h)
    sd["blocks.0.attn.b_O"] = torch.zeros(cfg.d_model)
    return sd


def _outer_groups(
    src: TensorSource, cfg: HookedTransformerConfig, rows: int = 256
) -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
    """Embedding, then final norm with unembedding, in TransformerLens keys (float32), one group at
    a time, each with the processing flags it overrides.

    The unembedding is processed in blocks of ``rows`` rows of ``W_U`` (d_model rows): folding the
    final norm scales each row and centring subtracts each row's mean over the vocabulary, so
    blocks give exactly the whole-matrix result with a fraction of the memory. The embedding is
    not here: TransformerLens' processing leaves it unchanged for RMS-normed models, so it is read
    straight into the model.
    """
    head = src.get("head.weight" if "head.weight" in src else "lm.embed_tokens.weight")  # tied embeddings
    norm = src.get("lm.norm.weight").float()
    for start in range(0, cfg.d_model, rows):
        block = slice(start, start + rows)
        yield {
            "ln_final.w": norm[block],
            "unembed.W_U": head[:, block].T.float(),
            "unembed.b_U": torch.zeros(cfg.d_vocab),
        }, {"rows": block}


def _process(sd: dict[str, torch.Tensor], cfg: HookedTransformerConfig, n_layers: int, flags: dict) -> dict:
    """TransformerLens' own weight processing on a partial state dict of ``n_layers`` layers."""
    part = copy.copy(cfg)
    part.n_layers = n_layers
    part.normalization_type = "RMS"  # the weights still carry their norms
    return ProcessWeights.process_weights(sd, part, **flags)


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
    then the embedding, then final norm + unembedding, so at most one group is held in float32
    beside the model: host memory peaks near the size of what stays loaded.
    """
    flags = dict(
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    lm = HookedTransformer(cfg, move_to_device=True)
    text_type = config.text_config.model_type
    target = _Filled(lm.state_dict())
    for layer in range(cfg.n_layers):
        for part in ("attn", "mlp"):
            group = _process(convert_layer(src, layer, cfg, text_type, part), cfg, 1, {**flags, "center_unembed": False})
            _copy_into(target, {k.replace("blocks.0.", f"blocks.{layer}.", 1): v for k, v in group.items()})
            del group
            _release_freed_memory()
    src.read_into("lm.embed_tokens.weight", target["embed.W_E"])  # RMS norm: processing leaves W_E alone
    for group, overrides in _outer_groups(src, cfg):
        block = overrides.pop("rows", None)
        group = _process(group, cfg, 0, {**flags, "fold_value_biases": False, **overrides})
        if block is not None:  # one block of unembedding rows (and of the final norm, when kept)
            with torch.no_grad():
                target["unembed.W_U"][block].copy_(group.pop("unembed.W_U"))
                if "ln_final.w" in target:
                    target["ln_final.w"][block].copy_(group.pop("ln_final.w"))
                if block.start == 0:
                    target["unembed.b_U"].copy_(group.pop("unembed.b_U"))
            group = {}
        _copy_into(target, group)
        del group
        _release_freed_memory()
    unfilled = [name for name, _ in lm.named_parameters() if name not in target.read]
    if unfilled:  # parameters were allocated uninitialised: every one must come from the checkpoint
        raise RuntimeError(f"loading left HookedTransformer parameters unset: {unfilled[:5]}")
    gc.collect()
    return lm


class _Filled(dict):
    """The model's state dict, remembering which entries were looked up to be written."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps freed blocks under 32 MB)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _copy_into(target: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> None:
    for key, value in sd.items():
        if key not in target:
            if key.endswith((".ln1.w", ".ln2.w")) or key == "ln_final.w":
                continue  # folded away
            raise KeyError(f"converted tensor {key} has no place in the HookedTransformer")
        with torch.no_grad():
            target[key].copy_(value.to(target[key].dtype))


# --------------------------------------------------------------------------- vision side


def build_vision(config: PretrainedConfig, src: TensorSource) -> nn.Module:
    """The LLaVA model part without its language model: vision tower, projector, image newline.

    Built on the meta device, then only the vision weights are materialised and read.
    """
    model_cls = check_config(config)
    with torch.device("meta"):
        full = model_cls(config)
    vision = full.model
    del vision.language_model
    vision.to_empty(device="cpu")
    tower = vision.vision_tower
    for module in tower.modules():  # non-persistent buffers (position ids) are not in the checkpoint
        if module._non_persistent_buffers_set:
            tower._init_weights(module)
    state = {k: src.get(k) for k in src.names if not k.startswith(("lm.", "head."))}
    missing, unexpected = vision.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
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
            (:mod:`vh_lens.fast_attention`; same results, faster); ``False`` always runs
            TransformerLens' own attention. Switch later with ``model.fast_attention = ...``.

    Returns:
        A :class:`~vh_lens.LlavaLens`.

    Raises:
        FileNotFoundError: the folder, its config, weights or processor files are missing.
        UnsupportedModelError: not a supported LLaVA family or language backbone.

    Example:
        >>> model = vh_lens.load_llava("/models/llava-1.5-7b-hf", dtype=torch.float16)  # doctest: +SKIP
    """
    from vh_lens.model import LlavaLens

    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(source, PreTrainedModel):
        config = source.config
        check_config(config)
        if processor is None:
            raise ValueError("load_llava: an in-memory model needs processor=...")
        src = TensorSource.from_module(source)
        vision = source.model
        dtype = dtype or source.dtype
    elif isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        config = read_config(folder)
        processor = processor if processor is not None else load_processor(folder)
        src = TensorSource.from_folder(folder)
        vision = build_vision(config, src)
        dtype = dtype or _checkpoint_dtype(config)
    else:
        raise TypeError(f"load_llava: source must be a folder path or a Hugging Face LLaVA model, got {type(source).__name__}")
    cfg = hooked_config(config, dtype=dtype, device=device, n_ctx=n_ctx, fold_ln=fold_ln)
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
    gc.collect()
    if not isinstance(source, PreTrainedModel):
        vision.to(device=device, dtype=dtype)
    return LlavaLens(lm, vision, processor, config, fast_attention=fast_attention)


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

    if not any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"no processor files (preprocessor_config.json, tokenizer files) in {folder}")
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    processor.tokenizer.padding_side = "left"
    return processor
