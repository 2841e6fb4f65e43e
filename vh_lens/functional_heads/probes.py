"""Per-head linear probes of cognitive functions (paper B, step 2 of the pipeline).

:func:`probe_heads` trains a logistic-regression probe on each head's ``d_head`` features
(:mod:`~vh_lens.functional_heads.activations`), for all heads at once as one batched problem
(:func:`~vh_lens.functional_heads.logistic.fit_batched_logistic`, a batched L-BFGS):
function-vs-rest (one-vs-rest, balanced class weights) and/or multiclass (softmax). Train and test sets are split by main question
(:func:`~vh_lens.functional_heads.selection.split_by_group`), so no chain is on both sides. The
held-out accuracy is the head's score for a function. :class:`ProbeResult` holds the scores and
picks each function's heads (top-k, or the elbow of the sorted score curve) and summarises them:
sparsity, layer distribution, overlap between functions.

Example:
    >>> acts = collect_head_activations(model, subquestion_samples(items))  # doctest: +SKIP
    >>> result = probe_heads(acts, functions=COGQA_FUNCTIONS)               # doctest: +SKIP
    >>> result.functional_heads("Math Calculation")                         # doctest: +SKIP
    [(14, 3), (17, 30), ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vh_lens.core.config import resolve_config
from vh_lens.core.io import load_tensors, read_json, save_tensors, write_json
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.functional_heads.config import ProbeConfig
from vh_lens.functional_heads.logistic import fit_batched_logistic
from vh_lens.functional_heads.selection import jaccard_overlap, select_heads, split_by_group

__all__ = ["Metric", "ProbeConfig", "ProbeResult", "Source", "probe_heads"]

Source = Literal["ovr", "multiclass"]
Metric = Literal["accuracy", "balanced_accuracy"]

_PROBE_TENSORS = "probe.safetensors"
_PROBE_META = "probe.json"


# --- probes ------------------------------------------------------------------------------


def _balanced_weights(onehot: Float[Tensor, "n k"], kind: str) -> Tensor:
    n, k = onehot.shape
    count = onehot.sum(0)
    if kind == "ovr":  # per column: positives and negatives each carry half the weight
        return onehot * (n / (2 * count)) + (1 - onehot) * (n / (2 * (n - count)))
    return (onehot * (n / (k * count))).sum(1)  # per sample: its class's weight


def _resolve_functions(
    labels: Sequence[str], train: Tensor, test: Tensor, functions: Iterable[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    train_labels = {labels[i] for i in train.tolist()}
    test_labels = {labels[i] for i in test.tolist()}
    if functions is None:
        present = sorted({x for x in labels if x})
        kept = tuple(x for x in present if x in train_labels and x in test_labels)
        return kept, tuple(x for x in present if x not in kept)
    kept = tuple(dict.fromkeys(functions))
    lacking = [x for x in kept if x not in train_labels or x not in test_labels]
    if lacking:
        raise ValueError(f"functions {lacking} have no sample on the train or the test side of the split")
    return kept, ()


def _standardise(x: Tensor, train: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise each head's features with training statistics. x: [heads, n, d]."""
    mu = x[:, train].mean(1, keepdim=True)
    sd = x[:, train].std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    return (x - mu) / sd, mu.squeeze(1), sd.squeeze(1)


def _to_raw(w: Tensor, b: Tensor, mu: Tensor, sd: Tensor) -> tuple[Tensor, Tensor]:
    """Weights on standardised features -> weights on raw activations (same logits)."""
    w_raw = w / sd[:, :, None]
    return w_raw, b - einops.einsum(mu, w_raw, "h d, h d k -> h k")


