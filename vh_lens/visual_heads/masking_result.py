"""The result of paper A's head masking: one :class:`MaskingRow` per stage and ``k``, the :class:`MaskingResult` table.

Made by :func:`vh_lens.visual_heads.masking.masking_experiment`; saved as CSV, Markdown and JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vh_lens.core.hooks import Head
from vh_lens.core.io import csv_text, nan_to_none, read_json, write_json, write_text
from vh_lens.evaluation.stats import mean_std
from vh_lens.visual_heads.scores import STAGES

__all__ = ["ABLATIONS", "CSV_COLUMNS", "MaskingResult", "MaskingRow"]

ABLATIONS: tuple[str, ...] = ("zero", "mean", "uniform")
"""The ablation methods of the masking experiment (:func:`vh_lens.analysis.interventions.ablate_heads`)."""
_FORMAT = "vh_lens.MaskingResult"
_JSON_FILE = "masking.json"
_CSV_FILE = "masking.csv"
_MD_FILE = "masking.md"
CSV_COLUMNS: tuple[str, ...] = (
    "stage",
    "k",
    "k_used",
    "n_stage_heads",
    "method",
    "metric",
    "baseline_acc",
    "top_acc",
    "random_mean",
    "random_std",
    "top_drop",
    "random_drop",
    "n_seeds",
    "random_accs",
    "top_heads",
)
"""Columns of :meth:`MaskingResult.to_csv`. Lists are ``;``-separated; heads are ``layer.head``."""


@dataclass(frozen=True)
class MaskingRow:
    """One stage and ``k`` of the head-masking table.

    Attributes:
        stage: ``"early"``, ``"mid"`` or ``"late"``.
        k: the requested number of heads.
        k_used: heads actually removed: ``min(k, n_stage_heads)``.
        n_stage_heads: heads in the stage (its layers times the heads per layer).
        method: ablation method (``"zero"``, ``"mean"``, ``"uniform"``).
        metric: the score that ranks the top heads.
        baseline_acc: accuracy with nothing removed.
        top_acc: accuracy with the stage's top ``k_used`` heads removed.
        random_accs: accuracy with ``k_used`` random heads of the stage removed, one per seed
            (empty when the stage has too few heads outside the top ones).
        top_heads: the removed top heads, ``(layer, head)``, best first.
        random_heads: the heads removed for each seed.
    """

    stage: str
    k: int
    k_used: int
    n_stage_heads: int
    method: str
    metric: str
    baseline_acc: float
    top_acc: float
    random_accs: tuple[float, ...]
    top_heads: tuple[Head, ...]
    random_heads: tuple[tuple[Head, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"MaskingRow.stage must be one of {STAGES}, got {self.stage!r}")
        if not (1 <= self.k_used <= self.k) or self.k_used > self.n_stage_heads:
            raise ValueError(
                f"MaskingRow: need 1 <= k_used <= min(k, n_stage_heads), got k_used={self.k_used}, k={self.k}, "
                f"n_stage_heads={self.n_stage_heads}"
            )
        if self.k_used != min(self.k, self.n_stage_heads):
            raise ValueError(f"MaskingRow.k_used must be min(k, n_stage_heads) = {min(self.k, self.n_stage_heads)}")
        if self.method not in ABLATIONS:
            raise ValueError(f"MaskingRow.method must be one of {ABLATIONS}, got {self.method!r}")
        for name in ("baseline_acc", "top_acc"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"MaskingRow.{name} must be in [0, 1], got {getattr(self, name)}")
        accs = tuple(float(a) for a in self.random_accs)
        if any(not 0.0 <= a <= 1.0 for a in accs):
            raise ValueError(f"MaskingRow.random_accs must be in [0, 1], got {accs}")
        top = tuple((int(layer), int(head)) for layer, head in self.top_heads)
        rand = tuple(tuple((int(layer), int(head)) for layer, head in heads) for heads in self.random_heads)
        if len(top) != self.k_used:
            raise ValueError(f"MaskingRow.top_heads must list k_used={self.k_used} heads, got {len(top)}")
        if rand and len(rand) != len(accs):
            raise ValueError("MaskingRow.random_heads needs one head list per random accuracy")
        object.__setattr__(self, "baseline_acc", float(self.baseline_acc))
        object.__setattr__(self, "top_acc", float(self.top_acc))
        object.__setattr__(self, "random_accs", accs)
        object.__setattr__(self, "top_heads", top)
        object.__setattr__(self, "random_heads", rand)

    @property
    def random_mean(self) -> float:
        """Mean of :attr:`random_accs` (NaN without a random control)."""
        return mean_std(self.random_accs)[0]

    @property
    def random_std(self) -> float:
        """Population standard deviation of :attr:`random_accs` (NaN without a random control)."""
        return mean_std(self.random_accs)[1]

    @property
    def top_drop(self) -> float:
        """``baseline_acc - top_acc``."""
        return self.baseline_acc - self.top_acc

    @property
    def random_drop(self) -> float:
        """``baseline_acc - random_mean``."""
        return self.baseline_acc - self.random_mean

    def to_dict(self) -> dict[str, Any]:
        """The row as a flat dict with the columns :data:`CSV_COLUMNS` (lists kept as lists)."""
        return {
            "stage": self.stage,
            "k": self.k,
            "k_used": self.k_used,
            "n_stage_heads": self.n_stage_heads,
            "method": self.method,
            "metric": self.metric,
            "baseline_acc": self.baseline_acc,
            "top_acc": self.top_acc,
            "random_mean": self.random_mean,
            "random_std": self.random_std,
            "top_drop": self.top_drop,
            "random_drop": self.random_drop,
            "n_seeds": len(self.random_accs),
            "random_accs": list(self.random_accs),
            "top_heads": [list(h) for h in self.top_heads],
        }


@dataclass(frozen=True, eq=False)
class MaskingResult:
    """The head-masking table of :func:`vh_lens.visual_heads.masking.masking_experiment`.

    Attributes:
        rows: one :class:`MaskingRow` per stage and requested ``k`` (stages in the order asked,
            ``k`` ascending within a stage).
        baseline: accuracy of the unmasked model.
        n_samples: number of evaluated samples.
        method: ablation method.
        metric: the score ranking the top heads.
        eval_method: ``"score"`` or ``"generate"``.
        seeds: the seeds of the random controls.
        metadata: anything else (JSON-serialisable), e.g. ``skipped_stages``.

    Example:
        >>> result = masking_experiment(model, samples, scores, ks=(10, 20))  # doctest: +SKIP
        >>> print(result.to_markdown())  # doctest: +SKIP
    """

    rows: tuple[MaskingRow, ...]
    baseline: float
    n_samples: int
    method: str = "zero"
    metric: str = "detection"
    eval_method: str = "score"
    seeds: tuple[int, ...] = (0, 1, 2)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = tuple(self.rows)
        if not all(isinstance(r, MaskingRow) for r in rows):
            raise ValueError("MaskingResult.rows must be MaskingRow objects")
        if not 0.0 <= float(self.baseline) <= 1.0:
            raise ValueError(f"MaskingResult.baseline must be in [0, 1], got {self.baseline}")
        if isinstance(self.n_samples, bool) or int(self.n_samples) < 1:
            raise ValueError(f"MaskingResult.n_samples must be positive, got {self.n_samples}")
        keys = [(r.stage, r.k) for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError("MaskingResult.rows repeat a (stage, k) pair")
        for r in rows:
            if (r.method, r.metric) != (self.method, self.metric) or not math.isclose(r.baseline_acc, self.baseline):
                raise ValueError("every MaskingRow must share the result's method, metric and baseline")
        try:
            metadata = json.loads(json.dumps(dict(self.metadata)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"MaskingResult.metadata must be JSON-serialisable: {err}") from err
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "baseline", float(self.baseline))
        object.__setattr__(self, "n_samples", int(self.n_samples))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "metadata", metadata)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages present, in row order."""
        return tuple(dict.fromkeys(r.stage for r in self.rows))

    @property
    def ks(self) -> tuple[int, ...]:
        """The requested ``k`` values, ascending."""
        return tuple(sorted({r.k for r in self.rows}))

    def row(self, stage: str, k: int) -> MaskingRow:
        """The row of ``stage`` and requested ``k``."""
        for r in self.rows:
            if r.stage == stage and r.k == k:
                return r
        raise KeyError(f"no row for stage {stage!r} and k={k}")

    def curve(self, stage: str) -> dict[str, list[float]]:
        """Accuracy against the number of removed heads for one stage.

        Returns:
            ``{"k": [...], "top": [...], "random_mean": [...], "random_std": [...]}``, over the
            distinct ``k_used`` values ascending (capped ``k`` collapse to one point).
        """
        points: dict[int, MaskingRow] = {}
        for r in self.rows:
            if r.stage == stage:
                points.setdefault(r.k_used, r)
        if not points:
            raise KeyError(f"no rows for stage {stage!r}")
        ordered = [points[k] for k in sorted(points)]
        return {
            "k": [float(r.k_used) for r in ordered],
            "top": [r.top_acc for r in ordered],
            "random_mean": [r.random_mean for r in ordered],
            "random_std": [r.random_std for r in ordered],
        }

    # -- tables -----------------------------------------------------------------------------

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per row (:meth:`MaskingRow.to_dict`)."""
        return [r.to_dict() for r in self.rows]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The rows as CSV (columns :data:`CSV_COLUMNS`; floats written exactly with ``repr``).

        Args:
            path: where to write it (atomically); ``None`` only returns the text.

        Returns:
            The CSV text.
        """
        rows = []
        for r in self.to_rows():
            r["random_accs"] = ";".join(repr(a) for a in r["random_accs"])
            r["top_heads"] = ";".join(f"{layer}.{head}" for layer, head in r["top_heads"])
            rows.append({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
        text = csv_text(rows, CSV_COLUMNS)
        if path is not None:
            write_text(path, text)
        return text

    def to_markdown(self, digits: int = 1) -> str:
        """Paper A's table: one row per stage, one column per ``k``, cells ``top / random``.

        Accuracies are percentages; the random cell is the mean over seeds ``± std`` when
        there are several seeds, ``–`` without a random control. A capped ``k`` shows the
        number of heads actually removed in brackets.

        Example:
            >>> print(result.to_markdown())  # doctest: +SKIP
            Unmasked accuracy: 61.0% (n=200). ...
            | stage | k=10 | k=20 |
            |---|---|---|
            | early | 40.5 / 60.2 ± 0.8 | 33.0 / 59.1 ± 1.2 |
        """

        def pct(x: float) -> str:
            return f"{100 * x:.{digits}f}"

        ks = self.ks
        lines = [
            f"Unmasked accuracy: {pct(self.baseline)}% (n={self.n_samples}). Cells: accuracy (%) with the "
            f"stage's top-k heads removed / with k random heads of the stage removed (mean ± std over "
            f"{len(self.seeds)} seed(s)). Ablation: {self.method}; heads ranked by {self.metric}; answers read "
            f"by {self.eval_method}.",
            "",
            "| stage | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for stage in self.stages:
            cells = []
            for k in ks:
                try:
                    r = self.row(stage, k)
                except KeyError:
                    cells.append("")
                    continue
                if not r.random_accs:
                    rand = "–"
                elif len(r.random_accs) > 1:
                    rand = f"{pct(r.random_mean)} ± {pct(r.random_std)}"
                else:
                    rand = pct(r.random_mean)
                capped = f" [{r.k_used}]" if r.k_used != r.k else ""
                cells.append(f"{pct(r.top_acc)} / {rand}{capped}")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # -- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as ``null``)."""
        return {
            "format": _FORMAT,
            "version": 1,
            "baseline": self.baseline,
            "n_samples": self.n_samples,
            "method": self.method,
            "metric": self.metric,
            "eval_method": self.eval_method,
            "seeds": list(self.seeds),
            "metadata": dict(self.metadata),
            "rows": [
                {
                    **asdict(r),
                    "top_heads": [list(h) for h in r.top_heads],
                    "random_heads": [[list(h) for h in hs] for hs in r.random_heads],
                }
                for r in self.rows
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MaskingResult:
        """Inverse of :meth:`to_json`."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a saved MaskingResult (format={data.get('format')!r})")
        rows = tuple(
            MaskingRow(
                **{
                    **r,
                    "random_accs": tuple(r["random_accs"]),
                    "top_heads": tuple(tuple(h) for h in r["top_heads"]),
                    "random_heads": tuple(tuple(tuple(h) for h in hs) for hs in r["random_heads"]),
                }
            )
            for r in data["rows"]
        )
        return cls(
            rows=rows,
            baseline=data["baseline"],
            n_samples=data["n_samples"],
            method=data["method"],
            metric=data["metric"],
            eval_method=data["eval_method"],
            seeds=tuple(data["seeds"]),
            metadata=data.get("metadata", {}),
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save to ``directory``: ``masking.csv``, ``masking.md`` and ``masking.json``.

        Each file is written atomically (temporary file, then ``os.replace``), the JSON last,
        so a complete ``masking.json`` implies the others are complete.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_csv(directory / _CSV_FILE)
        write_text(directory / _MD_FILE, self.to_markdown())
        write_json(directory / _JSON_FILE, nan_to_none(self.to_json()), indent=2)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> MaskingResult:
        """Load a result saved by :meth:`save` (from its ``masking.json``).

        Raises:
            FileNotFoundError: no ``masking.json`` in ``directory``.
            ValueError: the file is not a saved :class:`MaskingResult`.
        """
        path = Path(directory) / _JSON_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no saved MaskingResult at {directory}: {_JSON_FILE} missing")
        return cls.from_json(read_json(path, what="MaskingResult", version=1))  # issue 14: version checked
