"""The engine every experiment runs on: prepare samples once, run them in batches under hook conditions.

Three pieces:

- :func:`prepare` / :func:`iter_batches`: samples become :class:`PreparedBatch` objects
  (tokenised, images encoded, with the candidate answers to score when asked); :func:`prepare`
  keeps them all, offloaded to the CPU, for experiments that reuse them many times (masking,
  interventions), :func:`iter_batches` streams them (a scan over a large data set).
- :class:`Condition`: a named set of forward hooks (an ablation, a steering, nothing). A
  condition may declare its first hooked layer (:attr:`Condition.first_layer`), so a later
  sweep can start at it.
- a :class:`Reducer`: what a run computes. The condition's hooks are attached for the whole
  run (``model.hooks``; with each batch for models without it). Per batch, the engine asks the
  reducer for the hooks that read activations (:meth:`Reducer.hooks`, attached after the
  condition's), runs the forward pass and hands the output to :meth:`Reducer.update`.
  :meth:`Reducer.result` gives the result; :meth:`Reducer.state_dict` /
  :meth:`Reducer.load_state_dict` resume a run; :meth:`Reducer.merge` folds the reducer of the
  following samples into this one (data-parallel runs merge the ranks' reducers in rank order,
  so the result equals a run over all samples in one process).

:func:`run` runs one condition; :func:`run_conditions` runs several over the same prepared
batches, one fresh reducer each.

Data parallelism plugs in through a :class:`World` (``world=``): it decides which samples this
process prepares (:meth:`World.shard`) and combines the processes' reducers
(:meth:`World.reduce`). :data:`LOCAL` (one process, all samples) is the default;
:mod:`vh_lens.distributed` provides the ``torch.distributed`` one.

Example:
    >>> prepared = prepare(model, samples, batch_size=8, answers="score")  # doctest: +SKIP
    >>> conditions = [Condition("baseline"), Condition("ablate", tuple(ablate_heads([(3, 1)])))]  # doctest: +SKIP
    >>> out = run_conditions(model, prepared, conditions, lambda c: AccuracyReducer("score"))  # doctest: +SKIP
    >>> out["ablate"].result().accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from vh_lens.core.hooks import FwdHook
from vh_lens.engine_types import (
    BASELINE,
    LOCAL,
    Condition,
    LocalWorld,
    PreparedBatch,
    PreparedSamples,
    Reducer,
    World,
)

__all__ = [
    "BASELINE",
    "LOCAL",
    "Condition",
    "LocalWorld",
    "PreparedBatch",
    "PreparedSamples",
    "Reducer",
    "World",
    "iter_batches",
    "offload",
    "prepare",
    "run",
    "run_conditions",
]

ANSWER_METHODS = ("score", "generate")


# --------------------------------------------------------------------------------------------
# Prepared batches


def offload(batch: Any) -> Any:
    """A copy of a :class:`~vh_lens.LlavaBatch` holding only what a forward pass needs, on the CPU.

    Pixel values are dropped (the image features are already in ``embeds``); other batch types
    are moved with ``.to("cpu")`` when they can be.
    """
    from vh_lens.core.model import LlavaBatch

    if not isinstance(batch, LlavaBatch):
        return batch.to("cpu") if hasattr(batch, "to") else batch
    return LlavaBatch(
        input_ids=batch.input_ids.cpu(),
        attention_mask=batch.attention_mask.cpu(),
        embeds=batch.embeds.detach().cpu(),
        layout=batch.layout,
        pixel_values=[None] * len(batch),
        prompts=batch.prompts,
    )


def _offload_prepared(item: PreparedBatch) -> PreparedBatch:
    slim = offload(item.batch)
    answers = item.answers
    if answers is not None:
        answers = replace(answers, batch=slim)
    return PreparedBatch(item.start, item.samples, slim, answers)


Preparer = Callable[[Any, Sequence[Any], int], PreparedBatch]
"""``preparer(model, samples, start) -> PreparedBatch``: how one chunk of samples is prepared."""


def _default_preparer(answers: str | None, format_question: Callable[[Any], str] | None) -> Preparer:
    if answers is not None and answers not in ANSWER_METHODS:
        raise ValueError(f"answers must be None or one of {ANSWER_METHODS}, got {answers!r}")

    def preparer(model: Any, chunk: Sequence[Any], start: int) -> PreparedBatch:
        if answers is not None:
            from vh_lens.evaluation.scoring import prepare_answer_batch

            ab = prepare_answer_batch(model, chunk, method=answers, format_question=format_question, offset=start)  # type: ignore[arg-type]
            return PreparedBatch(start, tuple(chunk), ab.batch, ab)
        if format_question is None:
            return PreparedBatch(start, tuple(chunk), model.prepare_samples(list(chunk)))
        return PreparedBatch(start, tuple(chunk), model.prepare_samples(list(chunk), format_question=format_question))

    return preparer


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def iter_batches(
    model: Any,
    samples: Iterable[Any],
    *,
    batch_size: int = 8,
    answers: str | None = None,
    format_question: Callable[[Any], str] | None = None,
    preparer: Preparer | None = None,
    skip: int = 0,
    offset: int = 0,
    world: World | None = None,
) -> Iterator[PreparedBatch]:
    """Prepare ``samples`` lazily, ``batch_size`` at a time (for streaming runs).

    Args:
        model: a :class:`~vh_lens.LlavaLens` (or anything with ``prepare_samples``).
        samples: a sequence or any iterable of samples.
        batch_size: samples per batch.
        answers: ``"score"`` / ``"generate"``: also prepare the candidate answers
            (:func:`vh_lens.evaluation.scoring.prepare_answer_batch`); ``None``: only the prompts.
        format_question: how a sample becomes the user turn (default: the model's own).
        preparer: prepare each chunk yourself (``preparer(model, samples, start)``); replaces
            ``answers`` and ``format_question``.
        skip: samples to skip first (a resumed run); they are consumed, not prepared.
        offset: index in the whole data set of the first sample of ``samples`` (when the caller
            has consumed some already); batches' :attr:`PreparedBatch.start` count from it.
        world: prepare only this process's shard (:meth:`World.shard`) of ``samples`` (then the
            whole data set: ``offset`` must be 0, ``skip`` counts within the shard); :func:`run`
            reduces over it. Default :func:`vh_lens.distributed.current_world`: this rank's shard
            under ``torchrun``, else all samples, streamed.

    Returns:
        An iterator of :class:`PreparedBatch`, with the ``world`` it was sharded for.
    """
    _check_batch_size(batch_size)
    if preparer is None:
        preparer = _default_preparer(answers, format_question)
    if world is None:
        from vh_lens.distributed import current_world

        world = current_world()
    if world.size > 1:
        if offset:
            raise ValueError(
                "iter_batches: offset must be 0 when sharding over a world (samples are the whole data set)"
            )
        samples = samples if isinstance(samples, Sequence) else list(samples)
        mine = world.shard(len(samples))
        samples, offset = _take(samples, mine), mine.start
    return _Batches(_stream(model, samples, batch_size, preparer, skip, offset), world)


def _take(samples: Sequence[Any], indices: range) -> Iterator[Any]:
    return (samples[i] for i in indices)


class _Batches(Iterator[PreparedBatch]):
    """The batches :func:`iter_batches` streams, with the world they were sharded for."""

    def __init__(self, it: Iterator[PreparedBatch], world: World) -> None:
        self._it, self.world = it, world

    def __next__(self) -> PreparedBatch:
        return next(self._it)


def _stream(model: Any, samples: Iterable[Any], batch_size: int, preparer: Preparer, skip: int,
            offset: int) -> Iterator[PreparedBatch]:  # fmt: skip
    it = iter(samples)
    for _ in itertools.islice(it, skip):
        pass
    start = offset + skip
    while chunk := list(itertools.islice(it, batch_size)):
        yield preparer(model, chunk, start)
        start += len(chunk)


def prepare(
    model: Any,
    samples: Sequence[Any],
    *,
    batch_size: int = 8,
    answers: str | None = None,
    format_question: Callable[[Any], str] | None = None,
    preparer: Preparer | None = None,
    offload_to_cpu: bool = True,
    world: World | None = None,
) -> PreparedSamples:
    """Prepare ``samples`` once (tokenise, encode images, offload) for many runs.

    Args:
        model, batch_size, answers, format_question, preparer: as :func:`iter_batches`.
        samples: the samples (a sequence: its length is needed to shard it).
        offload_to_cpu: keep only what a forward pass needs, on the CPU (:func:`offload`).
        world: which samples this process prepares (:meth:`World.shard`); default
            :func:`vh_lens.distributed.current_world`: this rank's shard under ``torchrun``, else all.

    Raises:
        ValueError: no samples, a bad batch size, or what preparing a sample raises.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("prepare: no samples given")
    _check_batch_size(batch_size)
    if world is None:
        from vh_lens.distributed import current_world

        world = current_world()
    shard = world.shard(len(samples))
    if preparer is None:
        preparer = _default_preparer(answers, format_question)
    batches = []
    for first in range(shard.start, shard.stop, batch_size):
        chunk = samples[first : min(first + batch_size, shard.stop)]
        item = preparer(model, chunk, first)
        batches.append(_offload_prepared(item) if offload_to_cpu else item)
    return PreparedSamples(tuple(batches), len(samples), answers, world)


