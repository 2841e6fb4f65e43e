"""A fused attention path for the HookedTransformer backbone, used when no hook needs the pattern.

TransformerLens' attention materialises the ``[batch, head, query, key]`` scores and pattern in
every forward, masks them with ``torch.where`` and cleans NaNs with two more full-size passes,
which is most of a forward's cost at LLaVA's 600+ positions. Most runs never look at the
pattern: plain forwards, generation of logits, hooks on the residual stream, ``hook_z``, the
visual-head scan (which computes its query rows from ``hook_rot_q`` / ``hook_rot_k``).

:func:`install` wraps each layer's ``attn.forward``: a layer takes the fused path
(``torch.nn.functional.scaled_dot_product_attention``) only when nothing can observe the
difference:

- no hook (forward or backward) is attached to its ``hook_attn_scores`` or ``hook_pattern``
  (so ``run_with_cache`` of patterns, pattern ablations, ``visual_head_hooks`` all get the
  exact TransformerLens computation);
- no key-value cache entry, additive mask or position bias is passed (generation steps use
  TransformerLens' own path);
- the layer is a causal rotary attention of one of the supported backbones (Llama, Mistral,
  Qwen2, Phi-3) with no attention sinks, log-n scaling, qkv clipping, score soft-capping,
  4-bit weights or ``use_attn_result``.

The switch also covers Llama-style gated MLPs, which skip TransformerLens' per-call copies of
their transposed weights (:func:`_fast_mlp_forward`; same hooks, same numbers to float rounding).

Everything else is TransformerLens' own code: ``calculate_qkv_matrices`` (so ``hook_q``,
``hook_k``, ``hook_v`` fire), ``apply_rotary`` (``hook_rot_q``, ``hook_rot_k``, left-padding
aware positions), ``_make_causal_mask`` (sliding windows), ``hook_z`` and the output projection.
The mask is each layer's own (``attn.attn_type``), so a per-layer mix of local and global layers
(Qwen2's ``layer_types``) is exact; a window is ``q - window < k <= q``, Hugging Face's.
Query rows with no key to attend to (left padding) give ``z = 0``, as TransformerLens' NaN
cleanup does. Results agree with TransformerLens' path to float rounding (tests compare both
with Hugging Face).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAST_ARCHITECTURES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM"})
"""``cfg.original_architecture`` values whose attention the fused path reproduces."""

PATTERN_HOOKS = ("hook_attn_scores", "hook_pattern")
"""Hook points whose use sends a layer back to TransformerLens' own attention."""


def _observed(hook_point: nn.Module) -> bool:
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or getattr(hook_point, "_backward_pre_hooks", None)
    )


