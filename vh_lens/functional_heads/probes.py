"""Functional heads (paper B): per-head linear probes for cognitive-function labels.

The pipeline:

1. :func:`collect_head_activations` records every head's output before ``W_O``
   (``blocks.{l}.attn.hook_z``) at one position per sample (the last prompt position, or the
   mean over the positions that predict the gold answer's tokens), into a
   :class:`HeadActivations` (in memory, or streamed to a float16 ``.npy`` memmap).
2. :func:`probe_heads` trains a logistic-regression probe on each head's ``d_head`` features,
   for all heads at once as one batched problem: function-vs-rest (one-vs-rest, balanced class
   weights) and/or multiclass (softmax). Train and test sets are split by main question, so no
   chain is on both sides. The held-out accuracy is the head's score for a function.
3. :class:`ProbeResult` picks each function's heads (top-k, or the elbow of the sorted score
   curve) and summarises them: sparsity, layer distribution, overlap between functions.
4. :func:`mean_difference_directions` gives the group's emphasis direction per head and
   function (normalised difference of means) and the spread along it.

Example:
    >>> acts = collect_head_activations(model, subquestion_samples(items))  # doctest: +SKIP
    >>> result = probe_heads(acts, functions=COGQA_FUNCTIONS)               # doctest: +SKIP
    >>> result.functional_heads("Math Calculation")                         # doctest: +SKIP
    [(14, 3), (17, 30), ...]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.utils import get_act_name

from vh_lens.core.io import atomic_path, load_tensors, read_json, save_tensors, write_json
from vh_lens.data.sample import Sample

__all__ = [
    "FunctionDirections",
    "HeadActivations",
    "ProbeResult",
    "collect_head_activations",
    "elbow_index",
    "fit_batched_logistic",
    "mean_difference_directions",
    "probe_heads",
    "split_by_group",
]

Position = Literal["last_prompt", "answer_mean"]
Source = Literal["ovr", "multiclass"]
Metric = Literal["accuracy", "balanced_accuracy"]

_ACTS_FILE = "acts.npy"
_ACTS_META = "head_activations.json"
_PROBE_TENSORS = "probe.safetensors"
_PROBE_META = "probe.json"


# --- activations --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeadActivations:
    """Per-head outputs before ``W_O`` at one position per sample, with their labels.

    Attributes:
        acts: ``[n_samples, n_layers, n_heads, d_head]`` float16/float32 tensor, or numpy
            array / read-only memmap (large sets stay on disk).
        labels: ``n_samples`` function labels (``""`` where a sample had none).
        groups: ``n_samples`` group ids (the main question): train/test splits never cut one.
        metadata: JSON-serialisable facts about the collection (position, model, ...).
    """

    acts: Float[Tensor, "n layer head d_head"] | np.ndarray
    labels: tuple[str, ...]
    groups: tuple[Hashable, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.acts.shape) != 4:
            raise ValueError(f"acts must be [n_samples, n_layers, n_heads, d_head], got shape {tuple(self.acts.shape)}")
        if isinstance(self.acts, Tensor):
            floating = self.acts.dtype in (torch.float16, torch.float32)
        else:
            floating = np.dtype(self.acts.dtype) in (np.dtype(np.float16), np.dtype(np.float32))
        if not floating:
            raise ValueError(f"acts must be float16 or float32, got {self.acts.dtype}")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "groups", tuple(self.groups))
        n = self.acts.shape[0]
        if len(self.labels) != n or len(self.groups) != n:
            raise ValueError(f"{n} samples but {len(self.labels)} labels and {len(self.groups)} groups")

    @property
    def n_samples(self) -> int:
        return int(self.acts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.acts.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.acts.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.acts.shape[3])

    def layers(self, start: int, stop: int, device: torch.device | str | None = None) -> Float[Tensor, "n layer head d_head"]:
        """Layers ``start:stop`` of every sample as a float32 tensor (read from disk if a memmap)."""
        chunk = self.acts[:, start:stop]
        tensor = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))  # a writable copy
        return tensor.to(device=device, dtype=torch.float32)

    def save(self, directory: str | Path) -> Path:
        """Write ``acts.npy`` (loadable as a memmap) and ``head_activations.json``, atomically.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        array = self.acts.detach().cpu().numpy() if isinstance(self.acts, Tensor) else self.acts
        with atomic_path(directory / _ACTS_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
        self._write_meta(directory)
        return directory

    def _write_meta(self, directory: Path) -> None:
        meta = {"labels": list(self.labels), "groups": list(self.groups), "metadata": dict(self.metadata),
                "shape": list(self.acts.shape), "format": 1}
        write_json(directory / _ACTS_META, meta)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> HeadActivations:
        """Read what :meth:`save` (or a streamed :func:`collect_head_activations`) wrote.

        Args:
            directory: The folder.
            mmap: Keep the activations on disk as a read-only numpy memmap (else a tensor).
        """
        directory = Path(directory)
        meta = read_json(directory / _ACTS_META)
        array = np.load(directory / _ACTS_FILE, mmap_mode="r" if mmap else None)
        if list(array.shape) != meta["shape"]:
            raise ValueError(f"{directory}: acts shape {array.shape} does not match its metadata {meta['shape']}")
        acts = array if mmap else torch.from_numpy(array)
        return cls(acts=acts, labels=tuple(meta["labels"]), groups=tuple(meta["groups"]), metadata=meta["metadata"])


def _position_weights(layouts: Sequence[Any], position: Position, seq_len: int) -> Float[Tensor, "batch pos"]:
    """``[batch, seq_len]`` averaging weights over the positions that are read for each sample.

    ``answer_mean`` reads the positions that *predict* the gold answer's tokens under teacher
    forcing: the query position (predicting the first answer token) and every answer token but
    the last -- the states the CognitiveMirrors collector records while generating the answer.
    A one-token answer therefore reads exactly the query position.
    """
    weights = torch.zeros(len(layouts), seq_len)
    for i, layout in enumerate(layouts):
        q = int(layout.query_position)
        if position == "last_prompt":
            weights[i, q] = 1.0
            continue
        answer = getattr(layout, "answer_positions", None)
        if answer is None or len(answer) == 0:
            raise ValueError(
                f"sample {i}: position='answer_mean' needs layout.answer_positions: the gold answer "
                "tokens appended by model.prepare_samples(samples, with_answers=True) (is the answer empty?)"
            )
        answer = torch.as_tensor(answer, dtype=torch.long).flatten()
        expected = torch.arange(q + 1, q + 1 + answer.numel())
        if not torch.equal(answer, expected):
            raise ValueError(f"sample {i}: answer_positions {answer.tolist()} do not follow query_position {q}")
        read = torch.cat([torch.tensor([q]), answer[:-1]])
        weights[i, read] = 1.0 / read.numel()
    return weights


def _store_z(z: Float[Tensor, "batch pos head d_head"], *, hook: Any, layer: int, weights: Tensor, out: Tensor) -> None:
    out[:, layer] = einops.einsum(weights.to(z.device), z.float(), "b p, b p h d -> b h d").to(out.device)


def _as_samples(items_or_samples: Sequence[Any], context: str) -> list[Sample]:
    from vh_lens.data.cogvision import CogItem, subquestion_samples

    if all(isinstance(x, Sample) for x in items_or_samples):
        return list(items_or_samples)
    if all(isinstance(x, CogItem) for x in items_or_samples):
        return subquestion_samples(items_or_samples, context=context)  # type: ignore[arg-type]
    raise ValueError("items_or_samples must be all Sample or all CogItem objects")


def collect_head_activations(
    model: Any,
    items_or_samples: Sequence[Any],
    position: Position = "last_prompt",
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float16,
    context: Literal["chain", "none"] = "chain",
) -> HeadActivations:
    """Record every head's ``hook_z`` at one position per sample.

    Args:
        model: A vh_lens model wrapper: ``model.cfg`` (``n_layers``, ``n_heads``, ``d_head``),
            ``model.prepare_samples(samples)`` returning a batch with ``.layout`` (one
            :class:`~vh_lens.core.layout.TokenLayout` per sample), and
            ``model.run_with_hooks(batch, fwd_hooks=...)``. For ``"answer_mean"``,
            ``model.prepare_samples(samples, with_answers=True)`` must append each sample's
            gold answer tokens right after the prompt and give each layout
            ``answer_positions`` (``[n_answer_tokens]`` positions, right after
            ``query_position``, which stays the last prompt position).
        items_or_samples: :class:`~vh_lens.data.Sample` objects (``metadata["function"]`` is
            the label, ``metadata["group"]`` the group, else the sample's index), or
            :class:`~vh_lens.data.cogvision.CogItem` objects (turned into one sample per
            subquestion with :func:`~vh_lens.data.cogvision.subquestion_samples`).
        position: ``"last_prompt"``: the query position (last prompt token);
            ``"answer_mean"``: the mean over the positions that predict the gold answer's
            tokens (teacher forcing): the query position and all answer tokens but the last.
        batch_size: Samples per forward pass.
        out_dir: If given, stream the activations to ``out_dir/acts.npy`` (a float16 memmap;
            memory stays at one batch) and return them memory-mapped.
        progress: Show a progress bar.
        dtype: Storage dtype (float16 or float32; the hook reads in float32).
        context: For CogItems, the subquestion context (see ``subquestion_samples``).

    Returns:
        ``acts [n_samples, n_layers, n_heads, d_head]`` with labels and groups.

    Example:
        >>> acts = collect_head_activations(model, items, out_dir="runs/cogqa_acts")  # doctest: +SKIP
    """
    if position not in ("last_prompt", "answer_mean"):
        raise ValueError(f"position must be 'last_prompt' or 'answer_mean', got {position!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
    samples = _as_samples(items_or_samples, context)
    if not samples:
        raise ValueError("no samples to collect")
    n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    shape = (len(samples), n_layers, n_heads, d_head)
    labels = tuple(str(s.metadata.get("function") or "") for s in samples)
    groups = tuple(s.metadata.get("group", i) for i, s in enumerate(samples))
    metadata = {"position": position, "hook": "attn.hook_z", "n_samples": len(samples)}

    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="head activations", unit="batch")

    def fill(store: Tensor | np.ndarray) -> None:
        with torch.no_grad():
            for start in starts:
                chunk = samples[start : start + batch_size]
                if position == "answer_mean":
                    batch = model.prepare_samples(chunk, with_answers=True)
                else:
                    batch = model.prepare_samples(chunk)
                weights = _position_weights(batch.layout, position, int(batch.layout[0].seq_len))
                out = torch.empty(len(chunk), n_layers, n_heads, d_head)
                hooks = [(get_act_name("z", layer), partial(_store_z, layer=layer, weights=weights, out=out))
                         for layer in range(n_layers)]
                model.run_with_hooks(batch, fwd_hooks=hooks)
                if isinstance(store, Tensor):
                    store[start : start + len(chunk)] = out.to(dtype)
                else:
                    store[start : start + len(chunk)] = out.numpy().astype(store.dtype)

    if out_dir is None:
        acts = torch.empty(shape, dtype=dtype)
        fill(acts)
        return HeadActivations(acts=acts, labels=labels, groups=groups, metadata=metadata)

    out_dir = Path(out_dir)
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    # streamed into a temporary file beside acts.npy, renamed over it once complete
    with atomic_path(out_dir / _ACTS_FILE) as partial_path:
        store = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np_dtype, shape=shape)
        try:
            fill(store)
            store.flush()
        finally:
            del store  # drop the memmap before its file is renamed (or removed on error)
    result = HeadActivations(acts=np.load(out_dir / _ACTS_FILE, mmap_mode="r"), labels=labels, groups=groups, metadata=metadata)
    result._write_meta(out_dir)
    return result


