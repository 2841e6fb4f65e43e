"""Cross-function effects (paper B's "interactions and hierarchy"): remove function i's heads, score function j.

Built on :func:`vh_lens.functional_heads.interventions.intervene_on_functions` with ``mode="remove"``: every run
there already scores *every* probed function's subquestions, so the matrix is read off its
report. For each pair ``(i, j)``:

- ``functional[i, j]``: accuracy on function ``j``'s subquestions with function ``i``'s heads removed;
- ``random_mean[i, j]`` / ``random_std[i, j]``: the same with as many random heads removed
  (drawn from the heads not in ``i``'s set, one draw per seed; std over seeds, ddof=0);
- ``effect[i, j] = random_mean[i, j] - functional[i, j]``: how much more removing ``i``'s
  heads hurts ``j`` than removing random heads (positive: ``i``'s heads matter for ``j``).

A hierarchy shows as an asymmetry: if perception heads feed reasoning steps, ``effect[perception,
reasoning]`` is large while ``effect[reasoning, perception]`` is near zero.
:meth:`CrossFunctionMatrix.upstream_order` orders the functions by how much their removal hurts
the *other* functions minus how much the others' removal hurts them.

Example:
    >>> matrix = cross_function_effects(model, items, probes, control_seeds=(0, 1, 2))  # doctest: +SKIP
    >>> plot_cross_function(matrix).show()                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from torch import Tensor

from vh_lens.functional_heads.interventions import FunctionInterventionReport, intervene_on_functions

__all__ = ["CrossFunctionMatrix", "cross_function_effects", "cross_function_matrix", "plot_cross_function"]

_FORMAT = "vh_lens.CrossFunctionMatrix"
_FILE = "cross_function.json"


@dataclass(frozen=True, eq=False)
class CrossFunctionMatrix:
    """Accuracy on function ``j`` (columns) with function ``i``'s heads (rows) or random heads removed.

    Attributes:
        removed: The functions whose heads are removed (rows).
        measured: The functions whose subquestions are scored (columns).
        baseline: ``[n_measured]`` accuracy without intervention.
        functional: ``[n_removed, n_measured]`` accuracy with row ``i``'s heads removed.
        random_mean: ``[n_removed, n_measured]`` mean over the random controls (NaN: none).
        random_std: ``[n_removed, n_measured]`` std over the random controls (ddof=0).
        n_heads: heads removed per row.
        counts: subquestions per measured function.
        metadata: JSON-serialisable facts (removal method, seeds, selection).
    """

    removed: tuple[str, ...]
    measured: tuple[str, ...]
    baseline: Tensor
    functional: Tensor
    random_mean: Tensor
    random_std: Tensor
    n_heads: tuple[int, ...]
    counts: Mapping[str, int]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.removed), len(self.measured))
        for name in ("functional", "random_mean", "random_std"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64)
            if tuple(value.shape) != shape:
                raise ValueError(f"CrossFunctionMatrix.{name} must be {list(shape)}, got {list(value.shape)}")
            object.__setattr__(self, name, value)
        baseline = torch.as_tensor(self.baseline, dtype=torch.float64)
        if tuple(baseline.shape) != (len(self.measured),):
            raise ValueError(f"CrossFunctionMatrix.baseline must be [{len(self.measured)}], got {list(baseline.shape)}")
        object.__setattr__(self, "baseline", baseline)
        if len(self.n_heads) != len(self.removed):
            raise ValueError("CrossFunctionMatrix.n_heads must give one count per removed function")
        object.__setattr__(self, "removed", tuple(self.removed))
        object.__setattr__(self, "measured", tuple(self.measured))

    @property
    def effect(self) -> Tensor:
        """``random_mean - functional``: the extra accuracy lost by removing row ``i``'s heads rather than random ones."""
        return self.random_mean - self.functional

    @property
    def drop(self) -> Tensor:
        """``baseline - functional``: accuracy lost on column ``j`` when row ``i``'s heads are removed."""
        return self.baseline[None] - self.functional

    def upstream_order(self) -> list[tuple[str, float]]:
        """Functions (present as rows and columns) by how much more they feed others than others feed them.

        Score of ``f``: mean ``effect[f, g]`` over the other functions ``g`` minus mean
        ``effect[g, f]``; high first (upstream). NaN effects are left out.
        """
        both = [f for f in self.removed if f in self.measured]
        e = self.effect
        out = []
        for f in both:
            i, j = self.removed.index(f), self.measured.index(f)
            gives = [float(e[i, self.measured.index(g)]) for g in both if g != f]
            takes = [float(e[self.removed.index(g), j]) for g in both if g != f]
            gives = [x for x in gives if not math.isnan(x)]
            takes = [x for x in takes if not math.isnan(x)]
            score = (sum(gives) / len(gives) if gives else math.nan) - (sum(takes) / len(takes) if takes else math.nan)
            out.append((f, score))
        return sorted(out, key=lambda x: -x[1] if not math.isnan(x[1]) else math.inf)

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (removed, measured) pair."""
        return [
            {"removed": r, "measured": m, "n_heads": self.n_heads[i], "n_measured": self.counts.get(m, 0),
             "baseline": float(self.baseline[j]), "functional": float(self.functional[i, j]),
             "random_mean": float(self.random_mean[i, j]), "random_std": float(self.random_std[i, j]),
             "effect": float(self.effect[i, j])}
            for i, r in enumerate(self.removed) for j, m in enumerate(self.measured)
        ]  # fmt: skip

    def to_markdown(self, digits: int = 1) -> str:
        """The effect matrix (percentage points) as a markdown table, rows = removed."""
        lines = ["| removed \\ measured | " + " | ".join(self.measured) + " |", "|---" * (len(self.measured) + 1) + "|"]
        for i, r in enumerate(self.removed):
            cells = [f"{100 * float(self.effect[i, j]):+.{digits}f}" for j in range(len(self.measured))]
            lines.append(f"| {r} ({self.n_heads[i]} heads) | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def nn(t: Tensor) -> Any:
            return [None if math.isnan(x) else x for x in t.tolist()] if t.ndim == 1 else [nn(r) for r in t]

        return {"format": _FORMAT, "version": 1, "removed": list(self.removed), "measured": list(self.measured),
                "baseline": nn(self.baseline), "functional": nn(self.functional), "random_mean": nn(self.random_mean),
                "random_std": nn(self.random_std), "n_heads": list(self.n_heads), "counts": dict(self.counts),
                "metadata": dict(self.metadata)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CrossFunctionMatrix:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} (format={data.get('format')!r})")

        def t(x: Any) -> Tensor:
            return torch.tensor(json.loads(json.dumps(x).replace("null", "NaN")), dtype=torch.float64)

        return cls(removed=tuple(data["removed"]), measured=tuple(data["measured"]), baseline=t(data["baseline"]),
                   functional=t(data["functional"]), random_mean=t(data["random_mean"]),
                   random_std=t(data["random_std"]), n_heads=tuple(data["n_heads"]), counts=dict(data["counts"]),
                   metadata=dict(data.get("metadata", {})))  # fmt: skip

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``cross_function.json`` under ``directory``; returns its path."""
        path = Path(directory) / _FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CrossFunctionMatrix:
        """Read what :meth:`save` wrote (``directory`` or the file itself)."""
        path = Path(directory)
        path = path / _FILE if path.is_dir() else path
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def cross_function_matrix(
    report: FunctionInterventionReport, measured: Sequence[str] | None = None
) -> CrossFunctionMatrix:
    """The cross-function matrix of a removal report (rows: ``report.functions``).

    Args:
        report: From :func:`~vh_lens.functional_heads.interventions.intervene_on_functions` with ``mode="remove"``.
        measured: Functions to score (columns); default every label the report counts.

    Raises:
        ValueError: the report is not a removal, or ``measured`` names an unknown label.
    """
    if report.mode != "remove":
        raise ValueError(f"report.mode must be 'remove' for a cross-function matrix, got {report.mode!r}")
    cols = tuple(report.counts if measured is None else measured)
    unknown = [m for m in cols if m not in report.counts]
    if unknown or not cols:
        raise ValueError(f"measured names unknown or no labels {unknown}; the report has {list(report.counts)}")
    functional, mean, std, n_heads = [], [], [], []
    for f in report.functions:
        (run,) = report.runs_of(f, "functional")
        controls = report.runs_of(f, "random")
        functional.append([run.accuracy[m] for m in cols])
        n_heads.append(len(run.heads))
        row_mean, row_std = [], []
        for m in cols:
            values = [r.accuracy[m] for r in controls if not math.isnan(r.accuracy[m])]
            mu = sum(values) / len(values) if values else math.nan
            row_mean.append(mu)
            row_std.append(math.sqrt(sum((v - mu) ** 2 for v in values) / len(values)) if values else math.nan)
        mean.append(row_mean)
        std.append(row_std)
    return CrossFunctionMatrix(
        removed=report.functions, measured=cols, baseline=torch.tensor([report.baseline[m] for m in cols], dtype=torch.float64),
        functional=torch.tensor(functional, dtype=torch.float64), random_mean=torch.tensor(mean, dtype=torch.float64),
        random_std=torch.tensor(std, dtype=torch.float64),
        n_heads=tuple(n_heads), counts={m: report.counts[m] for m in cols},
        metadata={"method": report.method, "alpha": report.alpha, "k": report.k, "seeds": list(report.seeds),
                  "eval_method": report.eval_method, **{k: v for k, v in report.metadata.items() if k == "selection"}},
    )  # fmt: skip


