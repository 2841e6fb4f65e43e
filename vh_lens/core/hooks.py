"""Shared hook vocabulary: the head type, TransformerLens' hook types, activation names, random heads.

The one definition of each; every other module imports them from here.

- :data:`Head`: an attention head as ``(layer, head)``, both 0-based (``head`` indexes query
  heads, also for grouped-query attention).
- :data:`HookFunction`: TransformerLens' hook protocol (``fn(tensor, *, hook) -> Tensor | None``).
- :data:`FwdHook` / :data:`FwdHooks`: one / a list of ``(name or filter, fn)`` for
  ``run_with_hooks(fwd_hooks=...)``.
- :func:`act_name`: TransformerLens' ``get_act_name`` from its non-deprecated module.
- :func:`random_heads`: the seeded random control of paper A's masking and paper B's
  interventions.
- :func:`first_hooked_layer`: the lowest layer a hook list touches.
- :func:`query_positions`: the position each sample is read at (its answer query by default).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformer_lens.hook_points import HookFunction
from transformer_lens.utilities import get_act_name

__all__ = [
    "FwdHook",
    "FwdHooks",
    "Head",
    "HookFunction",
    "act_name",
    "first_hooked_layer",
    "query_positions",
    "random_heads",
]

Head = tuple[int, int]
"""An attention head as ``(layer, head)``, both 0-based."""

FwdHook = tuple["str | Callable[[str], bool]", HookFunction]
"""One forward hook: ``(hook name or name filter, hook function)``."""

FwdHooks = list[FwdHook]
"""Hooks for ``run_with_hooks(fwd_hooks=...)`` / ``model.hooks(fwd_hooks=...)``."""


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of an activation, e.g. ``act_name("pattern", 3)`` -> ``"blocks.3.attn.hook_pattern"``.

    TransformerLens' ``get_act_name`` (from ``transformer_lens.utilities``, not the deprecated
    ``transformer_lens.utils``).
    """
    return get_act_name(name, layer, layer_type)


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def first_hooked_layer(hooks: Iterable[FwdHook]) -> int | None:
    """The lowest ``l`` of the ``blocks.{l}.`` hook names in ``hooks``.

    ``None`` when no hook is named after a block (no hooks, or only hooks before the first
    block such as ``hook_embed``, or name filters): a run must then start at layer 0.
    """
    layers = []
    for name, _ in hooks:
        if not isinstance(name, str):
            return None
        match = _BLOCK.match(name)
        if match is None:
            return None
        layers.append(int(match.group(1)))
    return min(layers) if layers else None


def random_heads(
    n_layers: int,
    n_heads: int,
    k: int,
    exclude: Iterable[Head] = (),
    seed: int = 0,
    *,
    layers: Sequence[int] | range | None = None,
    sort: bool = False,
    where: str | None = None,
) -> list[Head]:
    """``k`` distinct heads drawn uniformly from the eligible ones: the random control.

    The eligible heads are those of ``layers`` (default: all), layer-major (layer, then head),
    minus ``exclude``. The draw is the first ``k`` entries of ``torch.randperm`` of the
    eligible list under ``torch.Generator().manual_seed(seed)``, so it depends only on the seed,
    the model's shape, ``layers`` and ``exclude``.

    Args:
        n_layers: layers of the model.
        n_heads: (query) heads per layer.
        k: heads to draw (``0`` gives ``[]``).
        exclude: heads never drawn (e.g. the top heads under test).
        seed: seed of the draw.
        layers: restrict the draw to these layers (e.g. a stage's layers).
        sort: return the heads sorted by layer, then head (paper A's masking); ``False``: in
            the order drawn (paper B's interventions).
        where: how to name the pool in the error message.

    Raises:
        ValueError: ``k`` is not a non-negative int, a layer is out of range, or fewer than ``k``
            heads are eligible.

    Example:
        >>> random_heads(2, 4, 2, exclude=[(0, 0), (1, 3)], seed=0)
        [(0, 3), (1, 2)]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    chosen_layers = range(n_layers) if layers is None else list(layers)
    bad = [layer for layer in chosen_layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {n_layers}-layer model")
    taken = {(int(layer), int(head)) for layer, head in exclude}
    pool = [(layer, head) for layer in chosen_layers for head in range(n_heads) if (layer, head) not in taken]
    if len(pool) < k:
        at = f" ({where})" if where else ""
        raise ValueError(f"cannot draw {k} random heads: only {len(pool)} heads are not excluded{at}")
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(seed)))[:k].tolist()
    drawn = [pool[i] for i in perm]
    return sorted(drawn) if sort else drawn


def query_positions(
    layouts: Sequence[Any], positions: Sequence[int] | Tensor | None = None, seq_len: int | None = None
) -> Tensor:
    """``[batch]`` long tensor of the position to read in each sample.

    Args:
        layouts: one :class:`~vh_lens.core.layout.TokenLayout` per sample.
        positions: one position per sample; ``None``: each layout's ``query_position`` (the
            last prompt position, which predicts the first answer token).
        seq_len: if given, positions must lie in ``[-seq_len, seq_len)`` and negative ones
            count from the end (returned in ``[0, seq_len)``).

    Raises:
        ValueError: not one position per sample, or a position out of range.
    """
    n = len(layouts)
    if positions is None:
        pos = torch.tensor([int(lay.query_position) for lay in layouts], dtype=torch.long)
    else:
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if pos.shape != (n,):
        raise ValueError(f"need one position per sample ({n}), got {pos.tolist()}")
    if seq_len is not None:
        if n and (int(pos.min()) < -seq_len or int(pos.max()) >= seq_len):
            raise ValueError(f"positions {pos.tolist()} out of range for {seq_len} positions")
        pos = pos % seq_len
    return pos