def probe_heads(
    acts: HeadActivations,
    functions: Iterable[str] | None = None,
    seed: int | None = None,
    test_fraction: float | None = None,
    mode: Literal["ovr", "multiclass", "both"] | None = None,
    l2: float | None = None,
    steps: int | None = None,
    balanced: bool | None = None,
    device: torch.device | str | None = None,
    chunk_layers: int | None = None,
    *,
    config: ProbeConfig | Mapping[str, Any] | None = None,
) -> ProbeResult:
    """Train a linear probe on every head and score it on held-out main questions.

    Features are standardised per head and dimension with training statistics. Heads are fit
    all at once (:func:`~vh_lens.functional_heads.logistic.fit_batched_logistic`), a chunk of layers at a time.

    Args:
        acts: Head activations with function labels and groups.
        functions: The labels to probe, in order. ``None``: every non-empty label that has
            samples on both sides of the split (the others are listed in
            ``config["dropped_functions"]``). Samples with other labels are left out.
        seed: Seed of the group split (default 0).
        test_fraction: Fraction of groups held out (default 0.3).
        mode: ``"ovr"`` (function vs rest), ``"multiclass"`` (softmax) or ``"both"`` (default).
        l2: L2 penalty on the (standardised) weights (default 1e-3).
        steps: Maximum L-BFGS iterations (default 200).
        balanced: Weight classes inversely to their frequency (sklearn's ``"balanced"``; default on).
        device: Where to fit (default: CPU, or the activations' device).
        chunk_layers: Layers per chunk (default: as many as fit in ~256 MiB of float32).
        config: The settings as a :class:`~vh_lens.functional_heads.config.ProbeConfig` (or its
            dict); the arguments above override its fields (``None``: keep the config's).

    Returns:
        A :class:`ProbeResult`; its ``config`` holds the :class:`ProbeConfig` fields and the counts.

    Raises:
        ValueError: an explicitly requested function has no train or no test sample, fewer
            than two functions remain, or the split has fewer than two groups.
    """
    if functions is not None and not isinstance(functions, str):
        functions = tuple(functions)  # a one-off iterable, kept; a string is refused by the config
    given = {"functions": functions, "seed": seed, "test_fraction": test_fraction, "mode": mode, "l2": l2,
             "steps": steps, "balanced": balanced, "chunk_layers": chunk_layers}  # fmt: skip
    conf = resolve_config(ProbeConfig, config, {k: v for k, v in given.items() if v is not None})
    mode, l2, steps, balanced = conf.mode, conf.l2, conf.steps, conf.balanced
    train_all, test_all = split_by_group(acts.groups, conf.test_fraction, conf.seed)
    fns, dropped = _resolve_functions(acts.labels, train_all, test_all, conf.functions)
    if len(fns) < 2:
        raise ValueError(f"need at least 2 functions to probe, got {list(fns)}")
    index = {f: i for i, f in enumerate(fns)}
    keep = torch.tensor([x in index for x in acts.labels])
    train = train_all[keep[train_all]]
    test = test_all[keep[test_all]]
    if device is None:
        device = acts.acts.device if isinstance(acts.acts, Tensor) else "cpu"
    y = torch.tensor([index.get(x, -1) for x in acts.labels], device=device)
    y_tr, y_te = y[train], y[test]
    onehot_tr = F.one_hot(y_tr, len(fns)).float()
    onehot_te = F.one_hot(y_te, len(fns)).float()
    n_f, n_l, n_h, d = len(fns), acts.n_layers, acts.n_heads, acts.d_head
    do_ovr, do_mc = mode in ("ovr", "both"), mode in ("multiclass", "both")

    out: dict[str, Tensor] = {}
    if do_ovr:
        for name, shape in [
            ("ovr_accuracy", (n_f, n_l, n_h)),
            ("ovr_balanced_accuracy", (n_f, n_l, n_h)),
            ("ovr_weights", (n_f, n_l, n_h, d)),
            ("ovr_bias", (n_f, n_l, n_h)),
        ]:
            out[name] = torch.empty(shape)
    if do_mc:
        for name, shape in [
            ("multiclass_accuracy", (n_l, n_h)),
            ("multiclass_balanced_accuracy", (n_l, n_h)),
            ("multiclass_recall", (n_f, n_l, n_h)),
            ("multiclass_weights", (n_f, n_l, n_h, d)),
            ("multiclass_bias", (n_f, n_l, n_h)),
        ]:
            out[name] = torch.empty(shape)

    step = conf.chunk_layers or acts.layers_per_chunk()
    for l0 in range(0, n_l, step):
        l1 = min(n_l, l0 + step)
        x = einops.rearrange(acts.layers(l0, l1, device), "n l h d -> (l h) n d")
        x, mu, sd = _standardise(x[:, torch.cat([train, test]).to(x.device)], torch.arange(len(train), device=x.device))
        x_tr, x_te = x[:, : len(train)], x[:, len(train) :]

        def put(name: str, value: Tensor, pattern: str, l0: int = l0, l1: int = l1) -> None:
            view = einops.rearrange(value.cpu(), pattern, l=l1 - l0)
            if out[name].dim() == 2:  # [layer, head]
                out[name][l0:l1] = view
            else:  # [function, layer, head, ...]
                out[name][:, l0:l1] = view

        if do_ovr:
            sw = _balanced_weights(onehot_tr, "ovr") if balanced else None
            w, b = fit_batched_logistic(x_tr, onehot_tr, sw, kind="ovr", l2=l2, steps=steps)
            pred = (einops.einsum(x_te, w, "h n d, h d k -> h n k") + b[:, None]) > 0
            truth = onehot_te.bool()
            acc = (pred == truth).float().mean(1)
            tpr = (pred & truth).float().sum(1) / truth.float().sum(0)
            tnr = (~pred & ~truth).float().sum(1) / (~truth).float().sum(0)
            w_raw, b_raw = _to_raw(w, b, mu, sd)
            put("ovr_accuracy", acc, "(l h) k -> k l h")
            put("ovr_balanced_accuracy", (tpr + tnr) / 2, "(l h) k -> k l h")
            put("ovr_weights", w_raw, "(l h) d k -> k l h d")
            put("ovr_bias", b_raw, "(l h) k -> k l h")
        if do_mc:
            sw = _balanced_weights(onehot_tr, "softmax") if balanced else None
            w, b = fit_batched_logistic(x_tr, y_tr, sw, kind="softmax", l2=l2, steps=steps, n_classes=n_f)
            pred = (einops.einsum(x_te, w, "h n d, h d k -> h n k") + b[:, None]).argmax(-1)
            hit = (pred == y_te).float()
            recall = einops.einsum(hit, onehot_te, "h n, n k -> h k") / onehot_te.sum(0)
            w_raw, b_raw = _to_raw(w, b, mu, sd)
            put("multiclass_accuracy", hit.mean(1), "(l h) -> l h")
            put("multiclass_balanced_accuracy", recall.mean(1), "(l h) -> l h")
            put("multiclass_recall", recall, "(l h) k -> k l h")
            put("multiclass_weights", w_raw, "(l h) d k -> k l h d")
            put("multiclass_bias", b_raw, "(l h) k -> k l h")

    config = conf.to_dict() | {
        "n_train": len(train), "n_test": len(test), "dropped_functions": list(dropped),
        "train_counts": onehot_tr.sum(0).int().tolist(), "test_counts": onehot_te.sum(0).int().tolist(),
        "acts_metadata": dict(acts.metadata),
    }  # fmt: skip
    return ProbeResult(functions=fns, train_index=train.cpu(), test_index=test.cpu(), config=config, **out)


