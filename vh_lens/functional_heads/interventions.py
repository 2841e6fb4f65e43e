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
  and ``sigma`` the spread along it, :func:`vh_lens.functional_heads.probes.mean_difference_directions`; the
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

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor
from tqdm import tqdm

from vh_lens.core.io import csv_text, nan_to_none, write_text
from vh_lens.data.sample import Sample
from vh_lens.evaluation.scoring import EvalMethod, _check_options, _chunks, _evaluate_prepared, _offload, prepare_answer_batch
from vh_lens.analysis.interventions import Hooks, ablate_heads, scale_heads, shift_heads
from vh_lens.functional_heads.probes import FunctionDirections, HeadActivations, ProbeResult, mean_difference_directions

__all__ = [
    "CSV_COLUMNS",
    "FunctionInterventionReport",
    "InterventionRun",
    "function_hooks",
    "intervene_on_functions",
    "plot_function_interventions",
    "random_heads",
]

logger = logging.getLogger(__name__)

Head = tuple[int, int]
Mode = Literal["remove", "emphasise"]
Removal = Literal["zero", "mean", "scale"]
Emphasis = Literal["scale", "shift"]

_MODES = ("remove", "emphasise")
_REMOVALS = ("zero", "mean", "scale")
_EMPHASES = ("scale", "shift")
_CONDITIONS = ("functional", "random")
_MAIN_ANSWERS = ("final_step", "item")
DEFAULT_ALPHA: Mapping[tuple[str, str], float] = {
    ("remove", "scale"): 1e-5,
    ("emphasise", "scale"): 2.0,
    ("emphasise", "shift"): 5.0,
}
"""``alpha`` when none is given: the tiny removal factor, the emphasis factor, the shift strength
in units of ``sigma`` (the group's 5)."""

_FORMAT = "vh_lens.FunctionInterventionReport"
_JSON_FILE = "interventions.json"
_CSV_FILE = "interventions.csv"
_MD_FILE = "interventions.md"
CSV_COLUMNS: tuple[str, ...] = (
    "function", "n_heads", "heads", "n_own", "n_other", "n_main",
    "baseline_own", "functional_own", "random_own_mean", "random_own_std",
    "baseline_other", "functional_other", "random_other_mean", "random_other_std",
    "baseline_main", "functional_main", "random_main_mean", "random_main_std", "n_seeds",
)  # fmt: skip
"""Columns of :meth:`FunctionInterventionReport.to_rows` / ``to_csv``. ``own``: the function's
subquestions; ``other``: the other functions' subquestions, pooled; ``main``: main questions.
Heads are written ``layer.head``, ``;``-separated; ``random_*_std`` is over seeds (ddof=0)."""


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
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "remove" and removal not in _REMOVALS:
        raise ValueError(f"removal must be one of {_REMOVALS}, got {removal!r}")
    if mode == "emphasise" and emphasis not in _EMPHASES:
        raise ValueError(f"emphasis must be one of {_EMPHASES}, got {emphasis!r}")
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
# The report