def layer_supported(attn: nn.Module) -> bool:
    """Whether ``attn``'s configuration allows the fused path at all (hooks aside)."""
    cfg = attn.cfg
    soft_cap = getattr(cfg, "attn_scores_soft_cap", -1.0)
    return (
        cfg.original_architecture in FAST_ARCHITECTURES
        and cfg.positional_embedding_type == "rotary"
        and (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
        and not getattr(cfg, "use_attention_sinks", False)
        and not getattr(cfg, "use_logn_attn", False)
        and getattr(cfg, "clip_qkv", None) is None
        and not getattr(cfg, "load_in_4bit", False)
        and not cfg.use_attn_result
        and not (soft_cap is not None and soft_cap > 0)
    )


def takes_fast_path(attn: nn.Module) -> bool:
    """Whether a forward of ``attn`` (without cache, extra masks or bias) now takes the fused path."""
    return (
        getattr(attn, "_vh_fast_enabled", False)
        and layer_supported(attn)
        and not any(_observed(getattr(attn, name)) for name in PATTERN_HOOKS)
    )


def _fast_forward(
    attn: nn.Module,
    query_input: Tensor,
    key_input: Tensor,
    value_input: Tensor,
    past_kv_cache_entry: Any = None,
    additive_attention_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
) -> Tensor:
    if (
        past_kv_cache_entry is not None
        or additive_attention_mask is not None
        or position_bias is not None
        or not (takes_fast_path(attn))
    ):
        return attn._vh_tl_forward(
            query_input,
            key_input,
            value_input,
            past_kv_cache_entry=past_kv_cache_entry,
            additive_attention_mask=additive_attention_mask,
            attention_mask=attention_mask,
            position_bias=position_bias,
        )
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)  # [b, pos, heads, d_head]
    q = attn.hook_rot_q(attn.apply_rotary(q, 0, attention_mask))
    k = attn.hook_rot_k(attn.apply_rotary(k, 0, attention_mask))
    batch, n_pos, n_heads, d_head = q.shape
    if k.shape[2] != n_heads:  # grouped-query attention: query head i reads key/value head i // group
        k = k.repeat_interleave(n_heads // k.shape[2], dim=2)
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
    v = v.to(q.dtype)
    allowed = None
    has_key = None
    if attention_mask is not None or attn.attn_type == "local":
        allowed = attn._make_causal_mask(n_pos, n_pos, 0, q.device)  # [q, k], sliding window included
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(q.device).bool()[:, None, None, :]  # [b, 1, q, k]
            has_key = allowed.any(-1)  # [b, 1, q]: False on left padding
            # a row with no key would give NaN: let it see itself, and zero its output below
            allowed = allowed | torch.eye(n_pos, dtype=torch.bool, device=q.device)
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=allowed,
        is_causal=allowed is None,
        scale=1.0 / float(attn.attn_scale),
    )  # [b, heads, q, d_head]
    if has_key is not None:
        z = z * has_key[..., None].to(z.dtype)
    z = attn.hook_z(z.transpose(1, 2))  # [b, pos, heads, d_head]
    w_o = attn.W_O.reshape(n_heads * d_head, -1)  # [(head d_head), d_model]: a view, no per-call copy
    return F.linear(z.reshape(batch, n_pos, n_heads * d_head).to(w_o.dtype), w_o.T, attn.b_O)


def mlp_supported(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is TransformerLens' plain gated MLP (Llama-style), which :func:`install` can speed up."""
    cfg = mlp.cfg
    return (
        type(mlp).__name__ == "GatedMLP"
        and cfg.gated_mlp
        and not getattr(cfg, "load_in_4bit", False)
        and not cfg.is_layer_norm_activation()
    )


def _fast_mlp_forward(mlp: nn.Module, x: Tensor) -> Tensor:
    """TransformerLens' ``GatedMLP.forward`` without copying the transposed weights on every call.

    TransformerLens makes ``W.T`` contiguous before each ``F.linear`` (to match Hugging Face's
    bfloat16 rounding exactly); a transposed view gives the same product with a different
    accumulation order, and saves three weight copies per layer. All hooks fire as before.
    """
    if not getattr(mlp, "_vh_fast_enabled", False):
        return mlp._vh_tl_forward(x)
    if mlp.W_gate.device != x.device:
        x = x.to(mlp.W_gate.device)
    pre_act = mlp.hook_pre(F.linear(x, mlp.W_gate.T))
    pre_linear = mlp.hook_pre_linear(F.linear(x, mlp.W_in.T))
    post_act = mlp.hook_post(mlp.act_fn(pre_act) * pre_linear + mlp.b_in)
    return F.linear(post_act, mlp.W_out.T, mlp.b_out)


def _wrap(module: nn.Module, forward: Any, enabled: bool) -> None:
    if not hasattr(module, "_vh_tl_forward"):
        module._vh_tl_forward = module.forward
        module.forward = types.MethodType(forward, module)
    module._vh_fast_enabled = enabled


def install(model: nn.Module, enabled: bool = True) -> int:
    """Give every layer of a HookedTransformer the fast paths (see the module doc).

    Attention layers get the fused path; Llama-style gated MLPs a copy-free one
    (:func:`_fast_mlp_forward`). Idempotent; ``enabled=False`` keeps the wrappers but sends
    every forward to TransformerLens' own code (see :func:`set_enabled`).

    Returns:
        The number of attention layers whose configuration allows the fused path.
    """
    n = 0
    for block in model.blocks:
        _wrap(block.attn, _fast_forward, enabled)
        n += layer_supported(block.attn)
        if mlp_supported(block.mlp):
            _wrap(block.mlp, _fast_mlp_forward, enabled)
    return n


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Turn the fast paths on or off for every layer where :func:`install` put them."""
    for block in model.blocks:
        for module in (block.attn, block.mlp):
            if hasattr(module, "_vh_tl_forward"):
                module._vh_fast_enabled = enabled
