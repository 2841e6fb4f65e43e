"""Head masking (paper A, section 5.1): accuracy with a stage's top-k visual heads removed.

For each stage (early / mid / late thirds of the layers, :func:`vh_lens.visual_heads.scores.stage_layers`)
and each ``k``:

- **top**: the ``k`` heads of the stage with the highest score (``metric``, default the
  detection score) are removed (:func:`vh_lens.analysis.interventions.ablate_heads`) and the benchmark
  accuracy measured (:func:`vh_lens.evaluation.scoring.evaluate`);
- **random** (the control): ``k`` heads drawn at random from the same stage, excluding its
  top-``k``, are removed; one draw per seed, reported as the mean and the standard deviation
  (population, ``ddof=0``) of the seeds' accuracies;
- the drops ``baseline - top`` and ``baseline - random_mean`` against the unmasked accuracy.

``k`` is capped at the number of heads in the stage (``k_used``; ``k`` keeps the requested
value, so a 2-layer model's rows stay comparable to a 32-layer one's table). The random control
needs ``k_used`` heads outside the top ``k_used``; where the stage has fewer, its accuracies are
NaN. A stage with no layers (models with fewer than 3 layers) is skipped and listed in
``metadata["skipped_stages"]``. The rows over ``k`` of one stage form its accuracy curve
(:meth:`MaskingResult.curve`, :func:`vh_lens.plotting.masking.plot_masking_curves`); the top
heads of a smaller ``k`` are always among those of a larger one.

The samples are prepared (tokenised, images encoded) once and reused by every evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor

from vh_lens import engine
from vh_lens.analysis.interventions import HeadMeans, ablate_heads, head_means
from vh_lens.core.config import ExperimentConfig, check_choice, check_ints, resolve_config
from vh_lens.core.hooks import Head
from vh_lens.data.sample import Sample
from vh_lens.distributed import samples_per_rank
from vh_lens.evaluation.scoring import AccuracyReducer, EvalMethod, check_eval_options
from vh_lens.sweep import run_conditions_batched, run_conditions_shared_prefix
from vh_lens.visual_heads.masking_result import ABLATIONS, CSV_COLUMNS, MaskingResult, MaskingRow
from vh_lens.visual_heads.scores import METRICS, STAGES, VisualHeadScores, stage_layers

__all__ = ["CSV_COLUMNS", "MaskingConfig", "MaskingResult", "MaskingRow", "masking_experiment"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskingConfig(ExperimentConfig):
    """Settings of :func:`masking_experiment` (also written into the result's ``metadata["config"]``).

    Attributes:
        ks: numbers of heads to remove (each capped at the stage's head count).
        stages: which of ``"early"``, ``"mid"``, ``"late"``.
        control_seeds: one random control per seed (may be empty: no control).
        method: ablation: ``"zero"``, ``"mean"`` or ``"uniform"``.
        metric: the score that ranks heads (:data:`vh_lens.visual_heads.scores.METRICS`).
        eval_method: how answers are read (``"score"`` or ``"generate"``).
        batch_size: samples per forward pass.
        max_new_tokens: generation length for ``eval_method="generate"``.
    """

    ks: Sequence[int] = (10, 20, 30, 50)  # sequences are stored as tuples (ExperimentConfig)
    stages: Sequence[str] = ("early", "mid", "late")
    control_seeds: Sequence[int] = (0, 1, 2)
    method: str = "zero"
    metric: str = "detection"
    eval_method: str = "score"
    batch_size: int = 8
    max_new_tokens: int = 8

    def validate(self) -> None:
        check_eval_options(self.eval_method, self.batch_size, self.max_new_tokens)
        check_ints("ks", list(self.ks), positive=True)
        check_ints("control_seeds", list(self.control_seeds), positive=False, allow_empty=True)
        stages = tuple(self.stages)
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct values of {STAGES}, got {list(stages)!r}")
        check_choice("method", self.method, ABLATIONS)
        check_choice("metric", self.metric, METRICS)


def _plan(
    scores: VisualHeadScores, cfg: Any, config: MaskingConfig
) -> tuple[dict[tuple[str, int], tuple[list[Head], list[list[Head]]]], list[str]]:
    """The head sets of every (stage, k_used): the top heads and one random control per seed."""
    plans: dict[tuple[str, int], tuple[list[Head], list[list[Head]]]] = {}
    skipped = []
    for stage in config.stages:
        n_stage = len(stage_layers(stage, cfg.n_layers)) * cfg.n_heads  # type: ignore[arg-type]
        if n_stage == 0:
            logger.info("stage %r has no layers in a %d-layer model; skipped", stage, cfg.n_layers)
            skipped.append(stage)
            continue
        for k_used in sorted({min(k, n_stage) for k in config.ks}):
            top = scores.top_heads(k_used, stage, config.metric)  # type: ignore[arg-type]
            controls = []
            if n_stage - k_used >= k_used:
                controls = [
                    scores.random_heads(k_used, stage, seed=seed, exclude_top=top, metric=config.metric)  # type: ignore[arg-type]
                    for seed in config.control_seeds
                ]
            plans[(stage, k_used)] = (top, controls)
    return plans, skipped


def masking_experiment(
    model: Any,
    samples: Sequence[Sample],
    scores: VisualHeadScores,
    *,
    config: MaskingConfig | Mapping[str, Any] | None = None,
    ks: Sequence[int] | None = None,
    stages: Sequence[str] | None = None,
    control_seeds: Sequence[int] | None = None,
    method: str | None = None,
    metric: str | None = None,
    eval_method: EvalMethod | None = None,
    means: HeadMeans | Tensor | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    format_question: Callable[[Sample], str] | None = None,
    progress: bool = True,
    sweep: str = "shared",
    conditions_per_forward: int = 4,
) -> MaskingResult:
    """Paper A's head-masking table: accuracy with each stage's top-k heads or k random heads removed.

    The samples are prepared once (:func:`vh_lens.engine.prepare`) and evaluated under one
    :class:`~vh_lens.engine.Condition` per head set (:func:`vh_lens.engine.run_conditions`).

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        samples: benchmark samples with gold answers.
        scores: visual-head scores of the same model (``[n_layers, n_heads]`` maps).
        config: the settings (:class:`MaskingConfig`, or its dict); the keyword arguments
            below override its fields. Defaults: ``ks=(10, 20, 30, 50)``, all three stages,
            ``control_seeds=(0, 1, 2)``, ``method="zero"``, ``metric="detection"``,
            ``eval_method="score"``, ``batch_size=8``, ``max_new_tokens=8``.
        ks: numbers of heads to remove (each capped at the stage's head count, see the module
            docstring).
        stages: which of ``"early"``, ``"mid"``, ``"late"``.
        control_seeds: one random control per seed (may be empty: no control).
        method: ablation: ``"zero"``, ``"mean"`` or ``"uniform"`` (paper A's; see
            :func:`vh_lens.analysis.interventions.ablate_heads`).
        metric: the score that ranks heads (:data:`vh_lens.visual_heads.scores.METRICS`).
        eval_method: how answers are read (:func:`vh_lens.evaluation.scoring.evaluate`).
        means: per-head means for ``method="mean"``; default: computed over ``samples``
            (all non-padding positions, :func:`vh_lens.analysis.interventions.head_means`).
        batch_size: samples per forward pass.
        max_new_tokens: generation length for ``eval_method="generate"``.
        format_question: how a sample becomes the user turn (default: the model's own).
        progress: show a tqdm progress bar over the evaluations.
        sweep: ``"shared"`` (default): with ``eval_method="score"``, each batch's unablated
            prefix is computed once and each condition starts at its first ablated layer
            (:func:`vh_lens.sweep.run_conditions_shared_prefix`; the same accuracies);
            ``"batched"``: as ``"shared"``, with up to ``conditions_per_forward`` conditions that
            start at the same layer stacked along the batch dimension in one forward
            (:func:`vh_lens.sweep.run_conditions_batched`); ``"naive"``: every condition runs
            the whole model.
        conditions_per_forward: the bound on stacked conditions of ``"batched"`` (activation
            memory grows with it).

    Returns:
        :class:`MaskingResult`; ``metadata["config"]`` holds the settings.

    Raises:
        ValueError: bad options, or scores whose shape differs from the model's heads.

    Example:
        >>> scores = VisualHeadScores.load("runs/scan")  # doctest: +SKIP
        >>> result = masking_experiment(model, samples, scores, ks=(10, 20, 30, 50))  # doctest: +SKIP
        >>> print(result.to_markdown())  # doctest: +SKIP
    """
    given = {
        "ks": ks, "stages": stages, "control_seeds": control_seeds, "method": method, "metric": metric,
        "eval_method": eval_method, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
    }  # fmt: skip
    conf = resolve_config(MaskingConfig, config, {k: v for k, v in given.items() if v is not None})
    ks_sorted = tuple(sorted(conf.ks))
    if means is not None and conf.method != "mean":
        raise ValueError("means is only used by method='mean'")
    if not isinstance(scores, VisualHeadScores):
        raise ValueError(f"scores must be a VisualHeadScores, got {type(scores).__name__}")
    cfg = model.cfg
    if (scores.n_layers, scores.n_heads) != (cfg.n_layers, cfg.n_heads):
        raise ValueError(
            f"scores are for {scores.n_layers} layers x {scores.n_heads} heads, the model has "
            f"{cfg.n_layers} x {cfg.n_heads}"
        )
    samples = list(samples)
    if not samples:
        raise ValueError("masking_experiment: no samples given")

    # Plan every head set first (cheap, and errors surface before any forward pass).
    plans, skipped = _plan(scores, cfg, conf)
    if not plans:
        raise ValueError(f"none of the stages {list(conf.stages)} has layers in a {cfg.n_layers}-layer model")

    prepared = engine.prepare(
        model, samples, batch_size=conf.batch_size, answers=conf.eval_method, format_question=format_question
    )
    if conf.method == "mean" and means is None:
        means = head_means(model, prepared, positions="all")

    def condition(name: str, heads: list[Head] | None) -> engine.Condition:
        hooks = () if heads is None else tuple(ablate_heads(heads, conf.method, means=means, cfg=cfg))  # type: ignore[arg-type]
        return engine.Condition(name, hooks)

    conditions = [condition("baseline", None)]
    for (stage, k_used), (top, controls) in plans.items():
        conditions.append(condition(f"{stage} k={k_used} top", top))
        conditions += [condition(f"{stage} k={k_used} seed={i}", c) for i, c in enumerate(controls)]
    if sweep not in ("shared", "naive", "batched"):
        raise ValueError(f"sweep must be 'shared', 'naive' or 'batched', got {sweep!r}")
    shared = sweep != "naive" and conf.eval_method == "score"  # generation re-runs every layer anyway
    runner = run_conditions_shared_prefix if shared else engine.run_conditions
    if shared and sweep == "batched":  # several conditions stacked along the batch dimension per forward
        runner = partial(run_conditions_batched, conditions_per_forward=conditions_per_forward)
    out = runner(
        model, prepared, conditions, lambda _: AccuracyReducer(conf.eval_method, conf.max_new_tokens),  # type: ignore[arg-type]
        progress=progress and prepared.world.rank == 0, desc=f"masking ({conf.method})",
    )  # fmt: skip
    accuracy = {name: reducer.result().accuracy for name, reducer in out.items()}
    baseline = accuracy["baseline"]

    rows = []
    for stage in conf.stages:
        if stage in skipped:
            continue
        n_stage = len(stage_layers(stage, cfg.n_layers)) * cfg.n_heads  # type: ignore[arg-type]
        for k in ks_sorted:
            k_used = min(k, n_stage)
            top, controls = plans[(stage, k_used)]
            rows.append(
                MaskingRow(
                    stage=stage,
                    k=k,
                    k_used=k_used,
                    n_stage_heads=n_stage,
                    method=conf.method,
                    metric=conf.metric,
                    baseline_acc=baseline,
                    top_acc=accuracy[f"{stage} k={k_used} top"],
                    random_accs=tuple(accuracy[f"{stage} k={k_used} seed={i}"] for i in range(len(controls))),
                    top_heads=tuple(top),
                    random_heads=tuple(tuple(c) for c in controls),
                )
            )
    metadata = {
        "skipped_stages": skipped,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "ks": list(ks_sorted),
        "random_std": "population (ddof=0) over seeds",
        "means": (
            f"HeadMeans over {means.count} positions ({means.positions})"
            if isinstance(means, HeadMeans)
            else (None if means is None else "given as a tensor")
        ),
        "config": conf.to_dict(),
        "sweep": ("batched shared prefix" if sweep == "batched" else "shared prefix") if shared else "naive",
        "world_size": int(prepared.world.size),
        "samples_per_rank": samples_per_rank(len(samples), int(prepared.world.size)),
    }
    return MaskingResult(
        rows=tuple(rows),
        baseline=baseline,
        n_samples=len(samples),
        method=conf.method,
        metric=conf.metric,
        eval_method=conf.eval_method,
        seeds=tuple(conf.control_seeds),
        metadata=metadata,
    )