# --------------------------------------------------------------------------------------------
# Running


def _move(item: PreparedBatch, device: torch.device | str | None) -> PreparedBatch:
    if device is None:
        return item
    answers = item.answers
    moved = item.batch.to(device)
    if answers is not None:
        answers = replace(answers, batch=moved)
    return PreparedBatch(item.start, item.samples, moved, answers)


def run(
    model: Any,
    batches: Iterable[PreparedBatch],
    reducer: Reducer,
    *,
    condition: Condition | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "run",
    total: int | None = None,
    on_batch: Callable[[PreparedBatch, Reducer], None] | None = None,
    world: World | None = None,
    grad: bool = False,
) -> Reducer:
    """Run every batch under ``condition`` and fold it into ``reducer``.

    Args:
        model: a :class:`~vh_lens.LlavaLens` (``run_with_hooks``; what the reducer's forward uses).
        batches: :class:`PreparedSamples` or any iterable of :class:`PreparedBatch` (streamed).
        reducer: the :class:`Reducer` (updated in place, and returned).
        condition: the hooks to run under (default: none).
        device: move each batch there first (``batch.to(device)``).
        progress: a tqdm bar over batches (``total`` batches, if known).
        desc: the bar's label.
        on_batch: called after each batch's update, e.g. to write a checkpoint.
        world: combine the processes' reducers at the end (:meth:`World.reduce`); default: the
            world ``batches`` were prepared for (:attr:`PreparedSamples.world`), else one process.
        grad: keep autograd on (default: ``torch.no_grad``).

    Returns:
        ``reducer`` (or, with a ``world``, what :meth:`World.reduce` returns).
    """
    condition = BASELINE if condition is None else condition
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    context = torch.enable_grad() if grad else torch.no_grad()
    # The condition's hooks are attached once for the whole run (``model.hooks``, removed at the
    # end, also on error) where the model allows it; else they go with each batch.
    whole_run = hasattr(model, "hooks")
    per_batch = [] if whole_run else list(condition.fwd_hooks)
    attached = model.hooks(fwd_hooks=list(condition.fwd_hooks)) if whole_run else contextlib.nullcontext()
    with context, attached, tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=False) as bar:
        for item in batches:
            item = _move(item, device)
            hooks = per_batch + list(reducer.hooks(item))
            output = reducer.forward(model, item, hooks)
            reducer.update(output, item)
            if on_batch is not None:
                on_batch(item, reducer)
            bar.update(1)
    if world is None:
        world = getattr(batches, "world", None) or LOCAL
    return world.reduce(reducer)


