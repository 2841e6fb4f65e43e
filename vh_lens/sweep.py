"""Cheaper condition sweeps: the unablated prefix is computed once per batch.

An intervention whose first hooked layer is ``L`` leaves layers ``< L`` unchanged. So, per
batch, one forward pass without hooks computes the residual stream before every layer some
condition starts at (``blocks.{L}.hook_resid_pre``, the images already encoded once by
:func:`vh_lens.engine.prepare`), and each condition runs only layers ``L..n_layers-1`` from it
(TransformerLens' ``start_at_layer``). The unhooked baseline continues from the deepest start.
The layers run give the same numbers as the full forward (the same operations on the same
inputs), so the results equal :func:`vh_lens.engine.run_conditions`' (tested to the last sample
on the toy model).

Cost per batch, in layer forwards: naive ``n_conditions * n_layers``; here
``n_layers + sum_c (n_layers - start_c)`` over the hooked conditions (:func:`sweep_cost`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from vh_lens.engine import LOCAL, Condition, PreparedBatch, PreparedSamples, Reducer

__all__ = ["run_conditions_shared_prefix", "sweep_cost"]


class _FromLayer:
    """The model, except that calling it on ``batch`` runs layers ``start..`` from ``resid``.

    Everything else (``hooks``, ``cfg``, ``generate``, other batches) is the model's own, so a
    reducer that does something else than one forward on ``batch`` still gets the right result.
    """

    def __init__(self, model: Any, batch: Any, resid: torch.Tensor, start: int, mask: torch.Tensor | None):
        self._model, self._batch, self._resid, self._start, self._mask = model, batch, resid, start, mask

    def __call__(self, batch: Any, **kwargs: Any) -> Any:
        if batch is not self._batch or kwargs:
            return self._model(batch, **kwargs)
        return self._model.lm(self._resid, start_at_layer=self._start, attention_mask=self._mask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _forward_batch(item: PreparedBatch) -> Any:
    """The batch a reducer's forward runs: the answer batch where there is one."""
    return item.answers.batch if item.answers is not None else item.batch


def _prefix(model: Any, batch: Any, starts: Sequence[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Residual streams before each layer of ``starts`` (one pass up to the deepest), and the mask."""
    deepest = max(starts)
    saved: dict[int, torch.Tensor] = {}

    def keep(resid: torch.Tensor, *, hook: Any) -> None:
        saved[int(hook.name.split(".")[1])] = resid.clone()

    hooks = [(f"blocks.{layer}.hook_resid_pre", keep) for layer in starts if layer != deepest]
    saved[deepest] = model.run_with_hooks(batch, fwd_hooks=hooks, stop_at_layer=deepest)
    mask = batch.attention_mask.to(model.device)
    return saved, (None if bool(mask.all()) else mask)  # as LlavaLens runs it: no mask without padding


def run_conditions_shared_prefix(
    model: Any,
    prepared: PreparedSamples | Sequence[PreparedBatch],
    conditions: Sequence[Condition],
    make_reducer: Callable[[Condition], Reducer],
    *,
    progress: bool = False,
    desc: str = "conditions",
    world: Any = None,
) -> dict[str, Reducer]:
    """:func:`vh_lens.engine.run_conditions` with each condition started at its first hooked layer.

    Batches are the outer loop (each batch's prefix computed once), conditions the inner one;
    each condition keeps its own reducer, reduced over ``world`` (default: the world ``prepared``
    was sharded for) at the end.

    Returns:
        ``{condition name: reducer}`` in the order given.
    """
    conditions = list(conditions)
    if not conditions:
        raise ValueError("run_conditions_shared_prefix: no conditions given")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be distinct, got {names}")
    n_layers = int(model.cfg.n_layers)
    starts = {c.name: min(c.start_layer, n_layers) if c.fwd_hooks else None for c in conditions}
    needed = sorted({s for s in starts.values() if s is not None and s > 0})
    reducers = {c.name: make_reducer(c) for c in conditions}
    batches = list(prepared)
    world = world if world is not None else (getattr(prepared, "world", None) or LOCAL)
    show = progress and world.rank == 0  # progress only on rank 0
    with torch.no_grad(), tqdm(total=len(batches) * len(conditions), desc=desc, unit="run", disable=not show) as bar:
        for item in batches:
            batch = _forward_batch(item)
            resids, mask = _prefix(model, batch, needed) if needed else ({}, None)
            for cond in conditions:
                start = starts[cond.name]
                if start is None and needed:  # no hooks: continue from the deepest prefix
                    start = needed[-1]
                runner = model if not start else _FromLayer(model, batch, resids[start], start, mask)
                reducer = reducers[cond.name]
                attached = model.hooks(fwd_hooks=list(cond.fwd_hooks)) if cond.fwd_hooks else nullcontext()
                with attached:
                    output = reducer.forward(runner, item, list(reducer.hooks(item)))
                reducer.update(output, item)
                bar.update(1)
            del resids
    return {name: world.reduce(r) for name, r in reducers.items()}


def sweep_cost(n_layers: int, start_layers: Sequence[int | None]) -> dict[str, float]:
    """Layer forwards per batch of a sweep: naive against the shared prefix.

    Args:
        n_layers: the model's layers.
        start_layers: per condition its first hooked layer, ``None`` for a condition without hooks.

    Returns:
        ``{"naive": ..., "shared": ..., "ratio": shared / naive}``.

    Example:
        >>> sweep_cost(4, [None, 2, 2])
        {'naive': 12.0, 'shared': 8.0, 'ratio': 0.6666666666666666}
    """
    naive = float(n_layers * len(start_layers))
    hooked = [min(s, n_layers) for s in start_layers if s is not None]
    shared = float(n_layers + sum(n_layers - s for s in hooked if s > 0) + n_layers * sum(1 for s in hooked if s == 0))
    return {"naive": naive, "shared": shared, "ratio": shared / naive if naive else 1.0}
