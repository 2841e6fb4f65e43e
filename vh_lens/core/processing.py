"""TransformerLens' weight processing for RMS-normed backbones, written straight into the model.

``HookedTransformer.from_pretrained`` processes a state dict with
``transformer_lens.weight_processing.ProcessWeights``: fold each norm's weight into the matrices
that read its output, centre the unembedding over the vocabulary, fold value biases into the
output bias, centre writing weights (which TransformerLens skips for RMS norm). Here the same
arithmetic runs on one group of tensors at a time (a half layer, or the unembedding), block by
block of rows, in a working dtype (float64 for float64 models, float32 otherwise), and each block
is written into the model's parameter: no copy of the state dict and no whole-matrix temporary.
``tests/core/test_loading.py`` checks the result against ``ProcessWeights`` itself.
"""

from __future__ import annotations

import torch

_BLOCK_ELEMENTS = 1 << 20  # rows per block: about this many elements (4 MiB of float32)
_LN_READERS = {  # norm weight -> the matrices reading its output, and their d_model dimension
    "blocks.0.ln1.w": {"W_Q": 1, "W_K": 1, "W_V": 1, "_W_K": 1, "_W_V": 1},  # [head, d_model, d_head]
    "blocks.0.ln2.w": {"W_in": 0, "W_gate": 0},  # [d_model, d_mlp]
    "ln_final.w": {"W_U": 0},  # [d_model, d_vocab]
}


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype weight processing computes in: float64 for a float64 model, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def process_group(
    group: dict[str, torch.Tensor],
    cfg,
    *,
    fold_ln: bool,
    center_unembed: bool,
    fold_value_biases: bool,
    work: torch.dtype,
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, bool]]:
    """TransformerLens' processing of one group of an RMS-normed model, as recipes to write.

    Args:
        group: TransformerLens keys (``blocks.0.*`` for a layer, ``unembed.*`` / ``ln_final.w``)
            -> tensors in TransformerLens' layout (views of the checkpoint, any dtype).
        cfg: the HookedTransformer config (heads, key-value heads).
        work: the dtype to compute in.

    Returns:
        key -> ``(value, scale, centre)``: the parameter is ``value * scale`` (``scale``
        broadcasts to ``value``; ``None``: no scaling), minus its mean over the last dimension
        when ``centre``, computed in ``work``. Norm weights are left out when folded.
    """
    scales: dict[str, torch.Tensor] = {}
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None, bool]] = {}
    for ln_key, readers in _LN_READERS.items():
        if ln_key in group and fold_ln:
            w = group[ln_key].to(work)
            for name, dim in readers.items():
                scales[name] = w[None, :, None] if dim == 1 else w[:, None]
    for key, value in group.items():
        if key in _LN_READERS:
            if not fold_ln:
                out[key] = (value, None, False)
            continue
        name = key.rsplit(".", 1)[-1]
        centre = center_unembed and key in ("unembed.W_U", "unembed.b_U")
        out[key] = (value, scales.get(name), centre)
    if fold_value_biases:
        out.update(_folded_value_bias(group, cfg, work))
    return out


def _folded_value_bias(group: dict[str, torch.Tensor], cfg, work: torch.dtype) -> dict:
    """``b_O + sum over heads of b_V @ W_O`` and a zero ``b_V``, as TransformerLens folds them."""
    key = next((k for k in ("blocks.0.attn.b_V", "blocks.0.attn._b_V") if k in group), None)
    if key is None:
        return {}
    b_v = group[key]
    if not b_v.any():  # nothing to fold: b_O stays as it is (and b_V zero)
        return {}
    b_v = b_v.to(work)
    if cfg.n_key_value_heads is not None:
        b_v = torch.repeat_interleave(b_v, cfg.n_heads // cfg.n_key_value_heads, dim=0)
    w_o = group["blocks.0.attn.W_O"].to(work)
    b_o = group["blocks.0.attn.b_O"].to(work) + (b_v[:, :, None] * w_o).sum([0, 1])
    return {"blocks.0.attn.b_O": (b_o, None, False), key: (torch.zeros_like(group[key]), None, False)}


def write(out: torch.Tensor, value: torch.Tensor, scale: torch.Tensor | None, centre: bool, work: torch.dtype) -> None:
    """``out[...] = value * scale - mean`` (see :func:`process_group`), block by block of rows.

    ``value`` is first copied into ``out`` (a blocked transpose when its layout differs) when that
    conversion is exact, then each block of rows of ``out`` is processed in place through a
    scratch buffer in ``work``; otherwise (a lossy conversion, e.g. float32 -> float16) the blocks
    are computed from ``value`` itself, so the result is rounded once either way, as a round trip
    through ``work`` would. A plain copy (no scale, no centring) is a single copy.
    """
    if tuple(value.shape) != tuple(out.shape):
        raise ValueError(f"shape {list(value.shape)} does not fit the parameter's {list(out.shape)}")
    with torch.no_grad():
        if scale is None and not centre:
            _copy(out, value)
            return
        source = value
        if _lossless(value.dtype, out.dtype) and out.is_contiguous():
            _copy(out, value)
            source = out
        if scale is not None:
            scale = scale.to(device=out.device, dtype=work).expand(value.shape)
        if out.dim() < 2:  # a vector: one block (centring needs it whole)
            blocks, scratch = [slice(None)], torch.empty(out.numel(), dtype=work, device=out.device)
        else:
            row = max(1, out[0].numel())
            step = max(1, _BLOCK_ELEMENTS // row)
            blocks = [slice(start, start + step) for start in range(0, out.shape[0], step)]
            scratch = torch.empty(step * row, dtype=work, device=out.device)
        for block in blocks:
            target = out[block]
            piece = scratch[: target.numel()].view(target.shape)
            piece.copy_(source[block])
            if scale is not None:
                piece.mul_(scale[block])
            if centre:
                piece.sub_(piece.mean(-1, keepdim=True))
            target.copy_(piece)


def _copy(out: torch.Tensor, value: torch.Tensor) -> None:
    """``out.copy_(value)``, as 2-D transposed copies where it can: torch copies a transposed 2-D
    tensor of the same dtype in cache-sized tiles, other layouts element by element (7x slower)."""
    if out.dim() == 3 and out.is_contiguous() and not value.is_contiguous():
        try:  # W_O: [head, d_head, d_model] is a transposed [d_model, head * d_head]
            flat = value.view(-1, value.shape[-1])
        except RuntimeError:  # W_Q, W_K, W_V: each head is a transposed [d_head, d_model]
            for i in range(out.shape[0]):
                out[i].copy_(value[i])
        else:
            out.view(flat.shape).copy_(flat)
    else:
        out.copy_(value)


def _lossless(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every ``src`` value is exactly a ``dst`` value."""
    wider = {
        torch.float16: (torch.float32, torch.float64),
        torch.bfloat16: (torch.float32, torch.float64),
        torch.float32: (torch.float64,),
    }
    return src == dst or dst in wider.get(src, ())