# --- the result ----------------------------------------------------------------------------


_RESULT_TENSORS = (
    "ovr_accuracy",
    "ovr_balanced_accuracy",
    "ovr_weights",
    "ovr_bias",
    "multiclass_accuracy",
    "multiclass_balanced_accuracy",
    "multiclass_recall",
    "multiclass_weights",
    "multiclass_bias",
)


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Held-out scores of per-head probes, and the functional heads they single out.

    Attributes:
        functions: The function labels, in the order of every ``function`` axis.
        train_index: ``[n_train]`` sample indices the probes were fit on.
        test_index: ``[n_test]`` held-out sample indices (no main question on both sides).
        config: Settings and counts (seed, l2, steps, per-function train/test counts, ...).
        ovr_accuracy: ``[function, layer, head]`` held-out accuracy of function-vs-rest.
        ovr_balanced_accuracy: ``[function, layer, head]`` mean of the true positive and true
            negative rates.
        ovr_weights: ``[function, layer, head, d_head]`` probe weights on raw ``hook_z``
            (standardisation folded in: ``logit = z @ w + bias``).
        ovr_bias: ``[function, layer, head]``.
        multiclass_accuracy: ``[layer, head]`` held-out accuracy of the softmax probe.
        multiclass_balanced_accuracy: ``[layer, head]`` mean per-function recall.
        multiclass_recall: ``[function, layer, head]`` held-out recall of each function.
        multiclass_weights: ``[function, layer, head, d_head]`` class weights on raw ``hook_z``.
        multiclass_bias: ``[function, layer, head]``.
    """

    functions: tuple[str, ...]
    train_index: Int[Tensor, " n_train"]
    test_index: Int[Tensor, " n_test"]
    config: Mapping[str, Any] = field(default_factory=dict)
    ovr_accuracy: Float[Tensor, "function layer head"] | None = None
    ovr_balanced_accuracy: Float[Tensor, "function layer head"] | None = None
    ovr_weights: Float[Tensor, "function layer head d_head"] | None = None
    ovr_bias: Float[Tensor, "function layer head"] | None = None
    multiclass_accuracy: Float[Tensor, "layer head"] | None = None
    multiclass_balanced_accuracy: Float[Tensor, "layer head"] | None = None
    multiclass_recall: Float[Tensor, "function layer head"] | None = None
    multiclass_weights: Float[Tensor, "function layer head d_head"] | None = None
    multiclass_bias: Float[Tensor, "function layer head"] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))
        if len(set(self.functions)) != len(self.functions) or not self.functions:
            raise ValueError(f"functions must be distinct and non-empty, got {self.functions}")
        if self.ovr_balanced_accuracy is None and self.multiclass_recall is None:
            raise ValueError("ProbeResult needs the ovr or the multiclass scores")
        ref = self.ovr_balanced_accuracy if self.ovr_balanced_accuracy is not None else self.multiclass_recall
        if ref.dim() != 3 or ref.shape[0] != len(self.functions):
            raise ValueError(f"scores must be [n_functions={len(self.functions)}, layer, head], got {tuple(ref.shape)}")
        n_f, n_l, n_h = ref.shape
        for name in _RESULT_TENSORS:
            value = getattr(self, name)
            expected = (n_l, n_h) if name.startswith("multiclass_") and "accuracy" in name else (n_f, n_l, n_h)
            if value is not None and (
                tuple(value.shape[: len(expected)]) != expected
                or value.dim() != len(expected) + name.endswith("weights")
            ):
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {expected}{' + (d_head,)' if name.endswith('weights') else ''}"
                )
        if set(self.train_index.tolist()) & set(self.test_index.tolist()):
            raise ValueError("train_index and test_index overlap")

    @property
    def n_layers(self) -> int:
        return int(self._ref.shape[1])

    @property
    def probe_config(self) -> ProbeConfig:
        """The settings the probes were fit with (fields missing from an older result: defaults)."""
        return ProbeConfig.from_dict({k: self.config[k] for k in ProbeConfig.field_names() if k in self.config})

    @property
    def n_heads(self) -> int:
        return int(self._ref.shape[2])

    @property
    def _ref(self) -> Tensor:
        return self.ovr_balanced_accuracy if self.ovr_balanced_accuracy is not None else self.multiclass_recall

    def _function_index(self, function: str) -> int:
        try:
            return self.functions.index(function)
        except ValueError:
            raise KeyError(f"unknown function {function!r}; known: {list(self.functions)}") from None

    def scores(
        self, function: str, metric: Metric = "balanced_accuracy", source: Source | None = None
    ) -> Float[Tensor, "layer head"]:
        """One function's score per head.

        Args:
            function: The label.
            metric: ``"balanced_accuracy"`` (default; robust to the imbalance of one function
                against the rest) or ``"accuracy"``.
            source: ``"ovr"`` (function-vs-rest probe; default when fit) or ``"multiclass"``
                (the softmax probe's held-out recall of the function, for either metric).
        """
        i = self._function_index(function)
        source = source or ("ovr" if self.ovr_accuracy is not None else "multiclass")
        if metric not in ("accuracy", "balanced_accuracy"):
            raise ValueError(f"metric must be 'accuracy' or 'balanced_accuracy', got {metric!r}")
        if source == "ovr":
            table = self.ovr_accuracy if metric == "accuracy" else self.ovr_balanced_accuracy
        elif source == "multiclass":
            table = self.multiclass_recall
        else:
            raise ValueError(f"source must be 'ovr' or 'multiclass', got {source!r}")
        if table is None:
            raise ValueError(f"this result has no {source} probe (mode={self.config.get('mode')!r})")
        return table[i]

    def functional_heads(
        self,
        function: str,
        k: int | None = None,
        method: Literal["elbow", "topk"] = "elbow",
        metric: Metric = "balanced_accuracy",
        source: Source | None = None,
    ) -> list[tuple[int, int]]:
        """A function's heads, best first: :func:`~vh_lens.functional_heads.selection.select_heads`
        of its :meth:`scores` (top ``k``, or the heads before the elbow of the sorted curve).

        Returns:
            ``[(layer, head), ...]``.
        """
        return select_heads(self.scores(function, metric, source), k=k, method=method)

    def head_mask(self, function: str, **selection: Any) -> Bool[Tensor, "layer head"]:
        """``[layer, head]`` True at the function's heads (``selection``: see :meth:`functional_heads`)."""
        mask = torch.zeros(self.n_layers, self.n_heads, dtype=torch.bool)
        for layer, head in self.functional_heads(function, **selection):
            mask[layer, head] = True
        return mask

    def _masks(self, **selection: Any) -> Bool[Tensor, "function layer head"]:
        return torch.stack([self.head_mask(f, **selection) for f in self.functions])

    def sparsity(self, **selection: Any) -> dict[str, float]:
        """Fraction of all heads selected, per function."""
        fractions = self._masks(**selection).float().mean((1, 2))
        return dict(zip(self.functions, fractions.tolist(), strict=True))

    def layer_distribution(self, function: str, **selection: Any) -> Int[Tensor, " layer"]:
        """``[n_layers]`` number of the function's heads in each layer."""
        return self.head_mask(function, **selection).sum(1)

    def overlap(self, **selection: Any) -> Float[Tensor, "function function"]:
        """``[n_functions, n_functions]`` Jaccard index of the functions' head sets."""
        return jaccard_overlap(self._masks(**selection))

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (probe, function, layer, head): scores and rank by balanced accuracy (1 = best).

        Multiclass rows carry ``function=None`` and the overall accuracy and balanced accuracy.
        """
        rows: list[dict[str, Any]] = []
        layer, head = torch.meshgrid(torch.arange(self.n_layers), torch.arange(self.n_heads), indexing="ij")
        tables: list[tuple[str, str | None, Tensor, Tensor]] = []
        if self.ovr_accuracy is not None:
            tables += [
                ("ovr", f, self.ovr_accuracy[i], self.ovr_balanced_accuracy[i]) for i, f in enumerate(self.functions)
            ]
        if self.multiclass_accuracy is not None:
            tables.append(("multiclass", None, self.multiclass_accuracy, self.multiclass_balanced_accuracy))
        for probe, function, acc, bal in tables:
            rank = torch.empty(bal.numel(), dtype=torch.long)
            rank[torch.sort(bal.flatten(), descending=True, stable=True).indices] = torch.arange(1, bal.numel() + 1)
            rows += [
                {
                    "probe": probe,
                    "function": function,
                    "layer": int(l_),
                    "head": int(h_),
                    "accuracy": float(a),
                    "balanced_accuracy": float(b),
                    "rank": int(r),
                }
                for l_, h_, a, b, r in zip(
                    layer.flatten(), head.flatten(), acc.flatten(), bal.flatten(), rank, strict=True
                )
            ]
        return rows

    def save(self, directory: str | Path) -> Path:
        """Write ``probe.safetensors`` and ``probe.json`` (each atomically; JSON last)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: getattr(self, name).contiguous() for name in _RESULT_TENSORS if getattr(self, name) is not None
        }
        tensors |= {"train_index": self.train_index.contiguous(), "test_index": self.test_index.contiguous()}
        save_tensors(directory / _PROBE_TENSORS, tensors)
        write_json(
            directory / _PROBE_META, {"functions": list(self.functions), "config": dict(self.config), "format": 1}
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResult:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        meta = read_json(directory / _PROBE_META, what="ProbeResult", version=1, version_key="format")
        tensors = load_tensors(directory / _PROBE_TENSORS)
        return cls(functions=tuple(meta["functions"]), config=meta["config"], **tensors)
