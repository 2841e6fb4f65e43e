"""Head interventions as TransformerLens hooks: ablate, scale or shift attention heads.

Every factory returns ``list[tuple[str, HookFunction]]``, one hook per touched layer, that slots into
``model.run_with_hooks(batch, fwd_hooks=...)`` or ``model.hooks(fwd_hooks=...)`` next to the
user's own hooks. The hooks never edit the activation in place (a caching hook that ran first
keeps what it saw) and live only for one run: TransformerLens removes them afterwards, also when
the run raises.

Heads are ``(layer, head)`` pairs, 0-based. ``head`` indexes the *query* heads, also for
grouped-query attention (TransformerLens repeats keys and values, so ``hook_z`` and
``hook_attn_scores`` have ``n_heads`` heads).

Where the hooks act (``z`` is a head's output before ``W_O``, TransformerLens ``hook_z``):

- :func:`ablate_heads` ``"zero"``: ``z = 0``; ``"mean"``: ``z = mean`` over a reference set
  (:func:`head_means`); ``"uniform"`` (paper A's method): the head's pre-softmax scores
  (``hook_attn_scores``) are set to 0 at every allowed key, so its attention is uniform over the
  positions the causal and padding masks allow.
- :func:`scale_heads`: ``z = alpha * z`` (alpha 0 is zero ablation; a tiny alpha is paper B's
  removal by "a tiny factor").
- :func:`shift_heads`: ``z = z + alpha * sigma * u`` (paper B's emphasis).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from vh_lens.analysis.head_means import HeadMeans, HeadMeansReducer, head_means
from vh_lens.core.hooks import Head, HookFunction, act_name

__all__ = [
    "Head",
    "HeadMeans",
    "HeadMeansReducer",
    "Hooks",
    "ablate_heads",
    "head_means",
    "query_position_mask",
    "scale_heads",
    "shift_heads",
]

Hooks = list[tuple[str, HookFunction]]
"""Hooks for ``run_with_hooks(fwd_hooks=...)``."""

Positions = Sequence[int] | Tensor | None
"""Where to intervene: ``None`` (every position), positions shared by all samples (ints,
negative ones count from the end) or a boolean mask ``[pos]`` or ``[batch, pos]``."""

AblationMethod = Literal["zero", "mean", "uniform"]
_METHODS = ("zero", "mean", "uniform")


# --------------------------------------------------------------------------------------------
# Head lists and positions


@dataclass(frozen=True, eq=False)
class _LayerHeads:
    """The heads of one layer: their indices and their places in the user's head list."""

    layer: int
    heads: Int[Tensor, " k"]
    order: Int[Tensor, " k"]


