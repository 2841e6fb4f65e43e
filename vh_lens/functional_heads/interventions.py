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

from vh_lens import engine
from vh_lens.analysis.interventions import ablate_heads, scale_heads, shift_heads
from vh_lens.core.config import resolve_config
from vh_lens.core.hooks import FwdHooks, Head, random_heads
from vh_lens.data.sample import Sample
from vh_lens.evaluation.scoring import AccuracyReducer
from vh_lens.functional_heads.activations import HeadActivations
from vh_lens.functional_heads.config import DEFAULT_ALPHA, InterventionConfig
from vh_lens.functional_heads.probes import ProbeResult
from vh_lens.functional_heads.report import FunctionInterventionReport, InterventionRun
from vh_lens.functional_heads.selection import FunctionDirections, mean_difference_directions

__all__ = [
    "DEFAULT_ALPHA",
    "InterventionConfig",
    "function_hooks",
    "intervene_on_functions",
    "random_heads",
]

logger = logging.getLogger(__name__)

Mode = Literal["remove", "emphasise"]
Removal = Literal["zero", "mean", "scale"]
Emphasis = Literal["scale", "shift"]


# --------------------------------------------------------------------------------------------
# Hooks (the random control is :func:`vh_lens.core.hooks.random_heads`, in draw order)


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
) -> FwdHooks:
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
    settings = InterventionConfig(mode=mode, removal=removal, emphasis=emphasis, alpha=alpha)
    method, alpha = settings.method, settings.resolved_alpha
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
# The experiment: plan -> engine -> report


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
            mains.append(
                Sample(
                    image=last.image, question=str(last.metadata["main_question"]), answer=str(answer), metadata=meta
                )
            )
    return subs, mains, len(data) - len(subs)


def _check_inputs(
    model_cfg: Any, probes: ProbeResult, acts: HeadActivations | None, conf: InterventionConfig
) -> tuple[str, ...]:
    """The functions to intervene on, after checking the probes' and activations' shapes."""
    cfg = model_cfg
    if (probes.n_layers, probes.n_heads) != (cfg.n_layers, cfg.n_heads):
        raise ValueError(f"probes are for {probes.n_layers} layers x {probes.n_heads} heads, the model has "
                         f"{cfg.n_layers} x {cfg.n_heads}")  # fmt: skip
    fns = tuple(probes.functions if conf.functions is None else dict.fromkeys(conf.functions))
    unknown = [f for f in fns if f not in probes.functions]
    if unknown or not fns:
        raise ValueError(f"unknown or no functions {unknown}; probed: {list(probes.functions)}")
    if acts is not None and (acts.n_layers, acts.n_heads, acts.d_head) != (cfg.n_layers, cfg.n_heads, cfg.d_head):
        raise ValueError(f"acts are [.., {acts.n_layers}, {acts.n_heads}, {acts.d_head}], the model has "
                         f"{cfg.n_layers} layers x {cfg.n_heads} heads x {cfg.d_head}")  # fmt: skip
    return fns


def _hook_inputs(
    conf: InterventionConfig,
    probes: ProbeResult,
    fns: tuple[str, ...],
    acts: HeadActivations | None,
    directions: FunctionDirections | None,
) -> tuple[Tensor | None, FunctionDirections | None]:
    """The head means (mean removal) and the directions (shift emphasis) the hooks need."""
    means = None
    if conf.mode == "remove" and conf.method == "mean":
        if acts is None:
            raise ValueError("removal='mean' needs acts (the probed head activations) for the heads' means")
        means = acts.head_means()
    if conf.mode == "emphasise" and conf.method == "shift":
        if directions is None:
            if acts is None:
                raise ValueError("emphasis='shift' needs acts (or directions) for the mean-difference directions")
            directions = mean_difference_directions(acts, functions=fns, indices=probes.train_index)
        missing = [f for f in fns if f not in directions.functions]
        if missing:
            raise ValueError(f"directions lack the functions {missing}")
    return means, directions


