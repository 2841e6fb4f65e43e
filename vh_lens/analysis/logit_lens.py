"""Logit lens: what the residual stream at the answer query position predicts after each layer.

For every layer ``l`` (0-based), the residual stream after that block
(``blocks.{l}.hook_resid_post``) at the query position goes through the model's own final norm
and unembedding, ``unembed(ln_final(resid))``, exactly as the model does after its last block;
so the lens after the last layer *is* the model's logits (paper A, supplement 7). Only the
query rows of ``hook_resid_post`` are kept during the forward pass (no activation cache).

Ranks are 1-based: rank 1 is the lens's top token.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import apply_softcap, get_act_name

from vh_lens.core.io import load_tensors, read_json, save_tensors, write_csv, write_json

__all__ = ["LogitLensResult", "answer_token_ids", "logit_lens"]

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
        info = read_json(directory / _METADATA_FILE, expected_format=_FORMAT, what="LogitLensResult")
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
                joined[f.name] = tuple(
                    tuple(t for v in values for t in v[layer]) for layer in range(first.n_layers)
                )
            else:
                joined[f.name] = tuple(t for v in values for t in v)
        return cls(**joined)


def answer_token_ids(tokenizer: Any, answers: Sequence[str], skip_space: bool = True) -> Int[Tensor, " n"]:
    """The first token of each answer, as the model would produce it right after the prompt.

    Tokenised without special tokens. With ``skip_space``, leading tokens that decode to
    whitespace only are skipped (Llama's tokenizer turns ``"4"`` into ``["▁", "4"]``; the
    informative token is ``"4"``).

    Args:
        tokenizer: a Hugging Face tokenizer (``model.tokenizer``).
        answers: answer strings.
        skip_space: skip whitespace-only leading tokens.

    Returns:
        ``[n]`` token ids.

    Raises:
        ValueError: an answer has no (non-whitespace) token.

    Example:
        >>> ids = answer_token_ids(model.tokenizer, ["Yes", "No"])  # doctest: +SKIP
    """
    encoded = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    out = []
    for answer, ids in zip(answers, encoded):
        while skip_space and ids and not tokenizer.decode(ids[:1]).strip():
            ids = ids[1:]
        if not ids:
            raise ValueError(f"answer {answer!r} has no token")
        out.append(ids[0])
    return torch.tensor(out, dtype=torch.long)


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


def _query_positions(batch: Any, positions: Sequence[int] | Tensor | None, n: int, seq: int) -> Int[Tensor, " n"]:
    if positions is None:
        pos = torch.tensor([int(lay.query_position) for lay in batch.layout], dtype=torch.long)
    else:
        pos = torch.as_tensor(positions).long().reshape(-1)
    if pos.shape != (n,):
        raise ValueError(f"need one position per sample ({n}), got {pos.tolist()}")
    if int(pos.min()) < -seq or int(pos.max()) >= seq:
        raise ValueError(f"positions {pos.tolist()} out of range for {seq} positions")
    return pos % seq


def _rank(logits: Float[Tensor, "... vocab"], ids: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """1-based rank of ``ids``: one plus the number of tokens with a strictly higher logit."""
    target = logits.gather(-1, ids[..., None])
    return (logits > target).sum(-1) + 1


def logit_lens(
    model: Any,
    batch: Any,
    answers: Sequence[str] | Sequence[int] | Tensor | None = None,
    positions: Sequence[int] | Tensor | None = None,
    top_k: int = 5,
) -> LogitLensResult:
    """Apply the logit lens after every layer at each sample's answer query position.

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
    lm = model.lm
    cfg = lm.cfg
    if not 1 <= top_k <= cfg.d_vocab:
        raise ValueError(f"top_k must be in [1, d_vocab={cfg.d_vocab}], got {top_k}")
    n = len(batch)
    seq = int(batch.attention_mask.shape[-1])
    pos = _query_positions(batch, positions, n, seq)
    tokenizer = getattr(model, "tokenizer", None)
    answer_ids = None
    if answers is not None:
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

    store: list[Tensor | None] = [None] * cfg.n_layers
    hook = partial(_grab_rows_hook, store=store, positions=pos)
    with torch.no_grad():
        logits = model.run_with_hooks(batch, fwd_hooks=[(get_act_name("resid_post", layer), hook) for layer in range(cfg.n_layers)])
        missing = [layer for layer, r in enumerate(store) if r is None]
        if missing:
            raise RuntimeError(f"hook_resid_post of layers {missing} never ran")
        device = lm.unembed.W_U.device
        resid = torch.stack([r.to(device) for r in store])  # [n_layers, n, d_model]
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