def _group_heads(heads: Iterable[Head], cfg: Any | None) -> list[_LayerHeads]:
    """Validate ``heads`` and group them by layer (layers ascending).

    Raises:
        ValueError: a malformed or repeated head, or one outside ``cfg``'s layers and heads.
    """
    by_layer: dict[int, list[tuple[int, int]]] = {}
    seen: set[tuple[int, int]] = set()
    n_layers = getattr(cfg, "n_layers", None) if cfg is not None else None
    n_heads = getattr(cfg, "n_heads", None) if cfg is not None else None
    for i, item in enumerate(heads):
        try:
            layer, head = (operator.index(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"heads[{i}] = {item!r} is not a (layer, head) pair of ints") from None
        if layer < 0 or head < 0:
            raise ValueError(f"head {(layer, head)} has a negative index")
        if n_layers is not None and layer >= n_layers:
            raise ValueError(f"head {(layer, head)}: layer {layer} out of range, the model has {n_layers} layers")
        if n_heads is not None and head >= n_heads:
            raise ValueError(f"head {(layer, head)}: head {head} out of range, the model has {n_heads} heads")
        if (layer, head) in seen:
            raise ValueError(f"head {(layer, head)} is given more than once")
        seen.add((layer, head))
        by_layer.setdefault(layer, []).append((head, i))
    if not seen:
        raise ValueError("no heads given")
    return [
        _LayerHeads(
            layer=layer,
            heads=torch.tensor([h for h, _ in items], dtype=torch.long),
            order=torch.tensor([i for _, i in items], dtype=torch.long),
        )
        for layer, items in sorted(by_layer.items())
    ]


def _check_heads_fit(heads: Tensor, n_heads: int, hook: HookPoint) -> None:
    if int(heads.max()) >= n_heads:
        bad = int(heads.max())
        raise ValueError(f"head ({hook.layer()}, {bad}) out of range: {hook.name} has {n_heads} heads")


def _as_positions(positions: Positions) -> Tensor | None:
    """Normalise ``positions`` at hook-factory time (long indices or a boolean mask)."""
    if positions is None:
        return None
    if isinstance(positions, Tensor):
        if positions.dtype == torch.bool:
            if positions.ndim not in (1, 2):
                raise ValueError(f"a positions mask must be [pos] or [batch, pos], got shape {tuple(positions.shape)}")
            return positions.detach()
        if positions.is_floating_point() or positions.is_complex():
            raise ValueError(f"positions must be integer indices or a boolean mask, got dtype {positions.dtype}")
        if positions.ndim != 1:
            raise ValueError(f"position indices must be 1-D, got shape {tuple(positions.shape)}")
        return positions.detach().long()
    try:
        return torch.tensor([operator.index(p) for p in positions], dtype=torch.long)
    except TypeError:
        raise ValueError(f"positions must be ints, a tensor or None, got {positions!r}") from None


def _position_mask(
    positions: Tensor | None, batch: int, seq: int, device: torch.device
) -> Bool[Tensor, "batch seq"] | None:
    """``[batch, seq]`` mask of the positions to edit, or ``None`` for all of them."""
    if positions is None:
        return None
    if positions.dtype == torch.bool:
        if positions.shape[-1] != seq or (positions.ndim == 2 and positions.shape[0] != batch):
            raise ValueError(
                f"positions mask of shape {tuple(positions.shape)} does not fit an activation with "
                f"batch {batch} and {seq} positions"
            )
        return positions.to(device).expand(batch, seq)
    if positions.numel() and (int(positions.min()) < -seq or int(positions.max()) >= seq):
        raise ValueError(f"positions {positions.tolist()} out of range for {seq} positions")
    mask = torch.zeros(seq, dtype=torch.bool, device=device)
    mask[positions.to(device) % seq] = True
    return mask.expand(batch, seq)


def query_position_mask(layouts: Sequence[Any]) -> Bool[Tensor, "batch seq"]:
    """``[batch, seq_len]`` mask of each sample's answer query position, for ``positions=``.

    Args:
        layouts: one :class:`vh_lens.core.layout.TokenLayout` per sample (``batch.layout``).

    Example:
        >>> hooks = scale_heads([(3, 1)], 0.0, positions=query_position_mask(batch.layout))  # doctest: +SKIP
    """
    if not layouts:
        raise ValueError("no layouts given")
    seq = {int(lay.seq_len) for lay in layouts}
    if len(seq) != 1:
        raise ValueError(f"layouts of one batch must share seq_len, got {sorted(seq)}")
    mask = torch.zeros(len(layouts), seq.pop(), dtype=torch.bool)
    mask[torch.arange(len(layouts)), torch.tensor([int(lay.query_position) for lay in layouts])] = True
    return mask


# --------------------------------------------------------------------------------------------
# The two generic hooks


def _edit_z_hook(
    z: Float[Tensor, "batch pos head_index d_head"],
    *,
    hook: HookPoint,
    heads: Int[Tensor, " k"],
    scale: Float[Tensor, " k"] | None,
    shift: Float[Tensor, "k d_head"] | None,
    positions: Tensor | None,
) -> Float[Tensor, "batch pos head_index d_head"]:
    """``z[..., heads, :] = scale * z + shift`` (``scale=None``: replace by ``shift``), out of place."""
    batch, seq, n_heads, d_head = z.shape
    _check_heads_fit(heads, n_heads, hook)
    idx = heads.to(z.device)
    offset = torch.zeros(n_heads, d_head, dtype=z.dtype, device=z.device)
    if shift is not None:
        offset = offset.index_copy(0, idx, shift.to(device=z.device, dtype=z.dtype))
    if scale is None:
        edited = offset.expand_as(z)
    else:
        factor = torch.ones(n_heads, dtype=z.dtype, device=z.device).index_copy(
            0, idx, scale.to(device=z.device, dtype=z.dtype)
        )
        edited = z * factor[:, None] + offset
    selected = torch.zeros(n_heads, dtype=torch.bool, device=z.device).index_fill(0, idx, True)
    where = selected[None, None, :, None]
    rows = _position_mask(positions, batch, seq, z.device)
    if rows is not None:
        where = where & rows[:, :, None, None]
    return torch.where(where, edited, z)


def _uniform_scores_hook(
    scores: Float[Tensor, "batch head_index query_pos key_pos"],
    *,
    hook: HookPoint,
    heads: Int[Tensor, " k"],
    positions: Tensor | None,
) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """Set the heads' scores to 0 at allowed keys; masked keys stay masked.

    TransformerLens applies the causal mask and the padding mask together
    (``AbstractAttention.apply_causal_mask``) by writing ``IGNORE = -inf`` before
    ``hook_attn_scores``, so a key is masked exactly when its score is ``-inf``. Scores at or
    below the dtype's minimum (Hugging Face's additive mask value) count as masked as well.
    A padding query row is fully masked, stays so, and TransformerLens turns its NaN softmax
    into zeros, as without the hook.
    """
    batch, n_heads, n_query, _ = scores.shape
    _check_heads_fit(heads, n_heads, hook)
    selected = torch.zeros(n_heads, dtype=torch.bool, device=scores.device).index_fill(0, heads.to(scores.device), True)
    where = selected[None, :, None, None]
    rows = _position_mask(positions, batch, n_query, scores.device)
    if rows is not None:
        where = where & rows[:, None, :, None]
    allowed = scores > torch.finfo(scores.dtype).min
    return torch.where(where & allowed, torch.zeros((), dtype=scores.dtype, device=scores.device), scores)


def _per_head(value: float | Sequence[float] | Tensor, n: int, name: str) -> Float[Tensor, " n"]:
    out = torch.as_tensor(value, dtype=torch.float32)
    if out.ndim == 0:
        return out.expand(n).clone()
    if out.shape != (n,):
        raise ValueError(f"{name} must be a number or one value per head ({n}), got shape {tuple(out.shape)}")
    return out


def _z_hooks(
    groups: list[_LayerHeads],
    scale: Float[Tensor, " n"] | None,
    shift: Callable[[_LayerHeads], Tensor] | None,
    positions: Positions,
) -> Hooks:
    pos = _as_positions(positions)
    return [
        (
            act_name("z", g.layer),
            partial(
                _edit_z_hook,
                heads=g.heads,
                scale=None if scale is None else scale[g.order],
                shift=None if shift is None else shift(g),
                positions=pos,
            ),
        )
        for g in groups
    ]


# --------------------------------------------------------------------------------------------
# Public hook factories


def ablate_heads(
    heads: Iterable[Head],
    method: AblationMethod = "zero",
    means: HeadMeans | Float[Tensor, "n_layers n_heads d_head"] | None = None,
    positions: Positions = None,
    cfg: Any | None = None,
) -> Hooks:
    """Hooks that remove heads, for ``run_with_hooks``.

    Args:
        heads: ``[(layer, head), ...]``.
        method: ``"zero"`` sets the head's ``hook_z`` to 0; ``"mean"`` replaces it with
            ``means[layer, head]``; ``"uniform"`` sets the head's pre-softmax scores
            (``hook_attn_scores``) to 0 at every key the causal and padding masks allow (masked
            keys stay ``-inf``), so the head attends uniformly to all allowed positions.
        means: a :class:`HeadMeans` or a ``[n_layers, n_heads, d_head]`` tensor; needed for
            ``"mean"``.
        positions: where to intervene (query positions for ``"uniform"``): ``None`` for all,
            ints shared by every sample, or a boolean mask ``[pos]`` / ``[batch, pos]``
            (e.g. :func:`query_position_mask`).
        cfg: a config with ``n_layers`` and ``n_heads`` (``model.cfg``) to validate ``heads``
            against; without it a bad head index raises when the hook runs.

    Returns:
        One ``(hook_name, hook_fn)`` per touched layer.

    Raises:
        ValueError: an unknown method, missing or misshapen means, or a bad head.

    Example:
        >>> hooks = ablate_heads([(3, 1), (3, 7), (9, 0)], "mean", means=means, cfg=model.cfg)  # doctest: +SKIP
        >>> logits = model.run_with_hooks(batch, fwd_hooks=hooks + my_hooks)  # doctest: +SKIP
    """
    if method not in _METHODS:
        raise ValueError(f"unknown ablation method {method!r}; expected one of {_METHODS}")
    groups = _group_heads(heads, cfg)
    if method == "uniform":
        if means is not None:
            raise ValueError("means is only used by method='mean'")
        pos = _as_positions(positions)
        return [
            (act_name("attn_scores", g.layer), partial(_uniform_scores_hook, heads=g.heads, positions=pos))
            for g in groups
        ]
    if method == "zero":
        if means is not None:
            raise ValueError("means is only used by method='mean'")
        return _z_hooks(groups, scale=None, shift=None, positions=positions)
    if means is None:
        raise ValueError("method='mean' needs means (see head_means)")
    table = means.mean if isinstance(means, HeadMeans) else torch.as_tensor(means)
    if table.ndim != 3:
        raise ValueError(f"means must be [n_layers, n_heads, d_head], got shape {tuple(table.shape)}")
    for g in groups:
        if g.layer >= table.shape[0] or int(g.heads.max()) >= table.shape[1]:
            bad = (g.layer, int(g.heads.max()))
            raise ValueError(f"head {bad} has no mean: means has shape {tuple(table.shape)}")
    return _z_hooks(groups, scale=None, shift=lambda g: table[g.layer, g.heads].detach(), positions=positions)


def scale_heads(
    heads: Iterable[Head],
    alpha: float | Sequence[float] | Tensor,
    positions: Positions = None,
    cfg: Any | None = None,
) -> Hooks:
    """Hooks that multiply heads' outputs (``hook_z``) by ``alpha``.

    ``alpha = 0`` is zero ablation, ``1`` changes nothing, a tiny ``alpha`` (e.g. ``1e-5``) is
    paper B's removal "by a tiny factor", ``alpha > 1`` amplifies.

    Args:
        heads: ``[(layer, head), ...]``.
        alpha: one factor, or one per head (in the order of ``heads``).
        positions: where to intervene; see :func:`ablate_heads`.
        cfg: config to validate ``heads`` against (``model.cfg``).

    Example:
        >>> logits = model.run_with_hooks(batch, fwd_hooks=scale_heads([(5, 2)], 2.0))  # doctest: +SKIP
    """
    heads = list(heads)
    groups = _group_heads(heads, cfg)
    return _z_hooks(groups, scale=_per_head(alpha, len(heads), "alpha"), shift=None, positions=positions)


def shift_heads(
    heads: Iterable[Head],
    directions: Float[Tensor, "n d_head"],
    alpha: float = 5.0,
    sigma: float | Sequence[float] | Tensor = 1.0,
    positions: Positions = None,
    cfg: Any | None = None,
    normalize: bool = True,
) -> Hooks:
    """Hooks that add ``alpha * sigma * u`` to heads' outputs (``hook_z``): paper B's emphasis.

    Args:
        heads: ``[(layer, head), ...]``, ``n`` heads.
        directions: ``[n, d_head]``, the direction ``u`` of each head, in the order of ``heads``
            (paper B: the difference of mean activations on correct and incorrect answers).
        alpha: strength, in units of ``sigma`` (paper B: 5).
        sigma: the spread of the head's activations along ``u``; one number or one per head.
        positions: where to intervene; see :func:`ablate_heads`.
        cfg: config to validate ``heads`` against (``model.cfg``).
        normalize: scale each direction to unit norm first (a zero direction raises).

    Example:
        >>> hooks = shift_heads([(7, 3)], u[None], alpha=5.0, sigma=0.8)  # doctest: +SKIP
    """
    heads = list(heads)
    groups = _group_heads(heads, cfg)
    u = torch.as_tensor(directions).detach().float()
    if u.ndim != 2 or u.shape[0] != len(heads):
        raise ValueError(f"directions must be [n_heads_given={len(heads)}, d_head], got shape {tuple(u.shape)}")
    if cfg is not None and getattr(cfg, "d_head", u.shape[1]) != u.shape[1]:
        raise ValueError(f"directions have d_head {u.shape[1]}, the model has {cfg.d_head}")
    if normalize:
        norm = u.norm(dim=-1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("a direction is zero and cannot be normalised")
        u = u / norm
    step = float(alpha) * _per_head(sigma, len(heads), "sigma")[:, None] * u
    return _z_hooks(groups, scale=torch.ones(len(heads)), shift=lambda g: step[g.order], positions=positions)
