"""Activation patching and attribution patching over heads, image positions and image regions.

Activation patching (clean c -> corrupted r): for each layer and each site, run r with that
site's activation replaced by its value in c and record the metric; normalised effect
``(m_patched - m(r)) / (m(c) - m(r))``. One forward per (layer, site).

Attribution patching (Syed et al. 2023; Nanda 2023): one forward and one backward pass of r
give ``dm/da`` at every site; the first-order estimate of a patch is
``(a_c - a_r) . dm/da |_r``, summed over the site's positions (and ``d_head`` / ``d_model``),
normalised the same way.

Both take a :class:`~vh_lens.LlavaLens` and position-aligned clean and corrupted batches
(:func:`vh_lens.patching.check_aligned`); the metric is a function of the logits
(:class:`vh_lens.patching.AnswerMetric` or any TransformerLens-style metric).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from vh_lens.core.hooks import act_name
from vh_lens.patching.corruptions import check_aligned
from vh_lens.patching.metrics import normalise
from vh_lens.patching.result import PatchingResult
from vh_lens.patching.sites import Sites

Metric = Callable[[Tensor], Tensor]


def _layers(model: Any, layers: Sequence[int] | None) -> tuple[int, ...]:
    n = model.cfg.n_layers
    out = tuple(range(n)) if layers is None else tuple(int(l) for l in layers)
    if not out or any(not 0 <= l < n for l in out):
        raise ValueError(f"layers must be in 0..{n - 1}, got {list(out) if out else 'none'}")
    return out


def _patch_hook(act: Tensor, *, hook: Any, clean: Tensor, mask: Tensor, head: int | None) -> Tensor:
    act = act.clone()
    mask = mask.to(act.device)
    if head is None:
        act[mask] = clean[mask].to(act.dtype)
    else:
        sub = act[:, :, head]  # a view: writing it writes act
        sub[mask] = clean[:, :, head][mask].to(act.dtype)
    return act


@torch.no_grad()
def _metrics(model: Any, clean: Any, corrupt: Any, metric: Metric, names: list[str]) -> tuple[float, float, Any]:
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
    m_c = float(metric(clean_logits))
    m_r = float(metric(model(corrupt)))
    return m_c, m_r, cache


def _result(
    sites: Sites,
    method: str,
    layers: tuple[int, ...],
    effect: Tensor,
    m_c: float,
    m_r: float,
    metric: Metric,
    clean: Any,
    description: str,
) -> PatchingResult:
    lay0 = clean.layout[0]
    return PatchingResult(
        effect=effect.float().cpu(),
        grid=sites.grid,
        method=method,
        activation=sites.activation,
        layers=layers,
        labels=sites.labels,
        clean_metric=m_c,
        corrupt_metric=m_r,
        metric=getattr(metric, "name", getattr(metric, "__name__", "metric")),
        boxes=sites.boxes,
        image_size=tuple(lay0.image_size) if lay0.image_size is not None else None,
        n_samples=len(clean),
        description=description,
    )


def activation_patch(
    model: Any,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    sites: Sites,
    *,
    layers: Sequence[int] | None = None,
    description: str = "",
) -> PatchingResult:
    """Activation patching of every site at every layer (one forward each).

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        clean: the clean batch c.
        corrupt: the corrupted batch r, position-aligned with c.
        metric: ``metric(logits) -> scalar``.
        sites: what to patch (:func:`head_sites`, :func:`position_sites`, :func:`region_sites`).
        layers: the layers (default all).
        description: stored in the result.

    Returns:
        A :class:`PatchingResult` with ``method="activation"``.

    Example:
        >>> sites = position_sites(clean)  # doctest: +SKIP
        >>> result = activation_patch(model, clean, corrupt, metric, sites, layers=[0])  # doctest: +SKIP
    """
    check_aligned(clean, corrupt)
    layers = _layers(model, layers)
    names = [act_name(sites.activation, l) for l in layers]
    m_c, m_r, cache = _metrics(model, clean, corrupt, metric, names)
    normalise(m_c, m_c, m_r)  # refuse a corruption that changes nothing, before the loop
    out = torch.zeros(len(layers), len(sites.labels), dtype=torch.float64)
    with torch.no_grad():
        for i, name in enumerate(names):
            for j, (mask, head) in enumerate(zip(sites.masks, sites.heads)):
                hook = partial(_patch_hook, clean=cache[name], mask=mask, head=head)
                out[i, j] = float(metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])))
    return _result(sites, "activation", layers, normalise(out, m_c, m_r), m_c, m_r, metric, clean, description)


def attribution_patch(
    model: Any,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    sites: Sites,
    *,
    layers: Sequence[int] | None = None,
    description: str = "",
) -> PatchingResult:
    """Attribution patching: ``(a_c - a_r) . dm/da |_r`` for every site, one forward and one backward.

    Same arguments and result layout as :func:`activation_patch` (``method="attribution"``).
    The gradient flows through the fused attention path where it is on (same gradients as
    TransformerLens' attention, to float rounding).
    """
    check_aligned(clean, corrupt)
    layers = _layers(model, layers)
    names = [act_name(sites.activation, l) for l in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
        m_c = float(metric(model(clean)))
    stored: dict[str, Tensor] = {}

    def leaf(x: Tensor, *, hook: Any) -> Tensor:  # the graph starts at the embeddings
        return x.detach().requires_grad_(True)

    def keep(x: Tensor, *, hook: Any) -> Tensor:
        stored[hook.name] = x
        return x

    with torch.enable_grad():
        hooks = [("hook_embed", leaf)] + [(n, keep) for n in names]
        value = metric(model.run_with_hooks(corrupt, fwd_hooks=hooks))
        grads = torch.autograd.grad(value, [stored[n] for n in names])
    m_r = float(value.detach())
    out = torch.zeros(len(layers), len(sites.labels), dtype=torch.float64)
    for i, (name, grad) in enumerate(zip(names, grads)):
        diff = cache[name].to(grad.device).double() - stored[name].detach().double()
        contrib = (diff * grad.double()).sum(-1)  # [batch, pos] or [batch, pos, head]
        for j, (mask, head) in enumerate(zip(sites.masks, sites.heads)):
            c = contrib if head is None else contrib[:, :, head]
            out[i, j] = float(c[mask.to(c.device)].sum())
    effect = normalise(out, m_c - m_r, 0.0)  # out estimates m_patched - m(r)
    return _result(sites, "attribution", layers, effect, m_c, m_r, metric, clean, description)