# --- splits and the batched probe -----------------------------------------------------------


def split_by_group(
    groups: Sequence[Hashable], test_fraction: float = 0.3, seed: int = 0
) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
    """Split sample indices so that no group is on both sides.

    A fraction ``test_fraction`` of the *groups* (rounded, at least one, and at least one left
    for training) goes to the test side, chosen by a seeded permutation of the sorted group ids.

    Returns:
        ``(train_indices, test_indices)``, each sorted.

    Raises:
        ValueError: fewer than two groups, or ``test_fraction`` outside ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = sorted(set(groups), key=lambda g: (type(g).__name__, g))
    if len(unique) < 2:
        raise ValueError(f"need at least 2 groups to split, got {len(unique)}")
    n_test = min(max(round(test_fraction * len(unique)), 1), len(unique) - 1)
    perm = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    test_groups = {unique[int(i)] for i in perm[:n_test]}
    is_test = torch.tensor([g in test_groups for g in groups])
    return (~is_test).nonzero().flatten(), is_test.nonzero().flatten()


def _batched_lbfgs(
    fun: Callable[[Tensor], Tensor], theta: Float[Tensor, "p m"], steps: int, history: int = 10, tol: float = 1e-6
) -> Float[Tensor, "p m"]:
    """Minimise ``p`` independent smooth convex functions at once with L-BFGS.

    ``fun(theta)`` returns the ``[p]`` objective values of ``theta [p, m]``; problem ``i``
    depends on row ``i`` only. Each problem keeps its own curvature pairs, initial scaling and
    backtracking (Armijo) step, and stops when its gradient's largest entry is below ``tol``:
    the batch is ``p`` separate L-BFGS runs done with one tensor program.
    """
    p, m = theta.shape
    s_hist = theta.new_zeros(history, p, m)
    y_hist = theta.new_zeros(history, p, m)
    rho = theta.new_zeros(history, p)  # 0 marks an empty slot: it drops out of the recursion
    gamma = theta.new_ones(p)

    def value_and_grad(th: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            th = th.detach().requires_grad_(True)
            f = fun(th)
            (g,) = torch.autograd.grad(f.sum(), th)
        return f.detach(), g

    f, g = value_and_grad(theta)
    slot = 0
    for _ in range(steps):
        active = g.abs().amax(1) > tol
        if not bool(active.any()):
            break
        # two-loop recursion, newest pair first
        q = g.clone()
        alphas = []
        for j in range(history):
            k = (slot - 1 - j) % history
            a = rho[k] * (s_hist[k] * q).sum(1)
            q -= a[:, None] * y_hist[k]
            alphas.append((k, a))
        r = gamma[:, None] * q
        for k, a in reversed(alphas):
            beta = rho[k] * (y_hist[k] * r).sum(1)
            r += s_hist[k] * (a - beta)[:, None]
        direction = -r
        slope = (g * direction).sum(1)
        bad = slope >= 0  # not a descent direction: restart that problem from the gradient
        if bool(bad.any()):
            direction[bad] = -g[bad]
            rho[:, bad] = 0.0
            slope = (g * direction).sum(1)
        direction[~active] = 0.0
        slope[~active] = 0.0
        # backtracking line search, per problem
        # (float noise allowance: near the optimum f(theta + step) and f(theta) agree to rounding)
        t = theta.new_ones(p)
        slack = 4 * torch.finfo(f.dtype).eps * (f.abs() + 1)
        for _ in range(30):
            ok = (fun(theta + t[:, None] * direction) <= f + 1e-4 * t * slope + slack) | ~active
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        step = t[:, None] * direction
        theta = theta + step
        f_new, g_new = value_and_grad(theta)
        y = g_new - g
        sy = (step * y).sum(1)
        good = sy > 1e-10
        s_hist[slot], y_hist[slot] = step, y
        rho[slot] = torch.where(good, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma = torch.where(good, sy / (y * y).sum(1).clamp_min(1e-20), gamma)
        slot = (slot + 1) % history
        f, g = f_new, g_new
    return theta.detach()


def fit_batched_logistic(
    x: Float[Tensor, "batch n d"],
    targets: Float[Tensor, "n k"] | Int[Tensor, " n"],
    sample_weight: Float[Tensor, "n k"] | Float[Tensor, " n"] | None = None,
    kind: Literal["ovr", "softmax"] = "ovr",
    l2: float = 1e-3,
    steps: int = 200,
    n_classes: int | None = None,
    tol: float = 1e-5,
) -> tuple[Float[Tensor, "batch d k"], Float[Tensor, "batch k"]]:
    """Fit one L2-regularised logistic regression per batch entry (head), all at once.

    Minimises, independently for every batch entry ``b`` (and, for ``"ovr"``, every column
    ``k``): ``(1/n) sum_i s_i loss(x_bi . w + c, y_i) + (l2/2) |w|^2`` (bias not penalised),
    where ``loss`` is the binary (``"ovr"``) or softmax cross-entropy and ``s_i`` the sample
    weights. Every problem runs its own L-BFGS (own history and line search) inside one
    batched tensor program, so a slow head does not hold the others back.

    Args:
        x: ``[batch, n, d]`` features (standardise them first).
        targets: ``"ovr"``: ``[n, k]`` 0/1 targets, one binary problem per column;
            ``"softmax"``: ``[n]`` class indices.
        sample_weight: ``[n, k]`` (ovr) or ``[n]`` (softmax); ones when ``None``.
        kind: ``"ovr"`` or ``"softmax"``.
        l2: Penalty on the weights.
        steps: Maximum L-BFGS iterations.
        n_classes: Number of classes for ``"softmax"`` (default ``targets.max() + 1``).
        tol: Stop a problem when its gradient's largest entry is below this.

    Returns:
        ``(weights [batch, d, k], bias [batch, k])``.

    Example:
        >>> w, b = fit_batched_logistic(torch.randn(6, 50, 4), torch.randint(0, 3, (50,)), kind="softmax")
        >>> w.shape, b.shape
        (torch.Size([6, 4, 3]), torch.Size([6, 3]))
    """
    batch, n, d = x.shape
    if kind == "ovr":
        targets = targets.to(x)
        k = targets.shape[1]
    elif kind == "softmax":
        targets = targets.long().to(x.device)
        k = int(n_classes if n_classes is not None else targets.max() + 1)
    else:
        raise ValueError(f"kind must be 'ovr' or 'softmax', got {kind!r}")
    weight = torch.ones(targets.shape, device=x.device) if sample_weight is None else sample_weight.to(x)

    if kind == "ovr":  # batch * k binary problems, parameters [w (d), bias]

        def fun(theta: Tensor) -> Tensor:
            wb = theta.view(batch, k, d + 1)
            logits = einops.einsum(x, wb[..., :d], "b n d, b k d -> b n k") + wb[:, None, :, d]
            loss = F.softplus(logits) - targets * logits  # binary cross-entropy with logits
            data = (loss * weight).sum(1) / n
            return (data + 0.5 * l2 * (wb[..., :d] ** 2).sum(-1)).flatten()

        theta = _batched_lbfgs(fun, x.new_zeros(batch * k, d + 1), steps, tol=tol).view(batch, k, d + 1)
        return einops.rearrange(theta[..., :d], "b k d -> b d k"), theta[..., d]

    onehot = F.one_hot(targets, k).to(x)

    def fun(theta: Tensor) -> Tensor:  # batch softmax problems, parameters [W (d x k), bias (k)]
        wb = theta.view(batch, d + 1, k)
        logits = einops.einsum(x, wb[:, :d], "b n d, b d k -> b n k") + wb[:, None, d]
        loss = -(logits.log_softmax(-1) * onehot).sum(-1)  # softmax cross-entropy
        return (loss * weight).sum(1) / n + 0.5 * l2 * (wb[:, :d] ** 2).sum((1, 2))

    theta = _batched_lbfgs(fun, x.new_zeros(batch, (d + 1) * k), steps, tol=tol).view(batch, d + 1, k)
    return theta[:, :d], theta[:, d]


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


def _chunk_layers(acts: HeadActivations, budget_bytes: int = 1 << 28) -> int:
    per_layer = acts.n_samples * acts.n_heads * acts.d_head * 4
    return max(1, min(acts.n_layers, budget_bytes // max(per_layer, 1)))


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
    seed: int = 0,
    test_fraction: float = 0.3,
    mode: Literal["ovr", "multiclass", "both"] = "both",
    l2: float = 1e-3,
    steps: int = 200,
    balanced: bool = True,
    device: torch.device | str | None = None,
    chunk_layers: int | None = None,
) -> ProbeResult:
    """Train a linear probe on every head and score it on held-out main questions.

    Features are standardised per head and dimension with training statistics. Heads are fit
    all at once (:func:`fit_batched_logistic`), a chunk of layers at a time.

    Args:
        acts: Head activations with function labels and groups.
        functions: The labels to probe, in order. ``None``: every non-empty label that has
            samples on both sides of the split (the others are listed in
            ``config["dropped_functions"]``). Samples with other labels are left out.
        seed: Seed of the group split.
        test_fraction: Fraction of groups held out.
        mode: ``"ovr"`` (function vs rest), ``"multiclass"`` (softmax) or ``"both"``.
        l2: L2 penalty on the (standardised) weights.
        steps: Maximum L-BFGS iterations.
        balanced: Weight classes inversely to their frequency (sklearn's ``"balanced"``).
        device: Where to fit (default: CPU, or the activations' device).
        chunk_layers: Layers per chunk (default: as many as fit in ~256 MiB of float32).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: an explicitly requested function has no train or no test sample, fewer
            than two functions remain, or the split has fewer than two groups.
    """
    if mode not in ("ovr", "multiclass", "both"):
        raise ValueError(f"mode must be 'ovr', 'multiclass' or 'both', got {mode!r}")
    train_all, test_all = split_by_group(acts.groups, test_fraction, seed)
    fns, dropped = _resolve_functions(acts.labels, train_all, test_all, functions)
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
        for name, shape in [("ovr_accuracy", (n_f, n_l, n_h)), ("ovr_balanced_accuracy", (n_f, n_l, n_h)),
                            ("ovr_weights", (n_f, n_l, n_h, d)), ("ovr_bias", (n_f, n_l, n_h))]:
            out[name] = torch.empty(shape)
    if do_mc:
        for name, shape in [("multiclass_accuracy", (n_l, n_h)), ("multiclass_balanced_accuracy", (n_l, n_h)),
                            ("multiclass_recall", (n_f, n_l, n_h)), ("multiclass_weights", (n_f, n_l, n_h, d)),
                            ("multiclass_bias", (n_f, n_l, n_h))]:
            out[name] = torch.empty(shape)

    step = chunk_layers or _chunk_layers(acts)
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

    config = {"seed": seed, "test_fraction": test_fraction, "mode": mode, "l2": l2, "steps": steps,
              "balanced": balanced, "n_train": len(train), "n_test": len(test), "dropped_functions": list(dropped),
              "train_counts": onehot_tr.sum(0).int().tolist(), "test_counts": onehot_te.sum(0).int().tolist(),
              "acts_metadata": dict(acts.metadata)}
    return ProbeResult(functions=fns, train_index=train.cpu(), test_index=test.cpu(), config=config, **out)


# --- selection -----------------------------------------------------------------------------


def elbow_index(scores: Sequence[float] | Tensor) -> int:
    """Index of the elbow of a curve: the point farthest from the chord joining its ends.

    For scores sorted in decreasing order, the heads *before* the elbow are the selected ones
    (CognitiveMirrors' ``find_elbow_point``: top-k with ``k`` = this index). The perpendicular
    distance to a fixed line is the vertical gap times a constant, so the result does not
    depend on how the axes are scaled. Ties go to the first point.

    Args:
        scores: ``[n]`` the curve (``n >= 1``).

    Returns:
        The index in ``0 .. n-1`` (0 for curves of fewer than 3 points and for straight lines).
    """
    y = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if y.numel() == 0:
        raise ValueError("elbow_index needs a non-empty curve")
    if y.numel() < 3:
        return 0
    x = torch.arange(y.numel(), dtype=torch.float64)
    line = torch.stack([x[-1] - x[0], y[-1] - y[0]])
    line = line / line.norm()
    vec = torch.stack([x - x[0], y - y[0]], dim=1)
    dist = (vec - (vec @ line)[:, None] * line).norm(dim=1)
    if float(dist.max()) <= 1e-9 * float(vec.abs().max()):  # a straight line has no elbow
        return 0
    return int(dist.argmax())


_RESULT_TENSORS = ("ovr_accuracy", "ovr_balanced_accuracy", "ovr_weights", "ovr_bias", "multiclass_accuracy",
                   "multiclass_balanced_accuracy", "multiclass_recall", "multiclass_weights", "multiclass_bias")


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
            if value is not None and (tuple(value.shape[: len(expected)]) != expected or value.dim() != len(expected) + name.endswith("weights")):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {expected}{' + (d_head,)' if name.endswith('weights') else ''}")
        if set(self.train_index.tolist()) & set(self.test_index.tolist()):
            raise ValueError("train_index and test_index overlap")

    @property
    def n_layers(self) -> int:
        return int(self._ref.shape[1])

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

    def scores(self, function: str, metric: Metric = "balanced_accuracy", source: Source | None = None) -> Float[Tensor, "layer head"]:
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
        """A function's heads, best first.

        Heads are sorted by :meth:`scores` (decreasing; ties by layer then head). With ``k``
        (or ``method="topk"``, which needs ``k``) the first ``k`` are returned; with
        ``method="elbow"`` the heads before :func:`elbow_index` of the sorted curve (at
        least one).

        Returns:
            ``[(layer, head), ...]``.
        """
        flat = self.scores(function, metric, source).flatten()
        order = torch.sort(flat, descending=True, stable=True).indices
        if k is not None:
            if not 0 < k <= flat.numel():
                raise ValueError(f"k must be in 1..{flat.numel()}, got {k}")
            n = k
        elif method == "elbow":
            n = max(elbow_index(flat[order]), 1)
        elif method == "topk":
            raise ValueError("method='topk' needs k")
        else:
            raise ValueError(f"method must be 'elbow' or 'topk', got {method!r}")
        return [(int(i) // self.n_heads, int(i) % self.n_heads) for i in order[:n]]

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
        masks = einops.rearrange(self._masks(**selection), "f l h -> f (l h)").float()
        inter = masks @ masks.T
        union = masks.sum(1)[:, None] + masks.sum(1)[None, :] - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (probe, function, layer, head): scores and rank by balanced accuracy (1 = best).

        Multiclass rows carry ``function=None`` and the overall accuracy and balanced accuracy.
        """
        rows: list[dict[str, Any]] = []
        layer, head = torch.meshgrid(torch.arange(self.n_layers), torch.arange(self.n_heads), indexing="ij")
        tables: list[tuple[str, str | None, Tensor, Tensor]] = []
        if self.ovr_accuracy is not None:
            tables += [("ovr", f, self.ovr_accuracy[i], self.ovr_balanced_accuracy[i]) for i, f in enumerate(self.functions)]
        if self.multiclass_accuracy is not None:
            tables.append(("multiclass", None, self.multiclass_accuracy, self.multiclass_balanced_accuracy))
        for probe, function, acc, bal in tables:
            rank = torch.empty(bal.numel(), dtype=torch.long)
            rank[torch.sort(bal.flatten(), descending=True, stable=True).indices] = torch.arange(1, bal.numel() + 1)
            rows += [{"probe": probe, "function": function, "layer": int(l_), "head": int(h_), "accuracy": float(a),
                      "balanced_accuracy": float(b), "rank": int(r)}
                     for l_, h_, a, b, r in zip(layer.flatten(), head.flatten(), acc.flatten(), bal.flatten(), rank, strict=True)]
        return rows

    def save(self, directory: str | Path) -> Path:
        """Write ``probe.safetensors`` and ``probe.json`` (each atomically; JSON last)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in _RESULT_TENSORS if getattr(self, name) is not None}
        tensors |= {"train_index": self.train_index.contiguous(), "test_index": self.test_index.contiguous()}
        save_tensors(directory / _PROBE_TENSORS, tensors)
        write_json(directory / _PROBE_META, {"functions": list(self.functions), "config": dict(self.config), "format": 1})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ProbeResult:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        meta = read_json(directory / _PROBE_META)
        tensors = load_tensors(directory / _PROBE_TENSORS)
        return cls(functions=tuple(meta["functions"]), config=meta["config"], **tensors)


# --- emphasis directions -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FunctionDirections:
    """Per head and function, a unit direction in ``hook_z`` space and the spread along it.

    Attributes:
        functions: Labels of the ``function`` axis.
        u: ``[function, layer, head, d_head]`` unit vectors.
        sigma: ``[function, layer, head]`` standard deviation of ``z @ u`` over the samples used.
    """

    functions: tuple[str, ...]
    u: Float[Tensor, "function layer head d_head"]
    sigma: Float[Tensor, "function layer head"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))
        if self.u.dim() != 4 or self.u.shape[:3] != self.sigma.shape or self.u.shape[0] != len(self.functions):
            raise ValueError(f"u {tuple(self.u.shape)} and sigma {tuple(self.sigma.shape)} do not match {len(self.functions)} functions")

    def __getitem__(self, function: str) -> tuple[Tensor, Tensor]:
        """``(u [layer, head, d_head], sigma [layer, head])`` of one function."""
        i = self.functions.index(function)
        return self.u[i], self.sigma[i]


def mean_difference_directions(
    acts: HeadActivations,
    functions: Iterable[str] | None = None,
    correct: Sequence[bool] | Tensor | None = None,
    indices: Tensor | Sequence[int] | None = None,
    chunk_layers: int | None = None,
) -> FunctionDirections:
    """The group's emphasis direction: the normalised difference of two class means per head.

    Without ``correct``: ``u_f = normalise(mean(z | label f) - mean(z | label != f))``.
    With ``correct`` (one bool per sample, e.g. whether the model answered right):
    ``u_f = normalise(mean(z | label f, correct) - mean(z | label f, incorrect))``, the
    paper's correct-vs-incorrect direction within each function. ``sigma`` is the standard
    deviation of ``z @ u_f`` over all samples used (as in inference-time intervention), so an
    emphasis hook adds ``alpha * sigma * u`` to a head's ``hook_z``.

    Args:
        acts: Head activations.
        functions: Labels (default: all non-empty labels, sorted).
        correct: Optional ``[n_samples]`` correctness flags.
        indices: Samples to use (e.g. ``ProbeResult.train_index``); all by default.
        chunk_layers: Layers read at a time.

    Raises:
        ValueError: a side of a difference has no sample.
    """
    idx = torch.arange(acts.n_samples) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    labels = [acts.labels[i] for i in idx.tolist()]
    fns = tuple(functions) if functions is not None else tuple(sorted({x for x in labels if x}))
    member = torch.tensor([[x == f for f in fns] for x in labels], dtype=torch.float32)  # [n, F]
    if correct is None:
        pos, neg = member, 1 - member
    else:
        ok = torch.as_tensor(correct, dtype=torch.bool)[idx].float()[:, None]
        pos, neg = member * ok, member * (1 - ok)
    empty = [f for f, a, b in zip(fns, pos.sum(0).tolist(), neg.sum(0).tolist(), strict=True) if a == 0 or b == 0]
    if empty:
        raise ValueError(f"functions {empty} have no sample on one side of the mean difference")
    u = torch.empty(len(fns), acts.n_layers, acts.n_heads, acts.d_head)
    sigma = torch.empty(len(fns), acts.n_layers, acts.n_heads)
    step = chunk_layers or _chunk_layers(acts)
    for l0 in range(0, acts.n_layers, step):
        l1 = min(acts.n_layers, l0 + step)
        z = acts.layers(l0, l1)[idx]
        diff = einops.einsum(pos / pos.sum(0), z, "n f, n l h d -> f l h d") - einops.einsum(neg / neg.sum(0), z, "n f, n l h d -> f l h d")
        unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj = einops.einsum(z, unit, "n l h d, f l h d -> f n l h")
        u[:, l0:l1], sigma[:, l0:l1] = unit, proj.std(1, unbiased=False)
    return FunctionDirections(functions=fns, u=u, sigma=sigma)
