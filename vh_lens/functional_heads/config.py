"""Settings of paper B's experiments as frozen configs (:class:`~vh_lens.core.config.ExperimentConfig`).

One config per entry point, shared by the Python API (``config=`` or the same names as keyword
arguments), the CLI and the saved results (each result records its config):

- :class:`CollectionConfig`: :func:`~vh_lens.functional_heads.activations.collect_head_activations`
  (in ``HeadActivations.metadata["config"]``);
- :class:`ProbeConfig`: :func:`~vh_lens.functional_heads.probes.probe_heads` (its fields are
  the keys of ``ProbeResult.config``, next to the counts);
- :class:`InterventionConfig`: :func:`~vh_lens.functional_heads.interventions.intervene_on_functions`
  (in ``FunctionInterventionReport.metadata["config"]``).

Example:
    >>> InterventionConfig(mode="emphasise", emphasis="shift").resolved_alpha
    5.0
    >>> ProbeConfig(mode="svm")
    Traceback (most recent call last):
    ...
    ValueError: mode must be 'ovr', 'multiclass' or 'both', got 'svm'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vh_lens.core.config import ExperimentConfig, check_choice, check_ints, check_positive_int
from vh_lens.evaluation.scoring import check_eval_options
from vh_lens.functional_heads.report import EMPHASES, MODES, REMOVALS

__all__ = ["DEFAULT_ALPHA", "CollectionConfig", "InterventionConfig", "ProbeConfig"]

POSITIONS: tuple[str, ...] = ("last_prompt", "answer_mean")
CONTEXTS: tuple[str, ...] = ("chain", "none")
DTYPES: tuple[str, ...] = ("float16", "float32")
MAIN_ANSWERS: tuple[str, ...] = ("final_step", "item")
PROBE_MODES: tuple[str, ...] = ("ovr", "multiclass", "both")

DEFAULT_ALPHA: Mapping[tuple[str, str], float] = {
    ("remove", "scale"): 1e-5,
    ("emphasise", "scale"): 2.0,
    ("emphasise", "shift"): 5.0,
}
"""``alpha`` when none is given: the tiny removal factor, the emphasis factor, the shift strength
in units of ``sigma`` (the group's 5)."""


def _check_functions(functions: Sequence[str] | None) -> None:
    if isinstance(functions, str):
        raise ValueError(f"functions must be a sequence of function labels, not one string: {functions!r}")
    if functions is not None and not all(isinstance(f, str) for f in functions):
        raise ValueError(f"functions must be None or function labels (strings), got {functions!r}")


@dataclass(frozen=True)
class CollectionConfig(ExperimentConfig):
    """Settings of :func:`~vh_lens.functional_heads.activations.collect_head_activations`.

    Attributes:
        position: ``"last_prompt"`` (the query position) or ``"answer_mean"`` (the mean over the
            positions that predict the gold answer's tokens, under teacher forcing).
        batch_size: samples per forward pass.
        dtype: storage dtype, ``"float16"`` or ``"float32"`` (the hook reads in float32).
        context: for CogItems, the subquestion context (``"chain"`` or ``"none"``).
    """

    position: str = "last_prompt"
    batch_size: int = 8
    dtype: str = "float16"
    context: str = "chain"

    def validate(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be 'last_prompt' or 'answer_mean', got {self.position!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {self.dtype}")
        check_choice("context", self.context, CONTEXTS)


@dataclass(frozen=True)
class ProbeConfig(ExperimentConfig):
    """Settings of :func:`~vh_lens.functional_heads.probes.probe_heads`.

    Attributes:
        functions: the labels to probe, in order; ``None``: every non-empty label with samples
            on both sides of the split.
        seed: seed of the group split.
        test_fraction: fraction of groups held out, in ``(0, 1)``.
        mode: ``"ovr"`` (function vs rest), ``"multiclass"`` (softmax) or ``"both"``.
        l2: L2 penalty on the (standardised) weights (``>= 0``).
        steps: maximum L-BFGS iterations.
        balanced: weight classes inversely to their frequency.
        chunk_layers: layers per chunk (``None``: as many as fit in ~256 MiB of float32).
    """

    functions: Sequence[str] | None = None  # stored as a tuple
    seed: int = 0
    test_fraction: float = 0.3
    mode: str = "both"
    l2: float = 1e-3
    steps: int = 200
    balanced: bool = True
    chunk_layers: int | None = None

    def validate(self) -> None:
        _check_functions(self.functions)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.test_fraction, int | float) or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.mode not in PROBE_MODES:
            raise ValueError(f"mode must be 'ovr', 'multiclass' or 'both', got {self.mode!r}")
        if (
            isinstance(self.l2, bool)
            or not isinstance(self.l2, int | float)
            or not math.isfinite(self.l2)
            or self.l2 < 0
        ):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        check_positive_int("steps", self.steps)
        if not isinstance(self.balanced, bool):
            raise ValueError(f"balanced must be a bool, got {self.balanced!r}")
        if self.chunk_layers is not None:
            check_positive_int("chunk_layers", self.chunk_layers)


@dataclass(frozen=True)
class InterventionConfig(ExperimentConfig):
    """Settings of :func:`~vh_lens.functional_heads.interventions.intervene_on_functions`.

    Attributes:
        functions: the functions to intervene on (``None``: all the probed ones).
        mode: ``"remove"`` or ``"emphasise"``.
        removal: ``"zero"``, ``"mean"`` or ``"scale"`` (by ``alpha``, default 1e-5).
        emphasis: ``"scale"`` (by ``alpha``, default 2) or ``"shift"`` (``alpha`` default 5).
        alpha: the factor or strength (:data:`DEFAULT_ALPHA` when ``None``); must be ``None``
            for zero and mean removal.
        k: heads per function; ``None``: the elbow of the function's sorted scores.
        control_seeds: one random control per seed (may be empty).
        eval_method: ``"generate"`` (greedy generation, normalised exact match) or ``"score"``.
        include_main: also evaluate the main questions.
        main_answer: a main question's gold answer: ``"final_step"`` (the answer of the chain's
            last subquestion) or ``"item"`` (the item's answer as given).
        context: subquestion context when CogItems are given (``"chain"`` or ``"none"``).
        batch_size: samples per forward pass.
        max_new_tokens: generation length.
    """

    functions: Sequence[str] | None = None  # stored as a tuple
    mode: str = "remove"
    removal: str = "zero"
    emphasis: str = "shift"
    alpha: float | None = None
    k: int | None = None
    control_seeds: Sequence[int] = (0, 1, 2)  # stored as a tuple
    eval_method: str = "generate"
    include_main: bool = True
    main_answer: str = "final_step"
    context: str = "chain"
    batch_size: int = 8
    max_new_tokens: int = 16

    def validate(self) -> None:
        _check_functions(self.functions)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "remove" and self.removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {self.removal!r}")
        if self.mode == "emphasise" and self.emphasis not in EMPHASES:
            raise ValueError(f"emphasis must be one of {EMPHASES}, got {self.emphasis!r}")
        if (self.mode, self.method) not in DEFAULT_ALPHA and self.alpha is not None:
            raise ValueError(f"alpha is not used by removal={self.method!r} (only by 'scale', and by emphasis)")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float)):
            raise ValueError(f"alpha must be a number or None, got {self.alpha!r}")
        check_eval_options(self.eval_method, self.batch_size, self.max_new_tokens)
        if self.main_answer not in MAIN_ANSWERS:
            raise ValueError(f"main_answer must be one of {MAIN_ANSWERS}, got {self.main_answer!r}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive int or None, got {self.k!r}")
        check_ints("control_seeds", list(self.control_seeds), positive=False, allow_empty=True)
        if not isinstance(self.include_main, bool):
            raise ValueError(f"include_main must be a bool, got {self.include_main!r}")
        check_choice("context", self.context, CONTEXTS)

    @property
    def method(self) -> str:
        """The removal (``mode="remove"``) or the emphasis (``mode="emphasise"``)."""
        return self.removal if self.mode == "remove" else self.emphasis

    @property
    def resolved_alpha(self) -> float | None:
        """``alpha``, or its default for the method (``None`` for zero and mean removal)."""
        default = DEFAULT_ALPHA.get((self.mode, self.method))
        if default is None:
            return None
        return float(default if self.alpha is None else self.alpha)
