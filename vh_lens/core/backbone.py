"""Converting a checkpoint's language backbone into a HookedTransformer, layer by layer.

Each decoder layer's tensors are read from a :class:`~vh_lens.core.tensor_source.TensorSource`, converted to
TransformerLens' keys and layout as views, processed (:mod:`vh_lens.core.processing`) and written block by
block into the HookedTransformer's parameters.
"""

from __future__ import annotations

from collections.abc import Iterator

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PretrainedConfig

from vh_lens.core.conformance import UnsupportedModelError, attention_biases
from vh_lens.core.devices import place_layers
from vh_lens.core.processing import process_group, working_dtype, write
from vh_lens.core.tensor_source import CheckpointError, TensorSource


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
