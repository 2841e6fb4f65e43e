"""Logit lens: what the residual stream at the answer query position predicts after each layer.

For every layer ``l`` (0-based), the residual stream after that block
(``blocks.{l}.hook_resid_post``) at the query position goes through the model's own final norm
and unembedding, ``unembed(ln_final(resid))``, exactly as the model does after its last block;
so the lens after the last layer *is* the model's logits (paper A, supplement 7). Only the
query rows of ``hook_resid_post`` are kept during the forward pass (no activation cache).

Ranks are 1-based: rank 1 is the lens's top token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import apply_softcap

from vh_lens.analysis.lens_result import LogitLensResult
from vh_lens.core.config import ExperimentConfig, check_positive_int, resolve_config
from vh_lens.core.hooks import FwdHook, act_name, query_positions
from vh_lens.engine import PreparedBatch, Preparer, Reducer, iter_batches, run
from vh_lens.evaluation.candidates import answer_token_ids

__all__ = ["LensConfig", "LensReducer", "LogitLensResult", "answer_token_ids", "logit_lens", "logit_lens_samples"]


def _token_strings(tokenizer: Any | None, ids: Tensor) -> list[str]:
    flat = ids.reshape(-1).tolist()
    if tokenizer is None:
        return [str(i) for i in flat]
    return list(tokenizer.batch_decode([[i] for i in flat]))


def _grab_rows_hook(
    resid: Float[Tensor, "batch pos d_model"],
    *,
    hook: HookPoint,
    store: list[Tensor | None],
    positions: Int[Tensor, " batch"],
) -> None:
    rows = torch.arange(resid.shape[0], device=resid.device)
    store[hook.layer()] = resid[rows, positions.to(resid.device)].detach()


def _rank(logits: Float[Tensor, "... vocab"], ids: Int[Tensor, ...]) -> Int[Tensor, ...]:
    """1-based rank of ``ids``: one plus the number of tokens with a strictly higher logit."""
    target = logits.gather(-1, ids[..., None])
    return (logits > target).sum(-1) + 1


@dataclass(frozen=True)
class LensConfig(ExperimentConfig):
    """Settings of :func:`logit_lens_samples` (``top_k`` also of :func:`logit_lens`).

    Attributes:
        top_k: how many top tokens to keep per layer and sample.
        batch_size: samples per forward pass.
    """

    top_k: int = 5
    batch_size: int = 8

    def validate(self) -> None:
        check_positive_int("top_k", self.top_k)
        check_positive_int("batch_size", self.batch_size)


LensInputs = Callable[
    [PreparedBatch], tuple["Sequence[str] | Sequence[int] | Tensor | None", "Sequence[int] | Tensor | None"]
]
"""``inputs(item) -> (answers, positions)`` of one batch for :class:`LensReducer`."""


def _inputs_from_answers(item: PreparedBatch) -> tuple[Any, Any]:
    """The gold answers' distinguishing tokens and read positions of a batch prepared with ``answers="score"``."""
    prepared = item.answers
    if prepared is None or prepared.candidate_ids is None or prepared.gold_indices is None:
        return None, None
    gold = [int(ids[g]) for ids, g in zip(prepared.candidate_ids, prepared.gold_indices)]
    return gold, prepared.read_positions


class LensReducer(Reducer):
    """The engine's reducer of the logit lens: query rows of ``hook_resid_post``, one :class:`LogitLensResult` per batch.

    Args:
        model: the model (its ``lm``'s final norm and unembedding are applied; ``tokenizer``
            for string answers and token strings).
        top_k: top tokens kept per layer and sample.
        inputs: ``inputs(item) -> (answers, positions)`` per batch (see :func:`logit_lens`);
            default: from a batch prepared with ``answers="score"`` (the gold answer's
            distinguishing token, read where it is predicted), else none and the query position.
    """

    def __init__(self, model: Any, top_k: int = 5, inputs: LensInputs | None = None) -> None:
        cfg = model.lm.cfg
        if not 1 <= top_k <= cfg.d_vocab:
            raise ValueError(f"top_k must be in [1, d_vocab={cfg.d_vocab}], got {top_k}")
        self.model, self.top_k, self.inputs = model, top_k, inputs or _inputs_from_answers
        self.parts: list[LogitLensResult] = []
        self._pending: tuple[Tensor, Tensor | None, list[Tensor | None]] | None = None

    def hooks(self, item: PreparedBatch) -> list[FwdHook]:
        batch = item.batch
        answers, positions = self.inputs(item)
        seq = int(batch.attention_mask.shape[-1])
        pos = query_positions(batch.layout, positions, seq_len=seq)
        answer_ids = _answer_ids(self.model, answers, len(batch))
        store: list[Tensor | None] = [None] * self.model.lm.cfg.n_layers
        self._pending = (pos, answer_ids, store)
        hook = partial(_grab_rows_hook, store=store, positions=pos)
        return [(act_name("resid_post", layer), hook) for layer in range(len(store))]

    def update(self, output: Any, item: PreparedBatch) -> None:
        assert self._pending is not None
        pos, answer_ids, store = self._pending
        self._pending = None
        self.parts.append(_lens_result(self.model, output, store, pos, answer_ids, self.top_k))

    def result(self) -> LogitLensResult:
        return LogitLensResult.concat(self.parts)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": list(self.parts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.parts = list(state["parts"])

    def merge(self, other: Reducer) -> None:
        if not isinstance(other, LensReducer) or other.top_k != self.top_k:
            raise ValueError("can only merge a LensReducer with the same top_k")
        self.parts.extend(other.parts)


