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

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from vh_lens.engine import LOCAL, Condition, PreparedBatch, PreparedSamples, Reducer

__all__ = ["run_conditions_batched", "run_conditions_shared_prefix", "sweep_cost"]


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


# --------------------------------------------------------------------------------------------
# Several conditions in one forward


def _rows_hook(act: torch.Tensor, *, hook: Any, parts: Sequence[tuple[slice, Callable[..., Any]]]) -> torch.Tensor:
    """Apply each condition's hook to its rows of the stacked batch (in place on ``act``)."""
    for rows, fn in parts:
        part = act[rows]
        out = fn(part, hook=hook)
        if out is not None and out is not part:
            act[rows] = out
    return act


def _stacked_hooks(conditions: Sequence[Condition], n_rows: int) -> list[tuple[str, Any]]:
    """One hook per hook point: condition ``c``'s hooks see rows ``c * n_rows .. (c + 1) * n_rows - 1``."""
    from functools import partial

    by_name: dict[str, list[tuple[slice, Callable[..., Any]]]] = {}
    for c, cond in enumerate(conditions):
        rows = slice(c * n_rows, (c + 1) * n_rows)
        for name, fn in cond.fwd_hooks:
            if not isinstance(name, str):
                raise ValueError(f"condition {cond.name!r}: a batched sweep needs hook names, not filters")
            by_name.setdefault(name, []).append((rows, fn))
    return [(name, partial(_rows_hook, parts=parts)) for name, parts in by_name.items()]


def _check_logit_reducer(reducer: Reducer, name: str, item: PreparedBatch) -> None:
    """A batched sweep hands each reducer its rows of one forward's logits: its forward must be that."""
    method = getattr(reducer, "method", "score")
    plain = type(reducer).forward is Reducer.forward or (hasattr(reducer, "predictions") and method == "score")
    if not plain or reducer.hooks(item):
        raise ValueError(
            f"condition {name!r}: a batched sweep needs reducers that read one forward's logits "
            "(AccuracyReducer('score')) without hooks of their own"
        )


def run_conditions_batched(
    model: Any,
    prepared: PreparedSamples | Sequence[PreparedBatch],
    conditions: Sequence[Condition],
    make_reducer: Callable[[Condition], Reducer],
    *,
    conditions_per_forward: int = 4,
    progress: bool = False,
    desc: str = "conditions",
    world: Any = None,
) -> dict[str, Reducer]:
    """:func:`run_conditions_shared_prefix`, with up to ``conditions_per_forward`` conditions per forward.

    Per batch, the unablated prefix is computed once (as there); conditions that start at the
    same layer are then run together: the residual stream before that layer is repeated once per
    condition along the batch dimension, each condition's hooks see only its own rows (per-row
    head masks), and the forward from that layer gives every condition's logits at once. The
    unhooked baseline joins the deepest group. ``conditions_per_forward`` bounds the memory:
    activations grow to ``conditions_per_forward`` times one batch's.

    The reducers must read one forward's logits (:class:`~vh_lens.evaluation.scoring.AccuracyReducer`
    with ``"score"``) and the hooks must act on each row by itself (ablations, means, scalings do).

    Returns:
        ``{condition name: reducer}`` in the order given.
    """
    if (
        isinstance(conditions_per_forward, bool)
        or not isinstance(conditions_per_forward, int)
        or conditions_per_forward < 1
    ):
        raise ValueError(f"conditions_per_forward must be a positive int, got {conditions_per_forward!r}")
    conditions = list(conditions)
    if not conditions:
        raise ValueError("run_conditions_batched: no conditions given")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be distinct, got {names}")
    n_layers = int(model.cfg.n_layers)
    starts = {c.name: min(c.start_layer, n_layers) if c.fwd_hooks else None for c in conditions}
    needed = sorted({s for s in starts.values() if s is not None and s > 0})
    deepest = needed[-1] if needed else 0
    groups: dict[int, list[Condition]] = {}
    for cond in conditions:
        start = starts[cond.name]
        groups.setdefault(deepest if start is None else start, []).append(cond)
    chunks = [
        g[i : i + conditions_per_forward]
        for _, g in sorted(groups.items())
        for i in range(0, len(g), conditions_per_forward)
    ]
    reducers = {c.name: make_reducer(c) for c in conditions}
    batches = list(prepared)
    world = world if world is not None else (getattr(prepared, "world", None) or LOCAL)
    show = progress and world.rank == 0
    with torch.no_grad(), tqdm(total=len(batches) * len(chunks), desc=desc, unit="forward", disable=not show) as bar:
        for item in batches:
            for cond in conditions:
                _check_logit_reducer(reducers[cond.name], cond.name, item)
            batch = _forward_batch(item)
            resids, mask = _prefix(model, batch, needed) if needed else ({}, None)
            n = len(item)
            for chunk in chunks:
                start = starts[chunk[0].name]
                start = deepest if start is None else start
                hooks = _stacked_hooks(chunk, n)
                with model.hooks(fwd_hooks=hooks) if hooks else nullcontext():
                    if start:
                        resid = resids[start].repeat(len(chunk), *([1] * (resids[start].dim() - 1)))
                        stacked_mask = None if mask is None else mask.repeat(len(chunk), 1)
                        logits = model.lm(resid, start_at_layer=start, attention_mask=stacked_mask)
                    else:
                        logits = model(_repeat_batch(batch, len(chunk)))
                for c, cond in enumerate(chunk):
                    reducers[cond.name].update(logits[c * n : (c + 1) * n], item)
                bar.update(1)
            del resids
    return {name: world.reduce(r) for name, r in reducers.items()}


def _repeat_batch(batch: Any, times: int) -> Any:
    """``batch`` stacked ``times`` times along the batch dimension (a condition that starts at layer 0)."""
    if times == 1:
        return batch
    from vh_lens.core.model import LlavaBatch

    if not isinstance(batch, LlavaBatch):
        raise ValueError(f"cannot stack a {type(batch).__name__} for a batched sweep")
    return LlavaBatch(
        input_ids=batch.input_ids.repeat(times, 1),
        attention_mask=batch.attention_mask.repeat(times, 1),
        embeds=batch.embeds.repeat(times, 1, 1),
        layout=list(batch.layout) * times,
        pixel_values=list(batch.pixel_values) * times,
        prompts=list(batch.prompts) * times,
    )
