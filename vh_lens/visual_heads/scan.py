"""The visual-head scan (paper A): every head's metrics over a data set, streamed and resumable.

:func:`scan_visual_heads` runs the data set through the engine (:mod:`vh_lens.engine`) with a
:class:`ScanReducer`: per batch, the hooks of :mod:`vh_lens.visual_heads.hooks` reduce each
layer's attention at the query rows to ``[batch, head]`` metrics
(:mod:`vh_lens.visual_heads.metrics`), and a
:class:`~vh_lens.visual_heads.accumulator.ScoreAccumulator` folds them into streaming means and
variances, checkpointed to disk every ``checkpoint_every`` samples. The settings are a
:class:`ScanConfig`.

The names of the pipeline's earlier steps stay importable from here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from vh_lens import engine
from vh_lens.core.config import ExperimentConfig, check_choice, check_positive_int, resolve_config
from vh_lens.core.hooks import FwdHook
from vh_lens.core.io import check_format_version, load_tensors, save_tensors, write_json
from vh_lens.data.sample import Sample
from vh_lens.visual_heads.accumulator import ScoreAccumulator
from vh_lens.visual_heads.hooks import MetricSink, qk_hooks_supported, visual_head_hooks, visual_head_qk_hooks
from vh_lens.visual_heads.metrics import (
    HEAD_METRICS,
    LayerFn,
    default_layer_fn,
    detection_score,
    head_metrics,
    layer_fn_name,
)
from vh_lens.visual_heads.scores import VisualHeadScores

__all__ = [
    "HEAD_METRICS",
    "MetricSink",
    "ScanConfig",
    "ScanReducer",
    "ScoreAccumulator",
    "default_layer_fn",
    "detection_score",
    "head_metrics",
    "qk_hooks_supported",
    "scan_visual_heads",
    "visual_head_hooks",
    "visual_head_qk_hooks",
]


@dataclass(frozen=True)
class ScanConfig(ExperimentConfig):
    """Settings of :func:`scan_visual_heads` (written into the result's ``metadata["config"]``).

    Attributes:
        batch_size: samples per forward pass.
        query: ``"last_prompt"`` or ``"answer_token"`` (see :func:`scan_visual_heads`).
        detection_weight: weight in the detection score: ``"image"`` or ``"region"``.
        min_overlap: minimum fraction of a patch a box must cover to count in its region.
        keep_per_sample: keep ``[n_samples, n_layers, n_heads]`` arrays per metric.
        checkpoint_every: samples between checkpoints.
        attention: ``"auto"``, ``"qk"`` or ``"pattern"``: where the attention rows come from.
    """

    batch_size: int = 8
    query: str = "last_prompt"
    detection_weight: str = "image"
    min_overlap: float = 0.0
    keep_per_sample: bool = False
    checkpoint_every: int = 256
    attention: str = "auto"

    def validate(self) -> None:
        if self.query not in ("last_prompt", "answer_token"):
            raise ValueError(f"query must be 'last_prompt' or 'answer_token', got {self.query!r}")
        for name in ("batch_size", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
        if self.attention not in ("auto", "qk", "pattern"):
            raise ValueError(f"attention must be 'auto', 'qk' or 'pattern', got {self.attention!r}")
        if self.detection_weight not in ("image", "region"):
            raise ValueError(f"detection_weight must be 'image' or 'region', got {self.detection_weight!r}")
        check_choice("keep_per_sample", self.keep_per_sample, (True, False))
        if isinstance(self.min_overlap, bool) or not isinstance(self.min_overlap, int | float):
            raise ValueError(f"min_overlap must be a number, got {self.min_overlap!r}")


# --------------------------------------------------------------------------------------------
# Checkpoints

_CKPT_JSON = "checkpoint.json"
_CKPT_FORMAT = "vh_lens.visual_heads.checkpoint"  # a format name, not a module path: kept when modules move
_CKPT_VERSION = 1
# issue 14 (saved formats): names that checkpoints of vh_lens 0.1.0 and of the first restructure commit
# (c763f59) wrote for the format and for the default layer_fn; they still read as today's.
_CKPT_FORMATS = (_CKPT_FORMAT, "vh_lens.visual_heads.scan.checkpoint")
_DEFAULT_LAYER_FN_NAMES = ("vh_lens.visual_heads.default_layer_fn", "vh_lens.visual_heads.scan.default_layer_fn")


def _write_checkpoint(directory: Path, acc: ScoreAccumulator, config: Mapping[str, Any], fingerprint: str) -> None:
    """Tensors to a fresh file, then the JSON that names it (the commit point), then clean up."""
    count = acc.count
    name = f"state-{count:010d}.safetensors"
    save_tensors(directory / name, acc.state_dict(), {"count": str(count)})
    info = {
        "format": _CKPT_FORMAT,
        "format_version": _CKPT_VERSION,
        "count": count,
        "state_file": name,
        "config": dict(config),
        "fingerprint": fingerprint,
    }
    write_json(directory / _CKPT_JSON, info, indent=2, sort_keys=True)
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_checkpoint(directory: Path, acc: ScoreAccumulator, config: Mapping[str, Any]) -> tuple[int, str] | None:
    path = directory / _CKPT_JSON
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") not in _CKPT_FORMATS:
        raise ValueError(f"{path} is not a visual-head scan checkpoint")
    check_format_version(info, path, what="visual-head scan checkpoint", current=_CKPT_VERSION, key="format_version")
    stored = dict(info["config"])
    if stored.get("layer_fn") in _DEFAULT_LAYER_FN_NAMES:
        stored["layer_fn"] = layer_fn_name(default_layer_fn)
    saved = json.loads(json.dumps(dict(config)))
    if stored != saved:
        diff = {k: (stored.get(k), v) for k, v in saved.items() if stored.get(k) != v}
        raise ValueError(f"checkpoint in {directory} was written with other settings (saved, now): {diff}")
    acc.load_state_dict(load_tensors(directory / info["state_file"]))
    if acc.count != info["count"]:
        raise ValueError(f"checkpoint {path} is inconsistent: count {info['count']} vs tensors {acc.count}")
    return int(info["count"]), str(info["fingerprint"])


def _sample_key(sample: Sample, answer_token: int | None) -> bytes:
    image = sample.image
    if image is None or isinstance(image, (str, os.PathLike)):
        image_key = str(image)
    else:
        image_key = f"<{type(image).__name__} {getattr(image, 'size', '')} {getattr(image, 'mode', '')}>"
    key = [image_key, sample.question, sample.answer, sample.choices, sample.box, answer_token]
    return json.dumps(key, default=str).encode("utf-8")


# --------------------------------------------------------------------------------------------
# The scan


class ScanReducer(engine.Reducer):
    """The engine's reducer of the scan: visual-head hooks per batch, folded into a :class:`ScoreAccumulator`.

    Each batch's metrics are collected first and reach the accumulator only once every layer
    has reported (a batch interrupted half-way leaves no trace). With ``query="answer_token"``
    the batches carry one appended answer token (see :func:`scan_visual_heads`), whose row is read.

    Args:
        accumulator: the statistics (its state is the reducer's).
        query: ``"last_prompt"`` or ``"answer_token"``.
        min_overlap: minimum fraction of a patch a box must cover.
        lm: the backbone for the query-key hooks (``model.lm``), or ``None`` for the pattern hooks.
    """

    def __init__(self, accumulator: ScoreAccumulator, *, query: str = "last_prompt", min_overlap: float = 0.0,
                 lm: Any | None = None) -> None:  # fmt: skip
        self.acc, self.query, self.min_overlap, self.lm = accumulator, query, float(min_overlap), lm
        self._collected: list[tuple[int, Mapping[str, Tensor]]] = []

    def hooks(self, item: engine.PreparedBatch) -> list[FwdHook]:
        layouts = list(item.batch.layout)
        positions = None
        if self.query == "answer_token":
            if any(lay.answer_positions.numel() != 1 for lay in layouts):
                raise RuntimeError("model.append_tokens must mark exactly one appended position per sample")
            positions = [int(lay.answer_positions[0]) for lay in layouts]
        self._collected = []
        sink = lambda layer, metrics: self._collected.append((layer, metrics))
        boxes = [s.box for s in item.samples]
        if self.lm is not None:
            return visual_head_qk_hooks(
                self.lm, layouts, sink, query_positions=positions, boxes=boxes, min_overlap=self.min_overlap
            )
        return visual_head_hooks(layouts, sink, n_layers=self.acc.n_layers, query_positions=positions, boxes=boxes,
                                 min_overlap=self.min_overlap)  # fmt: skip

    def update(self, output: Any, item: engine.PreparedBatch) -> None:
        seen = sorted(layer for layer, _ in self._collected)
        if seen != list(range(self.acc.n_layers)):
            raise RuntimeError(f"expected one attention row per layer 0..{self.acc.n_layers - 1}, got layers {seen}")
        for layer, metrics in self._collected:  # only a complete batch reaches the accumulator
            self.acc.add(layer, metrics)
        self._collected = []

    def result(self, metadata: Mapping[str, Any] | None = None) -> VisualHeadScores:
        return self.acc.result(metadata)

    def state_dict(self) -> dict[str, Tensor]:
        return self.acc.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.acc.load_state_dict(state)

    def merge(self, other: engine.Reducer) -> None:
        if not isinstance(other, ScanReducer):
            raise ValueError("can only merge a ScanReducer")
        self.acc.merge(other.acc)


def _scan_preparer(query: str, tokens: list[int] | None, device: torch.device | str | None) -> engine.Preparer:
    """Prepare a chunk; for ``"answer_token"`` append its answer token (given, or greedy)."""

    def preparer(model: Any, chunk: Sequence[Sample], start: int) -> engine.PreparedBatch:
        chunk_tokens = None if tokens is None else tokens[start : start + len(chunk)]
        if chunk_tokens is not None and len(chunk_tokens) != len(chunk):
            raise ValueError(f"answer_tokens ran out after {len(tokens)} samples")  # type: ignore[arg-type]
        batch = model.prepare_samples(list(chunk))
        if device is not None:
            batch = batch.to(device)
        if query == "answer_token":
            if chunk_tokens is None:
                logits = model(batch)
                last = torch.tensor([lay.query_position for lay in batch.layout], device=logits.device)
                next_tokens = logits[torch.arange(len(chunk), device=logits.device), last].argmax(-1)
            else:
                next_tokens = torch.as_tensor(chunk_tokens, dtype=torch.long)
            batch = model.append_tokens(batch, next_tokens.reshape(-1, 1))
        return engine.PreparedBatch(start, tuple(chunk), batch)

    return preparer


def scan_visual_heads(
    model: Any,
    samples: Iterable[Sample],
    *,
    config: ScanConfig | Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    query: Literal["last_prompt", "answer_token"] | None = None,
    answer_tokens: Sequence[int] | Tensor | None = None,
    layer_fn: LayerFn = default_layer_fn,
    detection_weight: Literal["image", "region"] | None = None,
    min_overlap: float | None = None,
    keep_per_sample: bool | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    device: torch.device | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    attention: Literal["auto", "qk", "pattern"] | None = None,
    world: engine.World | None = None,
) -> VisualHeadScores:
    """Score every attention head of ``model`` as a visual head over ``samples`` (paper A).

    One forward pass per batch (two with ``query="answer_token"`` and no ``answer_tokens``);
    the attention is reduced at each layer to ``[batch, head]`` metrics and streamed into a
    :class:`ScoreAccumulator`, so memory does not grow with the data set. The rows come from
    :func:`visual_head_qk_hooks` (queries and keys; the forward keeps its fused attention)
    where the backbone allows it, else from :func:`visual_head_hooks` (the pattern); both
    give the same numbers.

    Args:
        model: a :class:`vh_lens.LlavaLens` (anything with ``cfg``, ``prepare_samples``,
            ``run_with_hooks``, and for ``"answer_token"`` also ``__call__`` and
            ``append_tokens(batch, tokens)``).
        samples: the samples (a sequence or any iterable; streamed). A sample's ``box`` gives
            its region weight.
        config: the settings (:class:`ScanConfig` or its dict); the keyword arguments below
            override its fields. Defaults: ``batch_size=8``, ``query="last_prompt"``,
            ``detection_weight="image"``, ``min_overlap=0``, ``keep_per_sample=False``,
            ``checkpoint_every=256``, ``attention="auto"``.
        batch_size: samples per forward pass.
        query: ``"last_prompt"`` (default): the row of the last prompt position, which predicts
            the first answer token. ``"answer_token"``: append one answer token (greedy, or
            ``answer_tokens``) and read its row, as the authors' code did; the appended
            token's attention to itself counts as neither image nor text weight.
        answer_tokens: one token id per sample (e.g. the first token of the gold answer) for
            ``"answer_token"``; ``None``: the greedy next token.
        layer_fn: ``f`` of the detection score; default :func:`default_layer_fn` (ours; the
            paper's exact ``f`` is unpublished).
        detection_weight: weight in the detection score: ``"image"`` or ``"region"``.
        min_overlap: minimum fraction of a patch a box must cover to count in its region.
        keep_per_sample: keep ``[n_samples, n_layers, n_heads]`` arrays per metric.
        progress: show a tqdm progress bar.
        checkpoint_dir: if given, the accumulator state is written there (atomically) every
            ``checkpoint_every`` samples and at the end; a rerun with the same arguments
            continues from the saved count, and its result equals an uninterrupted run's.
            Samples are recognised by image path (PIL images only by size and mode),
            question, answer, choices, box and answer token: a rerun on other samples is
            refused.
        checkpoint_every: samples between checkpoints.
        device: move each batch there (``batch.to(device)``); default: leave it as prepared.
        metadata: extra JSON-serialisable metadata for the result.
        attention: ``"qk"``: rows from the queries and keys (needs ``model.lm``, a rotary
            backbone); ``"pattern"``: rows from ``hook_pattern`` (TransformerLens' full
            attention runs); ``"auto"`` (default): ``"qk"`` when supported.
        world: the processes to split the samples across (:class:`vh_lens.engine.World`);
            default :func:`vh_lens.distributed.current_world` (the ranks of a ``torchrun``
            launch, else one process). Each rank scans its contiguous shard, with its own
            checkpoint folder ``checkpoint_dir/rank{r}-of-{N}``; the statistics are merged in
            rank order, so every rank returns the scores of all samples.

    Returns:
        :class:`~vh_lens.visual_heads.scores.VisualHeadScores` over all samples;
        ``metadata["config"]`` holds the settings, ``metadata["world_size"]`` and
        ``metadata["samples_per_rank"]`` the split.

    Raises:
        ValueError: bad arguments, or a checkpoint written with other settings or samples.

    Example:
        >>> scores = scan_visual_heads(model, samples, batch_size=4, checkpoint_dir="ckpt")  # doctest: +SKIP
        >>> scores.top_heads(10, stage="mid")                                                # doctest: +SKIP
    """
    given = {
        "batch_size": batch_size, "query": query, "detection_weight": detection_weight, "min_overlap": min_overlap,
        "keep_per_sample": keep_per_sample, "checkpoint_every": checkpoint_every, "attention": attention,
    }  # fmt: skip
    conf = resolve_config(ScanConfig, config, {k: v for k, v in given.items() if v is not None})
    if answer_tokens is not None and conf.query != "answer_token":
        raise ValueError("answer_tokens is only used with query='answer_token'")
    qk_ok = qk_hooks_supported(getattr(model, "lm", None))
    if conf.attention == "qk" and not qk_ok:
        raise ValueError(
            "attention='qk' needs a model with .lm, a rotary causal backbone (Llama, Mistral, Qwen2, Phi-3)"
        )
    use_qk = conf.attention == "qk" or (conf.attention == "auto" and qk_ok)
    tokens = None if answer_tokens is None else [int(t) for t in torch.as_tensor(answer_tokens).flatten().tolist()]
    acc = ScoreAccumulator(
        int(model.cfg.n_layers), int(model.cfg.n_heads), conf.keep_per_sample,
        layer_fn=layer_fn, detection_weight=conf.detection_weight,  # type: ignore[arg-type]
    )  # fmt: skip
    ckpt_config = {
        "n_layers": acc.n_layers, "n_heads": acc.n_heads, "query": conf.query, "layer_fn": layer_fn_name(layer_fn),
        "detection_weight": conf.detection_weight, "min_overlap": float(conf.min_overlap),
        "keep_per_sample": conf.keep_per_sample, "gold_answer_tokens": tokens is not None,
    }  # fmt: skip
    if world is None:
        from vh_lens.distributed import current_world

        world = current_world()
    n_all = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if world.size > 1:  # this rank's contiguous shard; indices below are within it
        samples, tokens, n_all = _shard(samples, tokens, world)
        progress = progress and world.rank == 0
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckpt is not None and world.size > 1:
        from vh_lens.distributed import context_of, rank_checkpoint_dir

        ckpt = rank_checkpoint_dir(ckpt, context_of(world))
    start, saved_fingerprint = 0, None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        restored = _read_checkpoint(ckpt, acc, ckpt_config)
        if restored is not None:
            start, saved_fingerprint = restored

    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if tokens is not None and total is not None and len(tokens) != total:
        raise ValueError(f"got {len(tokens)} answer tokens for {total} samples")
    if tokens is not None and len(tokens) < start:
        raise ValueError(f"got {len(tokens)} answer tokens but the checkpoint has already seen {start} samples")
    hasher = hashlib.sha256()
    it = iter(samples)
    for index, sample in enumerate(itertools.islice(it, start)):
        hasher.update(_sample_key(sample, None if tokens is None else tokens[index]))
    if saved_fingerprint is not None and hasher.hexdigest() != saved_fingerprint:
        raise ValueError(f"the checkpoint in {ckpt} was written for other samples (fingerprint differs)")

    reducer = ScanReducer(acc, query=conf.query, min_overlap=conf.min_overlap, lm=model.lm if use_qk else None)
    batches = engine.iter_batches(model, it, batch_size=conf.batch_size, preparer=_scan_preparer(conf.query, tokens, device),
                                  offset=start, world=engine.LOCAL)  # fmt: skip
    progress_bar = tqdm(total=total, initial=start, disable=not progress, desc="visual heads", unit="sample")
    state = {"done": start, "saved": start}

    def on_batch(item: engine.PreparedBatch, _: engine.Reducer) -> None:
        for index, sample in zip(item.indices, item.samples):
            hasher.update(_sample_key(sample, None if tokens is None else tokens[index]))
        state["done"] = item.indices.stop
        progress_bar.update(len(item))
        if ckpt is not None and state["done"] // conf.checkpoint_every > state["saved"] // conf.checkpoint_every:
            _write_checkpoint(ckpt, acc, ckpt_config, hasher.hexdigest())
            state["saved"] = state["done"]

    with progress_bar:
        merged = engine.run(model, batches, reducer, on_batch=on_batch, world=world)
    if ckpt is not None and state["done"] != state["saved"]:
        _write_checkpoint(ckpt, acc, ckpt_config, hasher.hexdigest())
    meta = {"query": conf.query, "min_overlap": float(conf.min_overlap), "batch_size": conf.batch_size}
    model_name = getattr(model.cfg, "model_name", None)
    if isinstance(model_name, str):
        meta["model"] = model_name
    meta["config"] = conf.to_dict()
    from vh_lens.distributed import world_metadata

    meta |= world_metadata(world, state["done"] if n_all is None else n_all)
    return merged.acc.result(meta | dict(metadata or {}))


def _shard(samples: Iterable[Sample], tokens: list[int] | None, world: engine.World) -> tuple[Any, Any, int]:
    """This rank's samples (lazily read) and answer tokens, and the number of samples in all."""
    samples = samples if isinstance(samples, Sequence) else list(samples)
    n = len(samples)
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"got {len(tokens)} answer tokens for {n} samples")
    from vh_lens.distributed import context_of, shard

    mine = world.shard(n)
    return shard(samples, context_of(world)), (None if tokens is None else tokens[mine.start : mine.stop]), n