def cross_function_effects(
    model: Any, items_or_samples: Sequence[Any], probes: Any, **options: Any
) -> CrossFunctionMatrix:
    """Remove each function's heads (and random controls) and score every function: the matrix.

    ``options`` go to :func:`~vh_lens.functional_heads.interventions.intervene_on_functions` (``removal``, ``k``,
    ``control_seeds``, ``acts``, ``eval_method``, ``batch_size``, ...; ``mode`` is ``"remove"``).
    """
    if options.pop("mode", "remove") != "remove":
        raise ValueError("cross_function_effects removes heads: mode must be 'remove'")
    report = intervene_on_functions(model, items_or_samples, probes, mode="remove", **options)
    return cross_function_matrix(report)


def plot_cross_function(matrix: CrossFunctionMatrix, value: str = "effect") -> go.Figure:
    """A heatmap of ``matrix.<value>`` (``"effect"``, ``"drop"`` or ``"functional"``), rows = removed.

    Cells read in percentage points; hover shows functional, random mean +- std and baseline.
    """
    if value not in ("effect", "drop", "functional"):
        raise ValueError(f"value must be 'effect', 'drop' or 'functional', got {value!r}")
    z = getattr(matrix, value) * 100
    text = [[f"{float(z[i, j]):+.1f}" if value != "functional" else f"{float(z[i, j]):.1f}"
             for j in range(len(matrix.measured))] for i in range(len(matrix.removed))]  # fmt: skip
    hover = [[f"removed {r} ({matrix.n_heads[i]} heads)<br>measured {m}<br>functional {100 * float(matrix.functional[i, j]):.1f}%"
              f"<br>random {100 * float(matrix.random_mean[i, j]):.1f} +- {100 * float(matrix.random_std[i, j]):.1f}%"
              f"<br>baseline {100 * float(matrix.baseline[j]):.1f}%" for j, m in enumerate(matrix.measured)]
             for i, r in enumerate(matrix.removed)]  # fmt: skip
    diverging = value != "functional"
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=list(matrix.measured), y=[f"{r} ({n})" for r, n in zip(matrix.removed, matrix.n_heads, strict=True)],
        text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
        colorscale="RdBu_r" if diverging else "Viridis", zmid=0 if diverging else None,
        colorbar={"title": "pp" if diverging else "%"},
    ))  # fmt: skip
    titles = {
        "effect": "extra accuracy lost vs random heads",
        "drop": "accuracy lost vs baseline",
        "functional": "accuracy",
    }
    fig.update_layout(title=f"Cross-function removal: {titles[value]} (rows: heads removed, columns: function scored)",
                      xaxis_title="function scored", yaxis_title="function whose heads are removed",
                      yaxis={"autorange": "reversed"})  # fmt: skip
    return fig
