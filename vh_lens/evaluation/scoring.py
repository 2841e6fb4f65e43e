"""Benchmark accuracy of a :class:`~vh_lens.LlavaLens`, with or without the caller's hooks.

Two ways to read a model's answer:

- ``"score"`` (default): one forward pass over the prompt. The candidate answers of the
  sample (:func:`vh_lens.evaluation.answers.candidate_strings`: option letters, ``Yes``/``No``, or the
  digits of a count range) are tokenised as they would follow the prompt (exactly as
  :meth:`vh_lens.LlavaLens.prepare` tokenises a teacher-forced answer), and the candidate whose
  first token has the highest logit at the answer query position is the prediction. Tokens
  that *all* candidates begin with (Llama's ``"▁"`` before a digit: ``" 3"`` is
  ``["▁", "3"]``) are appended to the prompt first and the logits are read after them, i.e.
  at the first token where the candidates differ. A candidate that tokenises to the unknown
  token is retried lowercased, capitalised and uppercased (a vocabulary with ``yes`` but no
  ``Yes``). Candidates that still share their distinguishing token raise ``ValueError``.
- ``"generate"``: greedy generation, then :func:`vh_lens.evaluation.answers.parse_answer`; an answer
  that cannot be read counts as wrong (``n_unparsed``).

Hooks given as ``fwd_hooks`` are attached (``model.hooks``) for the whole evaluation and
removed afterwards, also when it raises.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from vh_lens.core.config import ExperimentConfig, resolve_config
from vh_lens.data.sample import Sample
from vh_lens.engine import Condition, PreparedBatch, Reducer, iter_batches, run
from vh_lens.evaluation.answers import answer_kind, candidate_strings, gold_answer, gold_index, parse_answer
from vh_lens.evaluation.candidates import candidate_token_ids

__all__ = [
    "AccuracyReducer",
    "AnswerBatch",
    "EvalConfig",
    "EvalMethod",
    "EvalResult",
    "Prediction",
    "candidate_token_ids",
    "check_eval_options",
    "evaluate",
    "prepare_answer_batch",
]

EvalMethod = Literal["score", "generate"]
_METHODS = ("score", "generate")
HookList = Sequence[tuple[Any, Callable]]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Prediction:
    """One sample's prediction.

    Attributes:
        text: the generated text (``"generate"``) or the chosen candidate string (``"score"``).
        parsed: the answer in canonical form (:func:`vh_lens.evaluation.answers.parse_answer`: an option
            letter, ``"yes"``/``"no"``, a number as a string, normalised text), or ``None`` when
            the generated text gives no single answer.
        gold: the gold answer in the same canonical form.
        correct: ``parsed == gold``.
        kind: the sample's answer kind (``"choice"``, ``"yes_no"``, ``"number"``, ``"open"``).
        letter: the predicted option letter for multiple choice, else ``None``.
        scores: ``"score"`` only: the logit of each candidate's distinguishing token, in the
            order of :func:`~vh_lens.evaluation.answers.candidate_strings`; ``None`` for ``"generate"``.
    """

    text: str
    parsed: str | None
    gold: str
    correct: bool
    kind: str
    letter: str | None = None
    scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.correct and self.parsed != self.gold:
            raise ValueError(f"a correct prediction must parse to the gold answer ({self.parsed!r} != {self.gold!r})")


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Accuracy over a set of samples.

    Attributes:
        predictions: one :class:`Prediction` per sample, in input order.
        method: ``"score"`` or ``"generate"``.
        n: number of samples.
        n_correct: number of correct predictions.
        n_unparsed: predictions whose text gave no answer (always 0 for ``"score"``).
        accuracy: ``n_correct / n``.
        per_kind: answer kind -> accuracy over the samples of that kind.
        per_kind_n: answer kind -> number of samples of that kind.

    Example:
        >>> result = evaluate(model, samples)  # doctest: +SKIP
        >>> result.accuracy, result.per_kind  # doctest: +SKIP
        (0.62, {'choice': 0.62})
    """

    predictions: tuple[Prediction, ...] = field(repr=False)
    method: str = "score"
    n: int = field(init=False)
    n_correct: int = field(init=False)
    n_unparsed: int = field(init=False)
    accuracy: float = field(init=False)
    per_kind: dict[str, float] = field(init=False)
    per_kind_n: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        predictions = tuple(self.predictions)
        if not predictions:
            raise ValueError("EvalResult needs at least one prediction")
        if not all(isinstance(p, Prediction) for p in predictions):
            raise ValueError("EvalResult.predictions must be Prediction objects")
        if self.method not in _METHODS:
            raise ValueError(f"EvalResult.method must be one of {_METHODS}, got {self.method!r}")
        kinds = Counter(p.kind for p in predictions)
        right = Counter(p.kind for p in predictions if p.correct)
        n_correct = sum(p.correct for p in predictions)
        values = {
            "predictions": predictions,
            "n": len(predictions),
            "n_correct": n_correct,
            "n_unparsed": sum(p.parsed is None for p in predictions),
            "accuracy": n_correct / len(predictions),
            "per_kind": {k: right[k] / kinds[k] for k in sorted(kinds)},
            "per_kind_n": {k: kinds[k] for k in sorted(kinds)},
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per sample: ``index``, ``kind``, ``text``, ``parsed``, ``letter``, ``gold``, ``correct``."""
        return [
            {
                "index": i,
                "kind": p.kind,
                "text": p.text,
                "parsed": p.parsed,
                "letter": p.letter,
                "gold": p.gold,
                "correct": p.correct,
            }
            for i, p in enumerate(self.predictions)
        ]


# --------------------------------------------------------------------------------------------
# Prepared batches


@dataclass(frozen=True, eq=False)
class AnswerBatch:
    """A prepared batch with what is needed to score its answers.

    Attributes:
        batch: the :class:`~vh_lens.LlavaBatch` (for ``"score"``, with each sample's shared
            candidate prefix appended, see :func:`candidate_token_ids`).
        samples: the samples, in batch order.
        read_positions: ``[batch]`` position whose logits predict the candidates' distinguishing
            token (the query position, or the last appended prefix token); ``None`` for
            ``"generate"``.
        candidate_ids: per sample, ``[n_candidates]`` distinguishing token ids (``"score"``).
        gold_indices: per sample, index of the gold answer among the candidates (``"score"``).
        golds: per sample, the gold answer in canonical form.
        kinds: per sample, the answer kind.
        method: ``"score"`` or ``"generate"``.
    """

    batch: Any
    samples: tuple[Sample, ...]
    read_positions: Int[Tensor, " batch"] | None
    candidate_ids: tuple[Int[Tensor, " _n_candidates"], ...] | None  # each sample its own count
    gold_indices: tuple[int, ...] | None
    golds: tuple[str, ...]
    kinds: tuple[str, ...]
    method: str

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        n = len(self.samples)
        if len(self.golds) != n or len(self.kinds) != n:
            raise ValueError("AnswerBatch needs one gold answer and kind per sample")
        if self.method == "score":
            if self.read_positions is None or self.candidate_ids is None or self.gold_indices is None:
                raise ValueError("a 'score' AnswerBatch needs read_positions, candidate_ids and gold_indices")
            if tuple(self.read_positions.shape) != (n,) or len(self.candidate_ids) != n or len(self.gold_indices) != n:
                raise ValueError(
                    "AnswerBatch: read_positions, candidate_ids and gold_indices need one entry per sample"
                )

    def __len__(self) -> int:
        return len(self.samples)


def _where(index: int | None, sample: Sample) -> str:
    at = f"sample {index}" if index is not None else "sample"
    return f"{at} ({sample.question[:50]!r})"


def prepare_answer_batch(
    model: Any,
    samples: Sequence[Sample],
    *,
    method: EvalMethod = "score",
    format_question: Callable[[Sample], str] | None = None,
    offset: int = 0,
) -> AnswerBatch:
    """Prepare ``samples`` (one batch) for :func:`evaluate`.

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        samples: samples with gold answers (and, for ``"score"``, a fixed candidate list:
            multiple choice, yes/no or counting).
        method: ``"score"`` or ``"generate"``.
        format_question: how a sample becomes the user turn (default: the model's own,
            ``model.question_format``).
        offset: index of ``samples[0]`` in the whole data set (for error messages).

    Raises:
        ValueError: a sample has no gold answer, or (``"score"``) no candidate list or
            candidates that first-token logits cannot tell apart.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    samples = tuple(samples)
    if not samples:
        raise ValueError("no samples to prepare")
    golds, kinds = [], []
    for i, s in enumerate(samples, start=offset):
        if not isinstance(s, Sample):
            raise ValueError(f"sample {i} is a {type(s).__name__}, not a vh_lens Sample")
        if s.answer is None:
            raise ValueError(f"{_where(i, s)} has no gold answer; accuracy needs gold answers")
        try:
            golds.append(gold_answer(s))
        except ValueError as err:
            raise ValueError(f"{_where(i, s)}: {err}") from err
        kinds.append(answer_kind(s))
    batch = model.prepare_samples(samples, format_question=format_question)
    if method == "generate":
        return AnswerBatch(batch, samples, None, None, None, tuple(golds), tuple(kinds), method)
    prefixes, ids, gold_idx = [], [], []
    for i, (s, prompt) in enumerate(zip(samples, batch.prompts), start=offset):
        try:
            prefix, cand_ids = candidate_token_ids(model.tokenizer, prompt, candidate_strings(s))
            gold_idx.append(gold_index(s))
        except ValueError as err:
            hint = " (open-answer samples need method='generate')" if answer_kind(s) == "open" else ""
            raise ValueError(f"{_where(i, s)}: {err}{hint}") from err
        prefixes.append(prefix)
        ids.append(torch.tensor(cand_ids, dtype=torch.long))
    if any(prefixes):
        batch = model.append_tokens(batch, prefixes)
    read = torch.tensor(
        [
            int(lay.answer_positions[-1]) if prefix else int(lay.query_position)
            for lay, prefix in zip(batch.layout, prefixes)
        ],
        dtype=torch.long,
    )
    return AnswerBatch(batch, samples, read, tuple(ids), tuple(gold_idx), tuple(golds), tuple(kinds), method)


# --------------------------------------------------------------------------------------------
# Running


def _predict(output: Any, prepared: AnswerBatch) -> list[Prediction]:
    """Predictions for one prepared batch from its logits (``"score"``) or generated texts."""
    samples = prepared.samples
    if prepared.method == "generate":
        out = []
        for text, s, gold, kind in zip(output, samples, prepared.golds, prepared.kinds):
            parsed = parse_answer(text, s)
            out.append(
                Prediction(
                    text=text,
                    parsed=parsed,
                    gold=gold,
                    correct=parsed is not None and parsed == gold,
                    kind=kind,
                    letter=parsed if kind == "choice" else None,
                )
            )
        return out
    assert prepared.read_positions is not None and prepared.candidate_ids is not None
    assert prepared.gold_indices is not None
    logits = output  # [batch, pos, d_vocab]
    rows = logits[torch.arange(len(samples), device=logits.device), prepared.read_positions.to(logits.device)]
    rows = rows.float().cpu()  # [batch, d_vocab]
    out = []
    for i, s in enumerate(samples):
        cand_logits = rows[i, prepared.candidate_ids[i]]
        if not bool(torch.isfinite(cand_logits).all()):
            raise ValueError(f"{_where(None, s)}: candidate logits are not finite ({cand_logits.tolist()})")
        choice = int(cand_logits.argmax())
        text = candidate_strings(s)[choice]
        parsed = parse_answer(text, s)
        kind = prepared.kinds[i]
        correct = choice == prepared.gold_indices[i]
        out.append(
            Prediction(
                text=text,
                parsed=parsed,
                gold=prepared.golds[i],
                correct=correct,
                kind=kind,
                letter=parsed if kind == "choice" else None,
                scores=tuple(cand_logits.tolist()),
            )
        )
    return out


def check_eval_options(method: str, batch_size: int, max_new_tokens: int) -> None:
    """Refuse a bad answer-reading method, batch size or generation length (``ValueError`` naming it)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")


@dataclass(frozen=True)
class EvalConfig(ExperimentConfig):
    """Settings of :func:`evaluate`: how answers are read, samples per forward pass, generation length."""

    method: str = "score"
    batch_size: int = 8
    max_new_tokens: int = 8

    def validate(self) -> None:
        check_eval_options(self.method, self.batch_size, self.max_new_tokens)


class AccuracyReducer(Reducer):
    """The engine's reducer for benchmark accuracy: one :class:`Prediction` per sample.

    Runs each batch prepared with ``answers=method`` (:func:`vh_lens.engine.prepare`): one
    forward pass (``"score"``) or greedy generation (``"generate"``) with the run's hooks
    attached (``model.hooks``), and :meth:`result` is the :class:`EvalResult`. Its state is the
    predictions so far; :meth:`merge` appends the other reducer's (the following samples).

    Example:
        >>> prepared = engine.prepare(model, samples, answers="score")  # doctest: +SKIP
        >>> engine.run(model, prepared, AccuracyReducer("score")).result().accuracy  # doctest: +SKIP
    """

    def __init__(self, method: EvalMethod = "score", max_new_tokens: int = 8) -> None:
        check_eval_options(method, 1, max_new_tokens)
        self.method, self.max_new_tokens = method, max_new_tokens
        self.predictions: list[Prediction] = []

    def forward(self, model: Any, item: PreparedBatch, fwd_hooks: list[Any]) -> Any:
        prepared = item.answers
        if not isinstance(prepared, AnswerBatch) or prepared.method != self.method:
            raise ValueError(f"AccuracyReducer({self.method!r}) needs batches prepared with answers={self.method!r}")
        with model.hooks(fwd_hooks=fwd_hooks) if fwd_hooks else contextlib.nullcontext():
            if self.method == "generate":
                return model.generate(prepared.batch, max_new_tokens=self.max_new_tokens)
            return model(prepared.batch)  # [batch, pos, d_vocab]

    def update(self, output: Any, item: PreparedBatch) -> None:
        self.predictions.extend(_predict(output, item.answers))

    def result(self) -> EvalResult:
        return EvalResult(tuple(self.predictions), method=self.method)

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "predictions": [asdict(p) for p in self.predictions]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["method"] != self.method:
            raise ValueError(f"state is for method {state['method']!r}, this reducer reads {self.method!r}")
        self.predictions = [
            Prediction(**{**p, "scores": None if p["scores"] is None else tuple(p["scores"])})
            for p in state["predictions"]
        ]

    def merge(self, other: Reducer) -> None:
        if not isinstance(other, AccuracyReducer) or other.method != self.method:
            raise ValueError("can only merge an AccuracyReducer of the same method")
        self.predictions.extend(other.predictions)


def evaluate(
    model: Any,
    samples: Sequence[Sample],
    *,
    fwd_hooks: HookList = (),
    config: EvalConfig | Mapping[str, Any] | None = None,
    method: EvalMethod | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    format_question: Callable[[Sample], str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Accuracy of ``model`` on ``samples``, with ``fwd_hooks`` attached for the whole run.

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        samples: samples with gold answers (see :mod:`vh_lens.evaluation.answers` for the kinds).
        fwd_hooks: TransformerLens hooks (e.g. :func:`vh_lens.analysis.interventions.ablate_heads`),
            attached with ``model.hooks`` and removed afterwards, also on error.
        config: the settings (:class:`EvalConfig` or its dict); ``method``, ``batch_size`` and
            ``max_new_tokens`` override its fields (defaults ``"score"``, 8, 8).
        method: ``"score"`` (first-token logits of the candidate answers, one forward pass;
            see the module docstring) or ``"generate"`` (greedy generation, then parsing).
        batch_size: samples per forward pass.
        max_new_tokens: tokens to generate (``"generate"`` only).
        format_question: how a sample becomes the user turn (default: the model's own,
            ``model.question_format``).
        progress: show a tqdm progress bar (on stderr).

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: no samples, a sample without gold answer, or (``"score"``) a sample whose
            candidates cannot be scored by one token (open answers, shared first tokens).

    Example:
        >>> from vh_lens.analysis.interventions import ablate_heads  # doctest: +SKIP
        >>> base = evaluate(model, samples)  # doctest: +SKIP
        >>> ablated = evaluate(model, samples, fwd_hooks=ablate_heads([(3, 1), (4, 7)]))  # doctest: +SKIP
        >>> base.accuracy - ablated.accuracy  # doctest: +SKIP
    """
    given = {"method": method, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    conf = resolve_config(EvalConfig, config, {k: v for k, v in given.items() if v is not None})
    method, batch_size, max_new_tokens = conf.method, conf.batch_size, conf.max_new_tokens  # type: ignore[assignment]
    samples = list(samples)
    if not samples:
        raise ValueError("evaluate: no samples given")
    batches = iter_batches(model, samples, batch_size=batch_size, answers=method, format_question=format_question)
    reducer = AccuracyReducer(method, max_new_tokens)
    world = batches.world  # type: ignore[attr-defined]  # under torchrun: this rank's shard, joined in rank order
    total = math.ceil(len(world.shard(len(samples))) / batch_size)
    condition = Condition("evaluate", tuple(fwd_hooks))
    reducer = run(model, batches, reducer, condition=condition, progress=progress and world.rank == 0, total=total,
                  desc="evaluate")  # fmt: skip
    return reducer.result()