def _check_acc(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isnan(value) or 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (or NaN), got {value}")
    return value


@dataclass(frozen=True)
class InterventionRun:
    """Accuracies with one head set intervened on.

    Attributes:
        function: The function whose heads (``"functional"``) or whose head count
            (``"random"``) this run used.
        condition: ``"functional"`` or ``"random"``.
        seed: The random draw's seed (``None`` for functional heads).
        heads: The heads intervened on, ``(layer, head)``.
        accuracy: Function label -> accuracy on that function's subquestions (NaN: none).
        main_accuracy: Accuracy on the main questions (``None``: not evaluated).
    """

    function: str
    condition: str
    seed: int | None
    heads: tuple[Head, ...]
    accuracy: Mapping[str, float]
    main_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.condition not in _CONDITIONS:
            raise ValueError(f"InterventionRun.condition must be one of {_CONDITIONS}, got {self.condition!r}")
        if (self.seed is None) != (self.condition == "functional"):
            raise ValueError("InterventionRun.seed is required for random heads and must be None for functional ones")
        heads = tuple((int(layer), int(head)) for layer, head in self.heads)
        if not heads or len(set(heads)) != len(heads):
            raise ValueError(f"InterventionRun.heads must be distinct and non-empty, got {heads}")
        object.__setattr__(self, "heads", heads)
        accuracy = {str(k): _check_acc(f"accuracy[{k!r}]", v) for k, v in self.accuracy.items()}
        object.__setattr__(self, "accuracy", accuracy)
        object.__setattr__(self, "main_accuracy", _check_acc("main_accuracy", self.main_accuracy))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass(frozen=True, eq=False)
class FunctionInterventionReport:
    """Accuracy with each function's heads, or as many random heads, removed or emphasised.

    Attributes:
        functions: The functions intervened on, in order.
        counts: Function label -> number of evaluated subquestions (every probed function,
            also those not intervened on: they count in the ``other`` pools).
        n_main: Number of evaluated main questions (0: none).
        baseline: Function label -> accuracy on its subquestions without intervention.
        baseline_main: Main-question accuracy without intervention (``None`` if ``n_main == 0``).
        runs: One :class:`InterventionRun` per function and condition (functional, then one
            random run per seed).
        mode: ``"remove"`` or ``"emphasise"``.
        method: The removal (``zero``/``mean``/``scale``) or emphasis (``scale``/``shift``).
        alpha: The factor or strength (``None`` for zero and mean removal).
        k: Heads per function (``None``: the elbow of each function's sorted scores).
        eval_method: ``"generate"`` or ``"score"``.
        seeds: Seeds of the random controls.
        metadata: JSON-serialisable facts (selection, main-answer rule, skipped controls, ...).

    Example:
        >>> report.to_rows()[0]["functional_own"]  # doctest: +SKIP
    """

    functions: tuple[str, ...]
    counts: Mapping[str, int]
    n_main: int
    baseline: Mapping[str, float]
    baseline_main: float | None
    runs: tuple[InterventionRun, ...]
    mode: str = "remove"
    method: str = "zero"
    alpha: float | None = None
    k: int | None = None
    eval_method: str = "generate"
    seeds: tuple[int, ...] = (0, 1, 2)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "counts", {str(k): int(v) for k, v in self.counts.items()})
        baseline = {str(k): _check_acc(f"baseline[{k!r}]", v) for k, v in self.baseline.items()}
        object.__setattr__(self, "baseline", baseline)
        object.__setattr__(self, "baseline_main", _check_acc("baseline_main", self.baseline_main))
        if not self.functions or len(set(self.functions)) != len(self.functions):
            raise ValueError(f"functions must be distinct and non-empty, got {self.functions}")
        missing = [f for f in self.functions if f not in self.counts]
        if missing or set(self.baseline) != set(self.counts):
            raise ValueError(f"counts and baseline must cover the same labels, including every function {missing}")
        if (self.baseline_main is None) != (int(self.n_main) == 0):
            raise ValueError("baseline_main must be given exactly when there are main questions (n_main > 0)")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.method not in (_REMOVALS if self.mode == "remove" else _EMPHASES):
            raise ValueError(f"method {self.method!r} is not a {self.mode} method")
        if self.k is not None and int(self.k) < 1:
            raise ValueError(f"k must be positive or None, got {self.k}")
        for run in self.runs:
            if not isinstance(run, InterventionRun):
                raise ValueError("runs must be InterventionRun objects")
            if run.function not in self.functions or set(run.accuracy) != set(self.counts):
                raise ValueError(f"run for {run.function!r} does not match the report's functions and labels")
        if [r.function for r in self.runs if r.condition == "functional"] != list(self.functions):
            raise ValueError("runs must hold exactly one functional run per function, in order")
        try:
            metadata = json.loads(json.dumps(dict(self.metadata)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable: {err}") from err
        object.__setattr__(self, "n_main", int(self.n_main))
        object.__setattr__(self, "metadata", metadata)

    # -- queries -----------------------------------------------------------------------------

    def pooled(self, accuracy: Mapping[str, float], labels: Sequence[str]) -> float:
        """Accuracy over the subquestions of ``labels`` together (weighted by their counts)."""
        n = sum(self.counts[f] for f in labels)
        if n == 0:
            return math.nan
        return sum(accuracy[f] * self.counts[f] for f in labels if self.counts[f]) / n

    def runs_of(self, function: str, condition: str) -> list[InterventionRun]:
        """The runs of one function and condition (one functional run; one random run per seed)."""
        return [r for r in self.runs if r.function == function and r.condition == condition]

    def summary(self, function: str) -> dict[str, Any]:
        """One function's row (columns :data:`CSV_COLUMNS`; heads as a list of pairs)."""
        if function not in self.functions:
            raise KeyError(f"unknown function {function!r}; known: {list(self.functions)}")
        (functional,) = self.runs_of(function, "functional")
        controls = self.runs_of(function, "random")
        others = [f for f in self.counts if f != function]
        row: dict[str, Any] = {
            "function": function, "n_heads": len(functional.heads), "heads": [list(h) for h in functional.heads],
            "n_own": self.counts[function], "n_other": sum(self.counts[f] for f in others), "n_main": self.n_main,
        }  # fmt: skip
        scopes: dict[str, Callable[[Mapping[str, float], float | None], float]] = {
            "own": lambda acc, main: acc[function],
            "other": lambda acc, main: self.pooled(acc, others),
            "main": lambda acc, main: math.nan if main is None else main,
        }
        for scope, get in scopes.items():
            mean, std = _mean_std([get(r.accuracy, r.main_accuracy) for r in controls])
            row |= {f"baseline_{scope}": get(self.baseline, self.baseline_main),
                    f"functional_{scope}": get(functional.accuracy, functional.main_accuracy),
                    f"random_{scope}_mean": mean, f"random_{scope}_std": std}  # fmt: skip
        row["n_seeds"] = len(controls)
        return {c: row[c] for c in CSV_COLUMNS}

    # -- tables ------------------------------------------------------------------------------

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per function (:meth:`summary`)."""
        return [self.summary(f) for f in self.functions]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The rows as CSV (:data:`CSV_COLUMNS`; floats with ``repr``, NaN empty); written atomically to ``path``."""
        rows = []
        for row in self.to_rows():
            row["heads"] = ";".join(f"{layer}.{head}" for layer, head in row["heads"])
            rows.append({k: ("" if math.isnan(v) else repr(v)) if isinstance(v, float) else v for k, v in row.items()})
        text = csv_text(rows, CSV_COLUMNS)
        if path is not None:
            write_text(Path(path), text)
        return text

    def to_markdown(self, digits: int = 1) -> str:
        """A table: per function, accuracy (%) baseline / functional heads / random heads (mean ± std).

        Example:
            >>> print(report.to_markdown())  # doctest: +SKIP
            | function | heads | own subquestions | other subquestions | main questions |
            |---|---|---|---|---|
            | Retrieval | 12 | 40.0 / 12.0 / 38.7 ± 1.2 | ... |
        """

        def pct(x: float) -> str:
            return "–" if math.isnan(x) else f"{100 * x:.{digits}f}"

        what = f"{self.mode} ({self.method}{'' if self.alpha is None else f', alpha={self.alpha:g}'})"
        selection = "the elbow of its sorted probe scores" if self.k is None else f"its top {self.k} heads"
        lines = [
            f"Intervention: {what} on each function's heads ({selection}) or as many random other heads "
            f"({len(self.seeds)} seed(s)). Cells: accuracy (%) baseline / functional heads / random heads "
            f"(mean ± std). Answers read by {self.eval_method}; correct = normalised exact match with the gold "
            f"answer (strict for open answers). Main questions: {self.n_main}.",
            "",
            "| function | heads | own subquestions (n) | other subquestions | main questions |",
            "|---|---|---|---|---|",
        ]
        for row in self.to_rows():
            cells = []
            for scope in ("own", "other", "main"):
                rand = pct(row[f"random_{scope}_mean"])
                if row["n_seeds"] > 1:
                    rand += f" ± {pct(row[f'random_{scope}_std'])}"
                cells.append(f"{pct(row[f'baseline_{scope}'])} / {pct(row[f'functional_{scope}'])} / {rand}")
            cells[0] += f" ({row['n_own']})"
            lines.append(f"| {row['function']} | {row['n_heads']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as ``null``)."""
        return nan_to_none({
            "format": _FORMAT, "version": 1, "functions": list(self.functions), "counts": dict(self.counts),
            "n_main": self.n_main, "baseline": dict(self.baseline), "baseline_main": self.baseline_main,
            "mode": self.mode, "method": self.method, "alpha": self.alpha, "k": self.k,
            "eval_method": self.eval_method, "seeds": list(self.seeds), "metadata": dict(self.metadata),
            "runs": [{"function": r.function, "condition": r.condition, "seed": r.seed,
                      "heads": [list(h) for h in r.heads], "accuracy": dict(r.accuracy),
                      "main_accuracy": r.main_accuracy} for r in self.runs],
        })  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FunctionInterventionReport:
        """Inverse of :meth:`to_json`."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a saved FunctionInterventionReport (format={data.get('format')!r})")

        def nan(values: Mapping[str, Any]) -> dict[str, float]:
            return {k: math.nan if v is None else v for k, v in values.items()}

        runs = tuple(
            InterventionRun(function=r["function"], condition=r["condition"], seed=r["seed"],
                            heads=tuple(tuple(h) for h in r["heads"]), accuracy=nan(r["accuracy"]),
                            main_accuracy=r["main_accuracy"])
            for r in data["runs"]
        )  # fmt: skip
        return cls(functions=tuple(data["functions"]), counts=data["counts"], n_main=data["n_main"],
                   baseline=nan(data["baseline"]), baseline_main=data["baseline_main"], runs=runs,
                   mode=data["mode"], method=data["method"], alpha=data["alpha"], k=data["k"],
                   eval_method=data["eval_method"], seeds=tuple(data["seeds"]),
                   metadata=data.get("metadata", {}))  # fmt: skip

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``interventions.csv``, ``interventions.md`` and ``interventions.json`` (each atomically, JSON last)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_csv(directory / _CSV_FILE)
        write_text(directory / _MD_FILE, self.to_markdown())
        write_text(directory / _JSON_FILE, json.dumps(self.to_json(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FunctionInterventionReport:
        """Read what :meth:`save` wrote.

        Raises:
            FileNotFoundError: no ``interventions.json`` in ``directory``.
        """
        path = Path(directory) / _JSON_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no saved FunctionInterventionReport at {directory}: {_JSON_FILE} missing")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------
# The plot

_SCOPE_TITLES = {"own": "the function's subquestions", "other": "other functions' subquestions",
                 "main": "main questions"}  # fmt: skip


def plot_function_interventions(
    report: FunctionInterventionReport,
    scopes: Sequence[str] = ("own", "other", "main"),
    *,
    title: str | None = None,
) -> go.Figure:
    """Grouped bars per function: baseline, functional heads, random heads (mean, std error bars).

    Args:
        report: The report.
        scopes: Panels, from ``"own"`` (the function's subquestions), ``"other"`` (the other
            functions' subquestions) and ``"main"`` (main questions; left out when none).
        title: Figure title.

    Returns:
        A figure with one panel per scope, each with three ``go.Bar`` traces (``x``: functions,
        ``y``: accuracy).

    Example:
        >>> plot_function_interventions(report).write_html("interventions.html")  # doctest: +SKIP
    """
    scopes = [s for s in scopes if not (s == "main" and report.n_main == 0)]
    if not scopes or any(s not in _SCOPE_TITLES for s in scopes):
        raise ValueError(f"scopes must be some of {tuple(_SCOPE_TITLES)}, got {list(scopes)}")
    rows = report.to_rows()
    names = [r["function"] for r in rows]
    fig = make_subplots(rows=1, cols=len(scopes), subplot_titles=[_SCOPE_TITLES[s] for s in scopes], shared_yaxes=True)
    colours = {"baseline": "#7f7f7f", "functional": "#d62728", "random": "#1f77b4"}
    for col, scope in enumerate(scopes, start=1):
        bars = [("baseline", [r[f"baseline_{scope}"] for r in rows], None),
                ("functional", [r[f"functional_{scope}"] for r in rows], None),
                ("random", [r[f"random_{scope}_mean"] for r in rows], [r[f"random_{scope}_std"] for r in rows])]
        for name, y, err in bars:
            label = {"baseline": "no intervention", "functional": "functional heads",
                     "random": "random heads (mean ± std)"}[name]  # fmt: skip
            fig.add_trace(
                go.Bar(x=names, y=y, name=label, legendgroup=name, showlegend=col == 1, marker_color=colours[name],
                       error_y=None if err is None else {"type": "data", "array": err, "visible": True},
                       hovertemplate=f"%{{x}}<br>{label}: %{{y:.3f}}<extra></extra>"),
                row=1, col=col,
            )  # fmt: skip
    fig.update_yaxes(title_text="accuracy", range=[0, 1], col=1)
    what = f"{report.mode} ({report.method}{'' if report.alpha is None else f', alpha={report.alpha:g}'})"
    fig.update_layout(barmode="group", title=title or f"Functional heads vs random heads: {what}",
                      height=420, width=max(700, 120 * len(names) * len(scopes)))  # fmt: skip
    return fig


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


def _head_means(acts: HeadActivations) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Each head's mean activation over all samples, read one layer at a time."""
    return torch.stack([acts.layers(layer, layer + 1).mean(0)[0] for layer in range(acts.n_layers)])


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
    _check_options(eval_method, batch_size, max_new_tokens)
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
        means = _head_means(acts)
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

    prepared = [
        _offload(prepare_answer_batch(model, chunk, method=eval_method, format_question=format_question, offset=start))
        for start, chunk in _chunks(samples, batch_size)
    ]
    own = torch.tensor([probes.functions.index(x) for x in labels])
    onehot = torch.nn.functional.one_hot(own, len(probes.functions)).float()  # [n_sub, n_functions]
    bar = tqdm(total=1 + len(plans), desc=f"interventions ({mode}: {method})", unit="eval", disable=not progress)

    def accuracies(hooks: Hooks) -> tuple[dict[str, float], float | None]:
        result = _evaluate_prepared(model, prepared, fwd_hooks=hooks, method=eval_method, max_new_tokens=max_new_tokens)
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
