"""The result of :func:`~vh_lens.functional_heads.interventions.intervene_on_functions`.

:class:`FunctionInterventionReport` holds the baseline and one :class:`InterventionRun` per
function and condition (its functional heads, then as many random heads per seed); it gives one
row per function (:data:`CSV_COLUMNS`), a Markdown table, and saves to / loads from a folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vh_lens.core.io import check_format_version, csv_text, nan_to_none, write_text
from vh_lens.evaluation.stats import mean_std

__all__ = [
    "CONDITIONS",
    "CSV_COLUMNS",
    "EMPHASES",
    "MODES",
    "REMOVALS",
    "FunctionInterventionReport",
    "InterventionRun",
]

Head = tuple[int, int]

MODES: tuple[str, ...] = ("remove", "emphasise")
REMOVALS: tuple[str, ...] = ("zero", "mean", "scale")
EMPHASES: tuple[str, ...] = ("scale", "shift")
CONDITIONS: tuple[str, ...] = ("functional", "random")

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
        if self.condition not in CONDITIONS:
            raise ValueError(f"InterventionRun.condition must be one of {CONDITIONS}, got {self.condition!r}")
        if (self.seed is None) != (self.condition == "functional"):
            raise ValueError("InterventionRun.seed is required for random heads and must be None for functional ones")
        heads = tuple((int(layer), int(head)) for layer, head in self.heads)
        if not heads or len(set(heads)) != len(heads):
            raise ValueError(f"InterventionRun.heads must be distinct and non-empty, got {heads}")
        object.__setattr__(self, "heads", heads)
        accuracy = {str(k): _check_acc(f"accuracy[{k!r}]", v) for k, v in self.accuracy.items()}
        object.__setattr__(self, "accuracy", accuracy)
        object.__setattr__(self, "main_accuracy", _check_acc("main_accuracy", self.main_accuracy))


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
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.method not in (REMOVALS if self.mode == "remove" else EMPHASES):
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
            mean, std = mean_std([get(r.accuracy, r.main_accuracy) for r in controls])
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
        data = json.loads(path.read_text(encoding="utf-8"))
        check_format_version(data, path, what="FunctionInterventionReport", current=1)  # issue 14: saved formats
        return cls.from_json(data)
