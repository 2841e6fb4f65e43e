"""The result of the logit lens: ranks and probabilities per layer and sample (:class:`LogitLensResult`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vh_lens.core.io import load_tensors, read_json, save_tensors, write_csv, write_json

__all__ = ["LogitLensResult"]

_FORMAT = "vh_lens.LogitLensResult"
_TENSORS_FILE = "lens.safetensors"
_METADATA_FILE = "metadata.json"
_CSV_FILE = "layers.csv"
_TENSORS = ("positions", "final_ids", "final_rank", "final_prob", "top_ids", "top_probs")
_ANSWER_TENSORS = ("answer_ids", "answer_rank", "answer_prob")


@dataclass(frozen=True, eq=False)
class LogitLensResult:
    """Logit lens at one position per sample, after every layer.

    Layer ``l`` is the residual stream after block ``l`` (``l = 0 .. n_layers-1``); the last
    layer equals the model's logits. Ranks are 1-based; probabilities are softmax over the
    whole vocabulary, computed in float32.

    Attributes:
        positions: ``[n_samples]`` sequence position read in each sample (the answer query).
        final_ids: ``[n_samples]`` the model's top-1 token at that position.
        final_rank: ``[n_layers, n_samples]`` rank of ``final_ids`` under each layer's lens.
        final_prob: ``[n_layers, n_samples]`` its probability.
        top_ids: ``[n_layers, n_samples, top_k]`` the lens's top tokens, most likely first.
        top_probs: ``[n_layers, n_samples, top_k]`` their probabilities.
        top_tokens: ``[n_layers][n_samples][top_k]`` the same tokens as strings.
        final_tokens: ``[n_samples]`` ``final_ids`` as strings.
        answer_ids: ``[n_samples]`` first token of each gold answer, or ``None``.
        answer_rank: ``[n_layers, n_samples]`` rank of ``answer_ids``, or ``None``.
        answer_prob: ``[n_layers, n_samples]`` probability of ``answer_ids``, or ``None``.
        answer_tokens: ``[n_samples]`` ``answer_ids`` as strings, or ``None``.
    """

    positions: Int[Tensor, " n_samples"]
    final_ids: Int[Tensor, " n_samples"]
    final_rank: Int[Tensor, "n_layers n_samples"]
    final_prob: Float[Tensor, "n_layers n_samples"]
    top_ids: Int[Tensor, "n_layers n_samples top_k"]
    top_probs: Float[Tensor, "n_layers n_samples top_k"]
    top_tokens: tuple[tuple[tuple[str, ...], ...], ...]
    final_tokens: tuple[str, ...]
    answer_ids: Int[Tensor, " n_samples"] | None = None
    answer_rank: Int[Tensor, "n_layers n_samples"] | None = None
    answer_prob: Float[Tensor, "n_layers n_samples"] | None = None
    answer_tokens: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.top_ids.ndim != 3:
            raise ValueError(f"top_ids must be [n_layers, n_samples, top_k], got shape {tuple(self.top_ids.shape)}")
        n_layers, n, k = self.top_ids.shape
        shapes = {
            "positions": (n,),
            "final_ids": (n,),
            "final_rank": (n_layers, n),
            "final_prob": (n_layers, n),
            "top_probs": (n_layers, n, k),
        }
        answers = [getattr(self, name) for name in (*_ANSWER_TENSORS, "answer_tokens")]
        if any(a is None for a in answers) and not all(a is None for a in answers):
            raise ValueError("answer_ids, answer_rank, answer_prob and answer_tokens go together")
        if self.answer_ids is not None:
            shapes |= {"answer_ids": (n,), "answer_rank": (n_layers, n), "answer_prob": (n_layers, n)}
        for name, shape in shapes.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"LogitLensResult.{name} must have shape {shape}, got {got}")
        if len(self.final_tokens) != n or (self.answer_tokens is not None and len(self.answer_tokens) != n):
            raise ValueError(f"final_tokens and answer_tokens need one string per sample ({n})")
        if len(self.top_tokens) != n_layers or any(
            len(row) != n or any(len(t) != k for t in row) for row in self.top_tokens
        ):
            raise ValueError(f"top_tokens must be nested [n_layers={n_layers}][n_samples={n}][top_k={k}]")
        for name in ("final_rank", "answer_rank"):
            rank = getattr(self, name)
            if rank is not None and rank.numel() and int(rank.min()) < 1:
                raise ValueError(f"LogitLensResult.{name} is 1-based; got a rank below 1")

    @property
    def n_layers(self) -> int:
        return int(self.top_ids.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.top_ids.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[2])

    @property
    def has_answers(self) -> bool:
        return self.answer_ids is not None

    def to_rows(self, per_sample: bool = False) -> list[dict[str, Any]]:
        """A table as a list of dicts.

        Args:
            per_sample: ``False`` (default): one summary row per layer (mean and median rank,
                fraction of samples where the token is top-1, mean probability; for the final
                token and, when given, the gold answer). ``True``: one row per layer and sample.
        """
        if per_sample:
            return [self._sample_row(layer, i) for layer in range(self.n_layers) for i in range(self.n_samples)]
        rows = []
        for layer in range(self.n_layers):
            row: dict[str, Any] = {"layer": layer}
            for prefix in ("final", "answer") if self.has_answers else ("final",):
                rank = getattr(self, f"{prefix}_rank")[layer]
                prob = getattr(self, f"{prefix}_prob")[layer]
                row |= {
                    f"{prefix}_rank_mean": float(rank.float().mean()),
                    f"{prefix}_rank_median": float(statistics.median(rank.tolist())),
                    f"{prefix}_top1": float((rank == 1).float().mean()),
                    f"{prefix}_prob_mean": float(prob.mean()),
                }
            rows.append(row)
        return rows

    def _sample_row(self, layer: int, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "layer": layer,
            "sample": i,
            "position": int(self.positions[i]),
            "final_token": self.final_tokens[i],
            "final_rank": int(self.final_rank[layer, i]),
            "final_prob": float(self.final_prob[layer, i]),
            "top_tokens": list(self.top_tokens[layer][i]),
            "top_probs": self.top_probs[layer, i].tolist(),
        }
        if self.has_answers:
            row |= {
                "answer_token": self.answer_tokens[i],
                "answer_rank": int(self.answer_rank[layer, i]),
                "answer_prob": float(self.answer_prob[layer, i]),
            }
        return row

    def save(self, directory: str | Path) -> Path:
        """Save to ``directory``: ``lens.safetensors`` (tensors), ``metadata.json`` (token
        strings) and ``layers.csv`` (the per-layer summary of :meth:`to_rows`).

        Each file is written atomically (temporary file, then ``os.replace``), the JSON last.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = _TENSORS + (_ANSWER_TENSORS if self.has_answers else ())
        save_tensors(directory / _TENSORS_FILE, {name: getattr(self, name) for name in names}, {"format": _FORMAT})
        write_csv(directory / _CSV_FILE, self.to_rows())
        info = {
            "format": _FORMAT,
            "version": 1,
            "n_layers": self.n_layers,
            "n_samples": self.n_samples,
            "top_k": self.top_k,
            "rank": "1-based",
            "top_tokens": self.top_tokens,
            "final_tokens": self.final_tokens,
            "answer_tokens": self.answer_tokens,
        }
        write_json(directory / _METADATA_FILE, info)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LogitLensResult:
        """Load a result saved by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: the directory holds something else.
        """
        directory = Path(directory)
        info = read_json(directory / _METADATA_FILE, expected_format=_FORMAT, what="LogitLensResult", version=1)
        tensors = load_tensors(directory / _TENSORS_FILE)
        answer_tokens = info["answer_tokens"]
        return cls(
            **tensors,
            top_tokens=tuple(tuple(tuple(t) for t in row) for row in info["top_tokens"]),
            final_tokens=tuple(info["final_tokens"]),
            answer_tokens=None if answer_tokens is None else tuple(answer_tokens),
        )

    @classmethod
    def concat(cls, results: Sequence[LogitLensResult]) -> LogitLensResult:
        """Join results of several batches along the sample axis.

        Raises:
            ValueError: the results differ in layers, ``top_k`` or in having answers.
        """
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        for r in results[1:]:
            if (r.n_layers, r.top_k, r.has_answers) != (first.n_layers, first.top_k, first.has_answers):
                raise ValueError("results to concatenate must share n_layers, top_k and whether answers are given")
        joined: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(r, f.name) for r in results]
            if values[0] is None:
                joined[f.name] = None
            elif isinstance(values[0], Tensor):
                joined[f.name] = torch.cat(values, dim=0 if values[0].ndim == 1 else 1)
            elif f.name == "top_tokens":
                joined[f.name] = tuple(tuple(t for v in values for t in v[layer]) for layer in range(first.n_layers))
            else:
                joined[f.name] = tuple(t for v in values for t in v)
        return cls(**joined)