def _plan(
    model_cfg: Any,
    probes: ProbeResult,
    fns: tuple[str, ...],
    conf: InterventionConfig,
    means: Tensor | None,
    directions: FunctionDirections | None,
) -> tuple[list[engine.Condition], list[str]]:
    """One condition per function and head set (its functional heads, then one random draw per seed).

    Planned before any forward pass, so bad options surface first. A function whose head count
    exceeds the number of other heads gets no random control (listed in the second value).
    """
    conditions, skipped = [], []
    n_all = model_cfg.n_layers * model_cfg.n_heads
    for f in fns:
        heads = probes.functional_heads(f, k=conf.k)
        draws: list[tuple[int | None, list[Head]]] = [(None, heads)]
        if n_all - len(heads) < len(heads):
            if conf.control_seeds:
                logger.warning("function %r: %d heads leave too few other heads for a random control", f, len(heads))
                skipped.append(f)
        else:
            draws += [(s, random_heads(model_cfg.n_layers, model_cfg.n_heads, len(heads), heads, s))
                      for s in conf.control_seeds]  # fmt: skip
        for seed, chosen in draws:
            hooks = function_hooks(chosen, f, mode=conf.mode, removal=conf.removal, emphasis=conf.emphasis,  # type: ignore[arg-type]
                                   alpha=conf.alpha, means=means, directions=directions, cfg=model_cfg)  # fmt: skip
            kind = "functional" if seed is None else "random"
            name = f"{f} (functional)" if seed is None else f"{f} (random, seed {seed})"
            conditions.append(engine.Condition(name, tuple(hooks), metadata={
                "function": f, "condition": kind, "seed": seed, "heads": tuple(chosen)}))  # fmt: skip
    return conditions, skipped


def _accuracies(
    reducer: AccuracyReducer, labels: Sequence[str], functions: Sequence[str], n_main: int
) -> tuple[dict[str, float], float | None]:
    """Per-function accuracy over the subquestions (NaN: none) and the main questions' accuracy."""
    correct = torch.tensor([p.correct for p in reducer.result().predictions], dtype=torch.float32)
    own = torch.tensor([functions.index(x) for x in labels])
    onehot = torch.nn.functional.one_hot(own, len(functions)).float()  # [n_sub, n_functions]
    per_function = (correct[: len(labels)] @ onehot) / onehot.sum(0)
    main = float(correct[len(labels) :].mean()) if n_main else None
    return dict(zip(functions, per_function.tolist(), strict=True)), main


