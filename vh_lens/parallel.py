"""The analyses split across the ranks of a ``torchrun`` launch (:mod:`vh_lens.distributed`).

Each entry point runs this rank's contiguous shard of the samples and joins the ranks' parts in
rank order, so the result equals one process's (to float64 rounding for the scan's means and
variances; exactly for per-sample values); in one process each is the plain analysis. The
masking experiment and head means need no entry point here: the engine shards and reduces
them (:class:`vh_lens.distributed.TorchWorld`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

from vh_lens.distributed import (
    DistContext,
    gather_onto_main,
    init,
    rank_checkpoint_dir,
    reduce_onto_main,
    shard,
    shard_range,
)

__all__ = ["collect_head_activations", "logit_lens", "scan_visual_heads"]


def _accumulator_from_scores(scores: Any, template: Any) -> Any:
    """A :class:`~vh_lens.visual_heads.ScoreAccumulator` holding ``scores``' statistics (M2 = variance x count)."""
    from vh_lens.visual_heads.scores import METRICS

    acc = copy.deepcopy(template)
    state = {"count": torch.full((acc.n_layers,), scores.count, dtype=torch.int64)}
    for m in METRICS:
        state[f"mean.{m}"] = scores.mean[m]
        state[f"m2.{m}"] = scores.variance[m] * scores.count
    if acc.keep_per_sample:
        state |= {f"per_sample.{m}": scores.per_sample[m] for m in METRICS}
    acc.load_state_dict(state)
    return acc


def scan_visual_heads(
    model: Any,
    samples: Sequence[Any],
    *,
    ctx: DistContext | None = None,
    answer_tokens: Sequence[int] | torch.Tensor | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """:func:`vh_lens.scan_visual_heads` split across the ranks of a ``torchrun`` launch.

    Each rank scans its contiguous shard (:func:`shard`) with its own checkpoint folder
    (:func:`rank_checkpoint_dir`), then the statistics are merged onto rank 0 in rank order.
    In one process this is the plain scan (plus the two metadata fields).

    Returns:
        On rank 0 the :class:`~vh_lens.VisualHeadScores` of all samples, with
        ``metadata["world_size"]`` and ``metadata["samples_per_rank"]``; ``None`` on other ranks.
    """
    from vh_lens.visual_heads.scan import ScoreAccumulator, default_layer_fn
    from vh_lens.visual_heads.scan import scan_visual_heads as scan

    ctx = init() if ctx is None else ctx
    if not hasattr(samples, "__len__"):
        samples = list(samples)
    part = shard(samples, ctx)
    if answer_tokens is not None:
        tokens = [int(t) for t in torch.as_tensor(answer_tokens).flatten().tolist()]
        if len(tokens) != len(samples):
            raise ValueError(f"got {len(tokens)} answer tokens for {len(samples)} samples")
        answer_tokens = [tokens[i] for i in shard_range(len(tokens), ctx.rank, ctx.world_size)]
    template = ScoreAccumulator(
        int(model.cfg.n_layers), int(model.cfg.n_heads), bool(kwargs.get("keep_per_sample", False)),
        layer_fn=kwargs.get("layer_fn", default_layer_fn), detection_weight=kwargs.get("detection_weight", "image"),
    )
    ckpt = None if checkpoint_dir is None else rank_checkpoint_dir(checkpoint_dir, ctx)
    meta = dict(metadata or {}) | ctx.metadata(len(samples))
    local_meta: dict[str, Any] = {}
    if len(part):
        scores = scan(model, part, answer_tokens=answer_tokens, checkpoint_dir=ckpt,
                      progress=ctx.progress(progress), metadata=meta, **kwargs)
        acc, local_meta = _accumulator_from_scores(scores, template), dict(scores.metadata)
    else:  # more ranks than samples: this rank contributes nothing
        acc = template
    metas = gather_onto_main(local_meta, ctx)
    merged = reduce_onto_main(acc, ctx)
    if merged is None:
        return None
    first = next(m for m in metas if m)  # type: ignore[union-attr]
    return merged.result(first)


def _gather_all(value: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``value`` on every rank, in rank order."""
    import torch.distributed as dist

    if not ctx.active:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def logit_lens(
    model: Any,
    samples: Sequence[Any],
    *,
    ctx: DistContext | None = None,
    batch_size: int = 8,
    answers: Sequence[str] | Sequence[int] | None = None,
    top_k: int = 5,
    format_question: Any = None,
) -> Any:
    """:func:`vh_lens.logit_lens` over ``samples`` in batches, split across the ranks.

    Args:
        answers: one gold answer per sample (string or first-token id), or ``None``.

    Returns:
        The :class:`~vh_lens.LogitLensResult` of all samples, in their order, on every rank.
    """
    from vh_lens.analysis.logit_lens import LogitLensResult
    from vh_lens.analysis.logit_lens import logit_lens as lens

    ctx = init() if ctx is None else ctx
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if answers is not None and len(answers) != len(samples):
        raise ValueError(f"got {len(answers)} answers for {len(samples)} samples")
    mine = shard_range(len(samples), ctx.rank, ctx.world_size)
    parts = []
    for first in range(mine.start, mine.stop, batch_size):
        chunk = [samples[i] for i in range(first, min(first + batch_size, mine.stop))]
        kwargs = {} if format_question is None else {"format_question": format_question}
        batch = model.prepare_samples(chunk, **kwargs)
        gold = None if answers is None else list(answers[first : first + len(chunk)])
        parts.append(lens(model, batch, answers=gold, top_k=top_k))
    local = LogitLensResult.concat(parts) if parts else None
    joined = [p for p in _gather_all(local, ctx) if p is not None]
    return LogitLensResult.concat(joined)


def collect_head_activations(
    model: Any,
    samples: Sequence[Any],
    *,
    ctx: DistContext | None = None,
    **kwargs: Any,
) -> Any:
    """:func:`vh_lens.collect_head_activations` split across the ranks; all samples on every rank.

    ``samples`` are :class:`~vh_lens.data.Sample` objects; one without ``metadata["group"]`` is
    given its global index as group first (one process's default), so the groups, and the
    probes' train/test split, do not depend on the world size. ``out_dir`` is not supported
    here (every rank holds the joined activations in memory).
    """
    from vh_lens.data.sample import Sample
    from vh_lens.functional_heads.activations import HeadActivations
    from vh_lens.functional_heads.activations import collect_head_activations as collect

    ctx = init() if ctx is None else ctx
    if kwargs.get("out_dir") is not None:
        raise ValueError("parallel.collect_head_activations does not write out_dir; save the joined result instead")
    if any(not isinstance(s, Sample) for s in samples):
        raise ValueError("parallel.collect_head_activations takes Sample objects (expand CogVision items first)")
    grouped = [s if "group" in s.metadata else dataclasses.replace(s, metadata={**s.metadata, "group": i})
               for i, s in enumerate(samples)]
    mine = list(shard(grouped, ctx))
    local = None
    if mine:
        acts = collect(model, mine, progress=kwargs.pop("progress", True) and ctx.is_main, **kwargs)
        local = (torch.as_tensor(acts.acts), acts.labels, acts.groups, dict(acts.metadata))
    parts = [p for p in _gather_all(local, ctx) if p is not None]
    return HeadActivations(
        acts=torch.cat([p[0] for p in parts]), labels=tuple(x for p in parts for x in p[1]),
        groups=tuple(x for p in parts for x in p[2]), metadata={**parts[0][3], **ctx.metadata(len(samples))},
    )