def run_conditions(
    model: Any,
    prepared: PreparedSamples | Sequence[PreparedBatch],
    conditions: Sequence[Condition] | Mapping[str, Sequence[FwdHook]],
    make_reducer: Callable[[Condition], Reducer],
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "conditions",
    world: World | None = None,
    on_condition: Callable[[Condition, Reducer], None] | None = None,
) -> dict[str, Reducer]:
    """Run the same prepared batches under each condition, one fresh reducer each.

    Args:
        prepared: batches prepared once (:func:`prepare`).
        conditions: :class:`Condition` objects, or ``{name: fwd_hooks}``.
        make_reducer: a fresh reducer for a condition.
        progress: a tqdm bar over the conditions.
        on_condition: called after each condition with its (reduced) reducer.

    Returns:
        ``{condition name: reducer}`` in the order given.

    Raises:
        ValueError: no conditions, or two with the same name.
    """
    if isinstance(conditions, Mapping):
        conditions = [Condition(name, tuple(hooks)) for name, hooks in conditions.items()]
    conditions = list(conditions)
    if not conditions:
        raise ValueError("run_conditions: no conditions given")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be distinct, got {names}")
    out: dict[str, Reducer] = {}
    with tqdm(total=len(conditions), desc=desc, unit="condition", disable=not progress) as bar:
        for cond in conditions:
            bar.set_postfix_str(cond.name)
            reducer = run(model, prepared, make_reducer(cond), condition=cond, device=device, world=world)
            out[cond.name] = reducer
            if on_condition is not None:
                on_condition(cond, reducer)
            bar.update(1)
    return out
