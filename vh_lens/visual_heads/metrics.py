"""Paper A's per-head attention metrics, from the post-softmax attention row at the query position.

For each sample, layer ``l`` and head ``h``, with ``a`` the post-softmax attention row at the
sample's query position (it sums to 1 over all key positions, BOS included):

- ``image_weight``   ``W_img = sum_{i in image} a_i``
- ``region_weight``  ``W_reg = sum_{i in image, covered by the question's box} a_i``
- ``text_weight``    ``W_txt = sum_{i in text} a_i`` (the other non-padding prompt positions)
- ``concentration``  ``C = 1 - H(p) / log N``, ``p_i = a_i / W_img`` over the ``N`` image
  tokens, ``H(p) = -sum_i p_i log(p_i + eps)``; ``C = 0`` when ``W_img = 0`` or ``N <= 1``.
- ``detection``      ``S = f(l) * W * C`` (:func:`detection_score`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["HEAD_METRICS", "LayerFn", "default_layer_fn", "detection_score", "head_metrics", "layer_fn_name"]

HEAD_METRICS: tuple[str, ...] = ("image_weight", "region_weight", "text_weight", "concentration")
"""The metrics :func:`head_metrics` returns (``detection`` is added by the accumulator)."""

LayerFn = Callable[[Any], Any]
"""The layer factor ``f(l)`` of the detection score."""


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def head_metrics(
    rows: Float[Tensor, "batch head key"],
    image_mask: Bool[Tensor, "batch key"],
    region_mask: Bool[Tensor, "batch key"],
    text_mask: Bool[Tensor, "batch key"],
    eps: float = 1e-12,
) -> dict[str, Float[Tensor, "batch head"]]:
    """Image, region and text weight and concentration of every head at once.

    Args:
        rows: ``[batch, head, key]`` post-softmax attention rows at each sample's query
            position (computed in float64, whatever their dtype).
        image_mask: ``[batch, key]`` True at image-token positions.
        region_mask: ``[batch, key]`` True at the image tokens covered by the sample's box
            (all False when the sample has no box: its region weight is then 0). Positions
            outside ``image_mask`` are ignored.
        text_mask: ``[batch, key]`` True at the text positions of the prompt (padding and
            image tokens excluded).
        eps: the ``eps`` inside ``log(p + eps)`` of the entropy.

    Returns:
        ``{"image_weight", "region_weight", "text_weight", "concentration"}``, each
        ``[batch, head]`` (float64; float32 on MPS).

    Example:
        >>> rows = torch.tensor([[[0.2, 0.4, 0.2, 0.1, 0.1]]])
        >>> img = torch.tensor([[False, True, True, True, False]])
        >>> m = head_metrics(rows, img, torch.zeros_like(img), ~img)
        >>> round(float(m["image_weight"]), 6), round(float(m["concentration"]), 4)
        (0.7, 0.1301)
    """
    if rows.ndim != 3:
        raise ValueError(f"rows must be [batch, head, key], got shape {tuple(rows.shape)}")
    batch, _, key = rows.shape
    for name, mask in (("image_mask", image_mask), ("region_mask", region_mask), ("text_mask", text_mask)):
        if mask.shape != (batch, key):
            raise ValueError(f"{name} must be [batch, key] = {(batch, key)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {mask.dtype}")
    dtype = _compute_dtype(rows.device)
    a = rows.to(dtype)
    img = image_mask.to(rows.device)[:, None, :]
    reg = (region_mask.to(rows.device) & image_mask.to(rows.device))[:, None, :]
    txt = text_mask.to(rows.device)[:, None, :]
    zero = a.new_zeros(())

    a_img = torch.where(img, a, zero)
    w_img = a_img.sum(-1)  # [batch, head]
    w_reg = torch.where(reg, a, zero).sum(-1)
    w_txt = torch.where(txt, a, zero).sum(-1)

    n_img = image_mask.to(rows.device).sum(-1).to(dtype)[:, None]  # [batch, 1]
    defined = (w_img > 0) & (n_img > 1)
    p = a_img / torch.where(defined, w_img, torch.ones_like(w_img))[..., None]
    entropy = -(p * torch.log(p + eps)).sum(-1)
    log_n = torch.log(torch.where(n_img > 1, n_img, torch.full_like(n_img, math.e)))
    concentration = torch.where(defined, 1.0 - entropy / log_n, zero)
    return {"image_weight": w_img, "region_weight": w_reg, "text_weight": w_txt, "concentration": concentration}


def default_layer_fn(layer: int | Tensor) -> float | Tensor:
    """Our default layer factor ``f(l) = 1 / log(l + e)`` for 0-based ``l``.

    Paper A only says that ``f`` scores lower layers higher (to offset their smaller weights)
    and decays gradually with depth, with an epsilon for stability; its exact form is not
    published in any text we have. This default is ours: ``f(0) = 1``, ``f(31) ~ 0.28``, smooth
    and slowly decaying. Pass your own ``layer_fn`` to :func:`detection_score` /
    :func:`scan_visual_heads` to use another.

    Args:
        layer: a 0-based layer index, or a tensor of them.
    """
    if isinstance(layer, Tensor):
        return 1.0 / torch.log(layer.to(torch.float64) + math.e)
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return 1.0 / math.log(layer + math.e)


def detection_score(
    weight: Float[Tensor, "*shape"],
    concentration: Float[Tensor, "*shape"],
    layer: int | Tensor,
    layer_fn: LayerFn = default_layer_fn,
) -> Float[Tensor, "*shape"]:
    """Paper A's head detection score ``S = f(l) * W * C``.

    Args:
        weight: attention weight ``W`` of the part asked for (image, or the box region).
        concentration: concentration ``C``, same shape.
        layer: the 0-based layer of the heads, or a tensor broadcastable against ``weight``
            (e.g. ``torch.arange(n_layers)[:, None]`` for ``[n_layers, n_heads]`` maps).
        layer_fn: ``f``; defaults to :func:`default_layer_fn` (ours: the paper's exact ``f``
            is unpublished).

    Example:
        >>> detection_score(torch.tensor([0.5]), torch.tensor([0.4]), 0)
        tensor([0.2000])
    """
    return layer_fn(layer) * weight * concentration


def layer_fn_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a layer function (how scans record and compare it)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
