"""A batched L2-regularised logistic regression: one L-BFGS run per head, in one tensor program.

:func:`fit_batched_logistic` fits one-vs-rest (binary) or softmax probes for every batch entry
(every head) at once; each problem keeps its own curvature history, line search and stopping
test (:func:`_batched_lbfgs`), so a slow head does not hold the others back. Used by
:func:`vh_lens.functional_heads.probes.probe_heads`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["fit_batched_logistic"]


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
