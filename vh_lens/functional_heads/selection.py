"""Which heads and samples (paper B, step 3): group splits, functional heads, emphasis directions.

- :func:`split_by_group` splits sample indices so that no main question is on both sides;
- :func:`select_heads` picks a function's heads from its ``[layer, head]`` probe scores (top-k,
  or the heads before :func:`elbow_index` of the sorted curve), :func:`jaccard_overlap`
  compares head sets (:class:`~vh_lens.functional_heads.probes.ProbeResult` uses both);
- :func:`mean_difference_directions` gives the group's emphasis direction per head and function
  (normalised difference of means) and the spread along it, as :class:`FunctionDirections`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vh_lens.functional_heads.activations import HeadActivations

__all__ = [
    "FunctionDirections",
    "elbow_index",
    "jaccard_overlap",
    "mean_difference_directions",
    "select_heads",
    "split_by_group",
]


# --- splits --------------------------------------------------------------------------------


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


def select_heads(
    scores: Float[Tensor, "layer head"], k: int | None = None, method: Literal["elbow", "topk"] = "elbow"
) -> list[tuple[int, int]]:
    """Heads sorted by score (decreasing; ties by layer then head), cut at ``k`` or at the elbow.

    With ``k`` (or ``method="topk"``, which needs ``k``) the first ``k`` are returned; with
    ``method="elbow"`` the heads before :func:`elbow_index` of the sorted curve (at least one).

    Returns:
        ``[(layer, head), ...]``, best first.

    Example:
        >>> select_heads(torch.tensor([[0.9, 0.1], [0.5, 0.8]]), k=2)
        [(0, 0), (1, 1)]
    """
    n_heads = scores.shape[1]
    flat = scores.flatten()
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
    return [(int(i) // n_heads, int(i) % n_heads) for i in order[:n]]


def jaccard_overlap(masks: Bool[Tensor, "set layer head"]) -> Float[Tensor, "set set"]:
    """``[n_sets, n_sets]`` Jaccard index of head sets given as masks (0 where both are empty)."""
    flat = einops.rearrange(masks, "f l h -> f (l h)").float()
    inter = flat @ flat.T
    union = flat.sum(1)[:, None] + flat.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


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
            raise ValueError(
                f"u {tuple(self.u.shape)} and sigma {tuple(self.sigma.shape)} do not match {len(self.functions)} functions"
            )

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
    step = chunk_layers or acts.layers_per_chunk()
    for l0 in range(0, acts.n_layers, step):
        l1 = min(acts.n_layers, l0 + step)
        z = acts.layers(l0, l1)[idx]
        diff = einops.einsum(pos / pos.sum(0), z, "n f, n l h d -> f l h d") - einops.einsum(
            neg / neg.sum(0), z, "n f, n l h d -> f l h d"
        )
        unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj = einops.einsum(z, unit, "n l h d, f l h d -> f n l h")
        u[:, l0:l1], sigma[:, l0:l1] = unit, proj.std(1, unbiased=False)
    return FunctionDirections(functions=fns, u=u, sigma=sigma)