def intervene_on_functions(
    model: Any,
    items_or_samples: Sequence[Any],
    probes: ProbeResult,
    *,
    config: InterventionConfig | Mapping[str, Any] | None = None,
    functions: Sequence[str] | None = None,
    mode: Mode | None = None,
    removal: Removal | None = None,
    emphasis: Emphasis | None = None,
    alpha: float | None = None,
    k: int | None = None,
    control_seeds: Sequence[int] | None = None,
    acts: HeadActivations | None = None,
    directions: FunctionDirections | None = None,
    eval_method: Literal["generate", "score"] | None = None,
    include_main: bool | None = None,
    main_answer: Literal["final_step", "item"] | None = None,
    context: Literal["chain", "none"] | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    format_question: Callable[[Sample], str] | None = None,
    progress: bool = True,
) -> FunctionInterventionReport:
    """Remove or emphasise each function's heads, and as many random heads, and measure accuracy.

    The subquestions labelled with a probed function and the main questions are prepared once
    (:func:`vh_lens.engine.prepare`) and evaluated without hooks (the baseline, as
    :func:`vh_lens.evaluation.scoring.evaluate`) and under one :class:`~vh_lens.engine.Condition`
    per head set (:func:`vh_lens.engine.run_conditions`); accuracies are then split by function.

    Args:
        model: A :class:`~vh_lens.LlavaLens` (the one the probes were trained on).
        items_or_samples: :class:`~vh_lens.data.cogvision.CogItem` objects (turned into
            subquestion samples with ``context``), or subquestion samples from
            :func:`~vh_lens.data.cogvision.subquestion_samples` (their metadata give the
            function, and the main question and group for the main-question samples).
        probes: The probe result; selects each function's heads.
        config: The settings (:class:`~vh_lens.functional_heads.config.InterventionConfig` or
            its dict; defaults: remove by zeroing, the elbow, seeds 0, 1, 2, generation, 16
            new tokens, batches of 8). The keyword arguments of the same names override its
            fields (``None``: keep the config's); see the config for what each means.
        functions, mode, removal, emphasis, alpha, k, control_seeds: The config's fields of the
            same names, as are ``eval_method``, ``include_main``, ``main_answer``, ``context``,
            ``batch_size`` and ``max_new_tokens``.
        acts: The probed activations: their per-head means for ``removal="mean"``, and the
            directions for ``emphasis="shift"`` (over ``probes.train_index``).
        directions: Directions for ``emphasis="shift"``, instead of computing them from ``acts``.
        format_question: How a sample becomes the user turn (default: the model's own).
        progress: Show a progress bar over the evaluations.

    Returns:
        A :class:`~vh_lens.functional_heads.report.FunctionInterventionReport`;
        ``metadata["config"]`` holds the settings.

    Raises:
        ValueError: bad options, a missing ``acts``, probes of another model's shape, or no
            subquestion of a probed function.

    Example:
        >>> report = intervene_on_functions(model, items, probes, acts=acts, removal="mean")  # doctest: +SKIP
        >>> vh_lens.plotting.plot_function_interventions(report)                                       # doctest: +SKIP
    """
    given = {
        "functions": functions, "mode": mode, "removal": removal, "emphasis": emphasis, "alpha": alpha, "k": k,
        "control_seeds": control_seeds, "eval_method": eval_method, "include_main": include_main,
        "main_answer": main_answer, "context": context, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
    }  # fmt: skip
    conf = resolve_config(InterventionConfig, config, {key: v for key, v in given.items() if v is not None})
    fns = _check_inputs(model.cfg, probes, acts, conf)
    means, directions = _hook_inputs(conf, probes, fns, acts, directions)
    subs, mains, dropped = _split_samples(items_or_samples, conf.context, probes.functions, conf.main_answer,
                                          conf.include_main)  # fmt: skip
    conditions, skipped = _plan(model.cfg, probes, fns, conf, means, directions)

    from vh_lens.distributed import world_metadata

    prepared = engine.prepare(model, subs + mains, batch_size=conf.batch_size, answers=conf.eval_method,
                              format_question=format_question)  # fmt: skip
    reducers = engine.run_conditions(
        model, prepared, [engine.Condition("baseline"), *conditions],
        lambda _: AccuracyReducer(conf.eval_method, conf.max_new_tokens),  # type: ignore[arg-type]
        progress=progress and prepared.world.rank == 0, desc=f"interventions ({conf.mode}: {conf.method})",
    )  # fmt: skip

    labels = [str(s.metadata["function"]) for s in subs]
    baseline, baseline_main = _accuracies(reducers["baseline"], labels, probes.functions, len(mains))
    runs = []
    for c in conditions:
        acc, main = _accuracies(reducers[c.name], labels, probes.functions, len(mains))
        runs.append(InterventionRun(c.metadata["function"], c.metadata["condition"], c.metadata["seed"],
                                    c.metadata["heads"], acc, main))  # fmt: skip
    metadata = {
        "selection": "elbow" if conf.k is None else f"top-{conf.k}",
        "selection_metric": "balanced_accuracy",
        "probe_source": "ovr" if probes.ovr_balanced_accuracy is not None else "multiclass",
        "main_answer": conf.main_answer,
        "context": conf.context if not isinstance(items_or_samples[0], Sample) else "as given",
        "max_new_tokens": conf.max_new_tokens,
        "positions": "all (every position, while generating)",
        "subquestions_without_probed_function": dropped,
        "controls_skipped": skipped,
        "random_std": "population (ddof=0) over seeds",
        "correctness": "vh_lens.evaluation.answers.is_correct: normalised exact match (strict for open answers)",
        "config": conf.to_dict(),
        "question_format": "as given" if format_question is not None else getattr(model, "question_format", None),
        **world_metadata(prepared.world, len(subs) + len(mains)),  # the engine split the samples across ranks
    }
    return FunctionInterventionReport(
        functions=fns, counts={f: labels.count(f) for f in probes.functions}, n_main=len(mains), baseline=baseline,
        baseline_main=baseline_main, runs=tuple(runs), mode=conf.mode, method=conf.method, alpha=conf.resolved_alpha,
        k=conf.k, eval_method=conf.eval_method, seeds=conf.control_seeds, metadata=metadata,
    )  # fmt: skip