def _answer_ids(model: Any, answers: Any, n: int) -> Tensor | None:
    if answers is None:
        return None
    cfg = model.lm.cfg
    tokenizer = getattr(model, "tokenizer", None)
    answers = list(answers) if not isinstance(answers, Tensor) else answers
    if len(answers) != n:
        raise ValueError(f"need one answer per sample ({n}), got {len(answers)}")
    if not isinstance(answers, Tensor) and all(isinstance(a, str) for a in answers):
        if tokenizer is None:
            raise ValueError("string answers need model.tokenizer")
        answer_ids = answer_token_ids(tokenizer, answers)
    else:
        answer_ids = torch.as_tensor(answers).long().reshape(-1)
    if int(answer_ids.min()) < 0 or int(answer_ids.max()) >= cfg.d_vocab:
        raise ValueError(f"answer ids {answer_ids.tolist()} out of the vocabulary (d_vocab={cfg.d_vocab})")
    return answer_ids


def _lens_result(
    model: Any, logits: Tensor, store: list[Tensor | None], pos: Tensor, answer_ids: Tensor | None, top_k: int
) -> LogitLensResult:
    lm = model.lm
    cfg = lm.cfg
    n = int(pos.shape[0])
    tokenizer = getattr(model, "tokenizer", None)
    missing = [layer for layer, r in enumerate(store) if r is None]
    if missing:
        raise RuntimeError(f"hook_resid_post of layers {missing} never ran")
    with torch.no_grad():
        device = lm.unembed.W_U.device
        resid = torch.stack([r.to(device) for r in store])  # type: ignore[union-attr]  # [n_layers, n, d_model]
        normed = lm.ln_final(resid) if cfg.normalization_type is not None else resid
        lens = apply_softcap(lm.unembed(normed), cfg.output_logits_soft_cap).float().cpu()
        final_ids = logits[torch.arange(n, device=logits.device), pos.to(logits.device)].argmax(-1).cpu()

    probs = lens.softmax(-1)  # [n_layers, n, d_vocab]
    layer_ids = final_ids.expand(cfg.n_layers, n)
    top_probs, top_ids = probs.topk(top_k, dim=-1)
    top_strings = _token_strings(tokenizer, top_ids)
    top_tokens = tuple(
        tuple(tuple(top_strings[(layer * n + i) * top_k : (layer * n + i + 1) * top_k]) for i in range(n))
        for layer in range(cfg.n_layers)
    )
    answer_fields: dict[str, Any] = {}
    if answer_ids is not None:
        gold = answer_ids.expand(cfg.n_layers, n)
        answer_fields = {
            "answer_ids": answer_ids,
            "answer_rank": _rank(lens, gold),
            "answer_prob": probs.gather(-1, gold[..., None])[..., 0],
            "answer_tokens": tuple(_token_strings(tokenizer, answer_ids)),
        }
    return LogitLensResult(
        positions=pos,
        final_ids=final_ids,
        final_rank=_rank(lens, layer_ids),
        final_prob=probs.gather(-1, layer_ids[..., None])[..., 0],
        top_ids=top_ids,
        top_probs=top_probs,
        top_tokens=top_tokens,
        final_tokens=tuple(_token_strings(tokenizer, final_ids)),
        **answer_fields,
    )


