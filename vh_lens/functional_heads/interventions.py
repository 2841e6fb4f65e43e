"""Interventions on functional heads (paper B): remove or emphasise a function's heads.

For each cognitive function, the heads its probes single out
(:meth:`vh_lens.functional_heads.probes.ProbeResult.functional_heads`, top-``k`` or the elbow) are intervened
on, and so, as the control, are the same number of random heads drawn from the *other* heads
(one draw per seed). Each intervention is evaluated on

- the subquestions of that function (does removing its heads hurt it?),
- the subquestions of the other functions, pooled (is the effect specific?),
- the main questions,

next to the unintervened baseline. Interventions act on a head's output before ``W_O``
(``hook_z``) at every position, while the answer is generated:

- ``mode="remove"``: ``removal="zero"`` (``z = 0``), ``"mean"`` (``z`` = the head's mean over
  the probed activations) or ``"scale"`` (``z = alpha * z`` with a tiny ``alpha``, the group's
  removal "by a tiny factor");
- ``mode="emphasise"``: ``emphasis="scale"`` (``z = alpha * z``) or ``"shift"``
  (``z = z + alpha * sigma * u``, ``u`` the function's mean-difference direction of the head
  and ``sigma`` the spread along it, :func:`vh_lens.functional_heads.selection.mean_difference_directions`; the
  group's emphasis, ``alpha`` 5).

Answers are read by :func:`vh_lens.evaluation.scoring.evaluate` (greedy generation by default):
correct means :func:`vh_lens.evaluation.answers.is_correct`, i.e. the parsed answer equals the gold one
after normalisation (lowercase, punctuation and articles dropped; numbers compared as
numbers). For CogQA's short open answers this is *normalised exact match*, which is strict:
"$558 in total" does not match "$558". CogQA's own main-question answers are worked solutions
(GSM8K style rationales), which no generated text matches exactly, so by default a main
question's gold answer is the answer of its chain's final subquestion
(``main_answer="final_step"``).

Example:
    >>> acts = collect_head_activations(model, items)                       # doctest: +SKIP
    >>> probes = probe_heads(acts, functions=COGQA_FUNCTIONS)               # doctest: +SKIP
    >>> report = intervene_on_functions(model, items, probes, acts=acts)    # doctest: +SKIP
    >>> print(report.to_markdown())                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from vh_lens.analysis.interventions import Hooks, ablate_heads, scale_heads, shift_heads
from vh_lens.data.sample import Sample
from vh_lens import engine
from vh_lens.evaluation.scoring import AccuracyReducer, EvalMethod, check_eval_options
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.functional_heads.probes import ProbeResult
from vh_lens.functional_heads.report import EMPHASES, MODES, REMOVALS, FunctionInterventionReport, InterventionRun
from vh_lens.functional_heads.selection import FunctionDirections, mean_difference_directions

__all__ = [
    "DEFAULT_ALPHA",
    "function_hooks",
    "intervene_on_functions",
    "random_heads",
]

logger = logging.getLogger(__name__)

Head = tuple[int, int]
Mode = Literal["remove", "emphasise"]
Removal = Literal["zero", "mean", "scale"]
Emphasis = Literal["scale", "shift"]

_MAIN_ANSWERS = ("final_step", "item")
DEFAULT_ALPHA: Mapping[tuple[str, str], float] = {
    ("remove", "scale"): 1e-5,
    ("emphasise", "scale"): 2.0,
    ("emphasise", "shift"): 5.0,
}
"""``alpha`` when none is given: the tiny removal factor, the emphasis factor, the shift strength
in units of ``sigma`` (the group's 5)."""


# --------------------------------------------------------------------------------------------
# Head sets and hooks


def random_heads(n_layers: int, n_heads: int, k: int, exclude: Sequence[Head] = (), seed: int = 0) -> list[Head]:
    """``k`` distinct heads drawn uniformly from those not in ``exclude``: the random control.

    The draw is a seeded permutation of the eligible heads (in layer-major order), so it
    depends only on ``seed``, the model's shape and ``exclude``.

    Raises:
        ValueError: fewer than ``k`` heads are eligible, or ``k < 1``.

    Example:
        >>> random_heads(2, 4, 2, exclude=[(0, 0), (1, 3)], seed=0)  # doctest: +SKIP
        [(1, 1), (0, 2)]
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    taken = {(int(layer), int(head)) for layer, head in exclude}
    eligible = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in taken]
    if len(eligible) < k:
        raise ValueError(f"cannot draw {k} random heads: only {len(eligible)} heads are not excluded")
    perm = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(int(seed)))
    return [eligible[int(i)] for i in perm[:k]]


def _resolve_alpha(mode: str, method: str, alpha: float | None) -> float | None:
    if (mode, method) in DEFAULT_ALPHA:
        return float(DEFAULT_ALPHA[(mode, method)] if alpha is None else alpha)
    if alpha is not None:
        raise ValueError(f"alpha is not used by removal={method!r} (only by 'scale', and by emphasis)")
    return None


def _check_mode(mode: str, removal: str, emphasis: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "remove" and removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
    if mode == "emphasise" and emphasis not in EMPHASES:
        raise ValueError(f"emphasis must be one of {EMPHASES}, got {emphasis!r}")
    return removal if mode == "remove" else emphasis


def function_hooks(
    heads: Sequence[Head],
    function: str | None = None,
    *,
    mode: Mode = "remove",
    removal: Removal = "zero",
    emphasis: Emphasis = "shift",
    alpha: float | None = None,
    means: Float[Tensor, "n_layers n_heads d_head"] | None = None,
    directions: FunctionDirections | None = None,
    cfg: Any | None = None,
) -> Hooks:
    """Hooks on ``hook_z`` that remove or emphasise ``heads`` (one per touched layer).

    Args:
        heads: ``[(layer, head), ...]``.
        function: The function whose directions shift the heads (``emphasis="shift"`` only).
        mode: ``"remove"`` or ``"emphasise"``.
        removal: ``"zero"`` (``z = 0``), ``"mean"`` (``z = means[layer, head]``) or ``"scale"``
            (``z = alpha * z``, ``alpha`` default ``1e-5``).
        emphasis: ``"scale"`` (``z = alpha * z``, default 2) or ``"shift"``
            (``z = z + alpha * sigma * u``, default 5, ``u`` and ``sigma`` from ``directions``).
        alpha: See ``removal`` / ``emphasis``; must be ``None`` for zero and mean removal.
        means: ``[n_layers, n_heads, d_head]`` for ``removal="mean"``.
        directions: Per-function unit directions and spreads for ``emphasis="shift"``.
        cfg: ``model.cfg``, to validate the heads.

    Returns:
        ``[(hook_name, hook_fn), ...]`` for ``run_with_hooks`` / ``model.hooks``.

    Example:
        >>> hooks = function_hooks([(1, 2)], "Retrieval", mode="emphasise", directions=dirs)  # doctest: +SKIP
    """
    method = _check_mode(mode, removal, emphasis)
    alpha = _resolve_alpha(mode, method, alpha)
    heads = [(int(layer), int(head)) for layer, head in heads]
    if method == "zero":
        return ablate_heads(heads, "zero", cfg=cfg)
    if method == "mean":
        if means is None:
            raise ValueError("removal='mean' needs means (pass acts= to intervene_on_functions)")
        return ablate_heads(heads, "mean", means=means, cfg=cfg)
    if method == "scale":
        return scale_heads(heads, alpha, cfg=cfg)  # type: ignore[arg-type]
    if directions is None or function is None:
        raise ValueError("emphasis='shift' needs directions and the function whose directions to use")
    u, sigma = directions[function]  # [layer, head, d_head], [layer, head]
    index = torch.tensor(heads, dtype=torch.long)
    return shift_heads(heads, u[index[:, 0], index[:, 1]], alpha=alpha,  # type: ignore[arg-type]
                       sigma=sigma[index[:, 0], index[:, 1]], cfg=cfg)  # fmt: skip


# --------------------------------------------------------------------------------------------
# The experiment


def _split_samples(
    items_or_samples: Sequence[Any], context: str, functions: Sequence[str], main_answer: str, include_main: bool
) -> tuple[list[Sample], list[Sample], int]:
    """(subquestion samples of ``functions``, main-question samples, number of subquestions dropped)."""
    from vh_lens.data.cogvision import CogItem, subquestion_samples

    data = list(items_or_samples)
    if data and all(isinstance(x, CogItem) for x in data):
        data = subquestion_samples(data, context=context)  # type: ignore[arg-type]
    elif not all(isinstance(x, Sample) for x in data):
        raise ValueError("items_or_samples must be all CogItem or all Sample objects")
    if not data:
        raise ValueError("no items or samples given")
    wanted = set(functions)
    subs = [s for s in data if s.metadata.get("function") in wanted]
    if not subs:
        raise ValueError(f"no subquestion is labelled with one of the probed functions {sorted(wanted)}")
    mains: list[Sample] = []
    if include_main:
        by_group: dict[Any, list[Sample]] = {}
        for s in data:
            if "main_question" in s.metadata:
                by_group.setdefault(s.metadata.get("group"), []).append(s)
        for group, chain in by_group.items():
            last = max(chain, key=lambda s: int(s.metadata.get("sub_index", 0)))
            final = int(last.metadata.get("sub_index", -1)) == int(last.metadata.get("n_subquestions", 0)) - 1
            answer = last.answer if main_answer == "final_step" and final else last.metadata.get("main_answer")
            if answer is None or not str(answer).strip():
                continue
            meta = {"group": group, "item_id": last.metadata.get("item_id"), "role": "main"}
            mains.append(Sample(image=last.image, question=str(last.metadata["main_question"]), answer=str(answer),
                                metadata=meta))
    return subs, mains, len(data) - len(subs)


def intervene_on_functions(
    model: Any,
    items_or_samples: Sequence[Any],
    probes: ProbeResult,
    *,
    functions: Sequence[str] | None = None,
    mode: Mode = "remove",
    removal: Removal = "zero",
    emphasis: Emphasis = "shift",
    alpha: float | None = None,
    k: int | None = None,
    control_seeds: Sequence[int] = (0, 1, 2),
    acts: HeadActivations | None = None,
    directions: FunctionDirections | None = None,
    eval_method: EvalMethod = "generate",
    include_main: bool = True,
    main_answer: Literal["final_step", "item"] = "final_step",
    context: Literal["chain", "none"] = "chain",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    format_question: Callable[[Sample], str] | None = None,
    progress: bool = True,
) -> FunctionInterventionReport:
    """Remove or emphasise each function's heads, and as many random heads, and measure accuracy.

    Every evaluation runs over all subquestions labelled with a probed function and the main
    questions at once (samples prepared once); accuracies are then split by function. The
    baseline is :func:`vh_lens.evaluation.scoring.evaluate` with no hooks on the same samples.

    Args:
        model: A :class:`~vh_lens.LlavaLens` (the one the probes were trained on).
        items_or_samples: :class:`~vh_lens.data.cogvision.CogItem` objects (turned into
            subquestion samples with ``context``), or subquestion samples from
            :func:`~vh_lens.data.cogvision.subquestion_samples` (their metadata give the
            function, and the main question and group for the main-question samples).
        probes: The probe result; selects each function's heads.
        functions: The functions to intervene on (default: all of ``probes.functions``).
        mode: ``"remove"`` or ``"emphasise"``.
        removal: ``"zero"``, ``"mean"`` (needs ``acts``) or ``"scale"`` (by ``alpha``, default 1e-5).
        emphasis: ``"scale"`` (by ``alpha``, default 2) or ``"shift"`` (``alpha`` default 5; needs
            ``acts`` or ``directions``).
        alpha: See ``removal`` / ``emphasis`` and :data:`DEFAULT_ALPHA`.
        k: Heads per function; ``None``: the elbow of the function's sorted scores.
        control_seeds: One random control per seed (may be empty). A function whose head
            count exceeds the number of other heads gets no control (NaN; logged).
        acts: The probed activations: their per-head means for ``removal="mean"``, and the
            directions for ``emphasis="shift"`` (over ``probes.train_index``).
        directions: Directions for ``emphasis="shift"``, instead of computing them from ``acts``.
        eval_method: ``"generate"`` (greedy generation, normalised exact match; the default,
            for open answers) or ``"score"`` (first-token logits; closed answers only).
        include_main: Also evaluate the main questions.
        main_answer: The main question's gold answer: ``"final_step"`` (the answer of the
            chain's last subquestion; CogQA's own answers are worked solutions that exact match
            cannot hit) or ``"item"`` (the item's answer as given).
        context: Subquestion context when CogItems are given (see ``subquestion_samples``).
        batch_size: Samples per forward pass.
        max_new_tokens: Generation length.
        format_question: How a sample becomes the user turn (default
            :func:`vh_lens.evaluation.answers.format_question`, as in :func:`collect_head_activations`).
        progress: Show a progress bar over the evaluations.

    Returns:
        A :class:`FunctionInterventionReport`.

    Raises:
        ValueError: bad options, a missing ``acts``, probes of another model's shape, or no
            subquestion of a probed function.

    Example:
        >>> report = intervene_on_functions(model, items, probes, acts=acts, removal="mean")  # doctest: +SKIP
        >>> plot_function_interventions(report)                                              # doctest: +SKIP
    """
    method = _check_mode(mode, removal, emphasis)
    alpha = _resolve_alpha(mode, method, alpha)
    check_eval_options(eval_method, batch_size, max_new_tokens)
    if main_answer not in _MAIN_ANSWERS:
        raise ValueError(f"main_answer must be one of {_MAIN_ANSWERS}, got {main_answer!r}")
    if k is not None and (isinstance(k, bool) or int(k) < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    seeds = tuple(int(s) for s in control_seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"control_seeds repeat a value: {list(seeds)}")
    cfg = model.cfg
    if (probes.n_layers, probes.n_heads) != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"probes are for {probes.n_layers} layers x {probes.n_heads} heads, the model has "
                         f"{cfg.n_layers} x {cfg.n_heads}")  # fmt: skip
    fns = tuple(probes.functions if functions is None else dict.fromkeys(functions))
    unknown = [f for f in fns if f not in probes.functions]
    if unknown or not fns:
        raise ValueError(f"unknown or no functions {unknown}; probed: {list(probes.functions)}")
    if acts is not None and (acts.n_layers, acts.n_heads, acts.d_head) != (cfg.n_layers, cfg.n_heads, cfg.d_head):
        raise ValueError(f"acts are [.., {acts.n_layers}, {acts.n_heads}, {acts.d_head}], the model has "
                         f"{cfg.n_layers} layers x {cfg.n_heads} heads x {cfg.d_head}")  # fmt: skip
    means = None
    if method == "mean" and mode == "remove":
        if acts is None:
            raise ValueError("removal='mean' needs acts (the probed head activations) for the heads' means")
        means = acts.head_means()
    if mode == "emphasise" and method == "shift" and directions is None:
        if acts is None:
            raise ValueError("emphasis='shift' needs acts (or directions) for the mean-difference directions")
        directions = mean_difference_directions(acts, functions=fns, indices=probes.train_index)
    if directions is not None and mode == "emphasise" and method == "shift":
        missing = [f for f in fns if f not in directions.functions]
        if missing:
            raise ValueError(f"directions lack the functions {missing}")

    subs, mains, dropped = _split_samples(items_or_samples, context, probes.functions, main_answer, include_main)
    samples = subs + mains
    labels = [str(s.metadata["function"]) for s in subs]
    counts = {f: labels.count(f) for f in probes.functions}

    # Plan the head sets first: errors surface before any forward pass.
    plans: list[tuple[str, str, int | None, list[Head]]] = []
    skipped = []
    for f in fns:
        heads = probes.functional_heads(f, k=k)
        plans.append((f, "functional", None, heads))
        if cfg.n_layers * cfg.n_heads - len(heads) < len(heads):
            if seeds:
                logger.warning("function %r: %d heads leave too few other heads for a random control", f, len(heads))
                skipped.append(f)
            continue
        plans += [(f, "random", s, random_heads(cfg.n_layers, cfg.n_heads, len(heads), heads, s)) for s in seeds]

    prepared = engine.prepare(
        model, samples, batch_size=batch_size, answers=eval_method, format_question=format_question
    )
    own = torch.tensor([probes.functions.index(x) for x in labels])
    onehot = torch.nn.functional.one_hot(own, len(probes.functions)).float()  # [n_sub, n_functions]
    bar = tqdm(total=1 + len(plans), desc=f"interventions ({mode}: {method})", unit="eval", disable=not progress)

    def accuracies(hooks: Hooks) -> tuple[dict[str, float], float | None]:
        reducer = AccuracyReducer(eval_method, max_new_tokens)
        result = engine.run(model, prepared, reducer, condition=engine.Condition("run", tuple(hooks))).result()
        bar.update(1)
        correct = torch.tensor([p.correct for p in result.predictions], dtype=torch.float32)
        per_function = (correct[: len(subs)] @ onehot) / onehot.sum(0)  # NaN where a function has no subquestion
        main = float(correct[len(subs) :].mean()) if mains else None
        return dict(zip(probes.functions, per_function.tolist(), strict=True)), main

    try:
        baseline, baseline_main = accuracies([])
        runs = []
        for f, condition, seed, heads in plans:
            bar.set_postfix_str(f"{f} ({condition})")
            hooks = function_hooks(heads, f, mode=mode, removal=removal, emphasis=emphasis, alpha=alpha, means=means,
                                   directions=directions, cfg=cfg)  # fmt: skip
            acc, main = accuracies(hooks)
            runs.append(InterventionRun(f, condition, seed, tuple(heads), acc, main))
    finally:
        bar.close()

    metadata = {
        "selection": "elbow" if k is None else f"top-{k}",
        "selection_metric": "balanced_accuracy",
        "probe_source": "ovr" if probes.ovr_balanced_accuracy is not None else "multiclass",
        "main_answer": main_answer,
        "context": context if not isinstance(items_or_samples[0], Sample) else "as given",
        "max_new_tokens": max_new_tokens,
        "positions": "all (every position, while generating)",
        "subquestions_without_probed_function": dropped,
        "controls_skipped": skipped,
        "random_std": "population (ddof=0) over seeds",
        "correctness": "vh_lens.evaluation.answers.is_correct: normalised exact match (strict for open answers)",
    }
    return FunctionInterventionReport(
        functions=fns, counts=counts, n_main=len(mains), baseline=baseline, baseline_main=baseline_main,
        runs=tuple(runs), mode=mode, method=method, alpha=alpha, k=k, eval_method=eval_method, seeds=seeds,
        metadata=metadata,
    )  # fmt: skip
