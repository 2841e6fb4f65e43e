"""Patching metrics: functions of the logits, TransformerLens style (``metric(logits) -> scalar``).

Both read each sample's answer query position (``layout.query_position``) and average over the
batch. The normalised effect of DESIGN.md is ``(m_patched - m(r)) / (m(c) - m(r))``
(:func:`normalise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from vh_lens.core.model import LlavaBatch

METRICS: tuple[str, ...] = ("logit_diff", "logprob")


@dataclass(frozen=True, eq=False)
class AnswerMetric:
    """``logit[answer] - logit[foil]`` (``logit_diff``) or ``log p(answer)`` (``logprob``) at the query.

    Attributes:
        name: ``"logit_diff"`` or ``"logprob"``.
        query_positions: ``[batch]`` the position read in each sample.
        answer_ids: ``[batch]`` the answer token of each sample.
        foil_ids: ``[batch]`` the foil token of each sample (``logit_diff`` only).
    """

    name: str
    query_positions: Tensor
    answer_ids: Tensor
    foil_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise ValueError(f"unknown metric {self.name!r}; expected one of {METRICS}")
        if self.name == "logit_diff" and self.foil_ids is None:
            raise ValueError("the logit_diff metric needs foil_ids")
        n = self.query_positions.shape[0]
        for label, t in (("answer_ids", self.answer_ids), ("foil_ids", self.foil_ids)):
            if t is not None and t.shape != (n,):
                raise ValueError(f"{label} must have shape [{n}] (one per sample), got {tuple(t.shape)}")

    def per_sample(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
        """``[batch]`` the metric of each sample."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        at = logits[rows, self.query_positions.to(logits.device)].float()  # [batch, vocab]
        if self.name == "logprob":
            at = at.log_softmax(-1)
        value = at[rows, self.answer_ids.to(logits.device)]
        if self.name == "logit_diff":
            value = value - at[rows, self.foil_ids.to(logits.device)]
        return value

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return self.per_sample(logits).mean()


def _ids(ids: Sequence[int] | Tensor, what: str, n: int) -> Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} {what} for a batch of {n}")
    return t


def logit_diff_metric(
    batch: LlavaBatch, answer_ids: Sequence[int] | Tensor, foil_ids: Sequence[int] | Tensor
) -> AnswerMetric:
    """Mean over the batch of ``logit[answer] - logit[foil]`` at each sample's query position.

    Example:
        >>> metric = logit_diff_metric(batch, [answer_id], [foil_id])  # doctest: +SKIP
        >>> metric(model(batch))  # doctest: +SKIP
    """
    n = len(batch)
    return AnswerMetric(
        "logit_diff", batch.query_positions, _ids(answer_ids, "answer ids", n), _ids(foil_ids, "foil ids", n)
    )


def answer_logprob_metric(batch: LlavaBatch, answer_ids: Sequence[int] | Tensor) -> AnswerMetric:
    """Mean over the batch of ``log p(answer)`` at each sample's query position."""
    return AnswerMetric("logprob", batch.query_positions, _ids(answer_ids, "answer ids", len(batch)))


def normalise(value: Tensor | float, clean: float, corrupt: float) -> Tensor | float:
    """``(value - corrupt) / (clean - corrupt)``: 1 is the full clean effect, 0 none.

    Raises:
        ValueError: the clean and corrupted metrics are (nearly) equal, so nothing is to restore.
    """
    gap = clean - corrupt
    if not abs(gap) > 1e-6 * max(1.0, abs(clean)):
        raise ValueError(
            f"the clean and corrupted runs give the same metric ({clean:.6g} vs {corrupt:.6g}): the corruption "
            "changes nothing to restore; pick another corruption or metric"
        )
    return (value - corrupt) / gap