def logit_lens(
    model: Any,
    batch: Any,
    answers: Sequence[str] | Sequence[int] | Tensor | None = None,
    positions: Sequence[int] | Tensor | None = None,
    top_k: int = 5,
) -> LogitLensResult:
    """Apply the logit lens after every layer at each sample's answer query position.

    One batch through the engine with a :class:`LensReducer`; for a data set use
    :func:`logit_lens_samples`.

    Args:
        model: a :class:`vh_lens.LlavaLens`-like model: ``lm`` (the HookedTransformer, whose
            ``ln_final`` and ``unembed`` are applied), ``run_with_hooks(batch, fwd_hooks=...)``
            returning logits ``[batch, pos, d_vocab]``, and ``tokenizer`` (may be ``None`` when
            answers are ids; token strings then are the ids).
        batch: a prepared batch: ``attention_mask`` ``[batch, pos]``, ``layout`` (one
            :class:`~vh_lens.core.layout.TokenLayout` per sample), ``len(batch)``.
        answers: gold answers: strings (their first token, see :func:`answer_token_ids`) or
            token ids, one per sample; ``None`` to skip the answer columns.
        positions: one position per sample to read instead of ``layout.query_position``.
        top_k: how many top tokens to keep per layer and sample.

    Returns:
        :class:`LogitLensResult`.

    Example:
        >>> batch = model.prepare_samples(samples)  # doctest: +SKIP
        >>> result = logit_lens(model, batch, answers=[s.answer for s in samples])  # doctest: +SKIP
        >>> result.to_rows()[-1]["answer_top1"]  # doctest: +SKIP
    """
    reducer = LensReducer(model, top_k, inputs=lambda item: (answers, positions))
    item = PreparedBatch(0, (None,) * len(batch), batch)
    return run(model, [item], reducer).result()


def _samples_preparer(format_question: Callable[[Any], str] | None, with_answers: bool) -> Preparer:
    """Batches whose gold answers can be scored get their distinguishing tokens (``answers="score"``)."""
    from vh_lens.evaluation.answers import answer_kind
    from vh_lens.evaluation.scoring import prepare_answer_batch

    def preparer(model: Any, chunk: Sequence[Any], start: int) -> PreparedBatch:
        if with_answers and all(answer_kind(s) != "open" for s in chunk):
            prepared = prepare_answer_batch(model, chunk, method="score", format_question=format_question, offset=start)
            return PreparedBatch(start, tuple(chunk), prepared.batch, prepared)
        batch = model.prepare_samples(list(chunk), format_question=format_question)
        return PreparedBatch(start, tuple(chunk), batch)

    return preparer


def _inputs_from_samples(with_answers: bool) -> LensInputs:
    def inputs(item: PreparedBatch) -> tuple[Any, Any]:
        if item.answers is not None:
            return _inputs_from_answers(item)
        return ([s.answer for s in item.samples] if with_answers else None), None

    return inputs


def logit_lens_samples(
    model: Any,
    samples: Sequence[Any],
    *,
    config: LensConfig | Mapping[str, Any] | None = None,
    top_k: int | None = None,
    batch_size: int | None = None,
    format_question: Callable[[Any], str] | None = None,
    progress: bool = False,
) -> LogitLensResult:
    """The logit lens over a data set, batch by batch (what ``vh-lens lens`` runs).

    When every sample has a gold answer, a batch whose answers can all be scored (multiple
    choice, yes/no, counting) is read where the answer's distinguishing token is predicted and
    ranks that token (:func:`vh_lens.evaluation.scoring.prepare_answer_batch`); a batch with an
    open answer ranks the first token of the answer text (:func:`answer_token_ids`) at the
    query position. Without gold answers only the final token is followed.

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        samples: the samples.
        config: :class:`LensConfig` (or its dict); ``top_k`` and ``batch_size`` override it.
        format_question: how a sample becomes the user turn (default: the model's own).
        progress: a tqdm bar over batches.

    Returns:
        :class:`LogitLensResult` over all samples.
    """
    given = {"top_k": top_k, "batch_size": batch_size}
    conf = resolve_config(LensConfig, config, {k: v for k, v in given.items() if v is not None})
    samples = list(samples)
    if not samples:
        raise ValueError("logit_lens_samples: no samples given")
    with_answers = all(s.answer is not None for s in samples)
    batches = iter_batches(model, samples, batch_size=conf.batch_size,
                           preparer=_samples_preparer(format_question, with_answers))  # fmt: skip
    reducer = LensReducer(model, conf.top_k, inputs=_inputs_from_samples(with_answers))
    # under torchrun each rank runs its shard (iter_batches); the parts are joined in rank order
    world = batches.world  # type: ignore[attr-defined]
    total = -(-len(world.shard(len(samples))) // conf.batch_size)
    return run(model, batches, reducer, progress=progress and world.rank == 0, total=total, desc="logit lens").result()
