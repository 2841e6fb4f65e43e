"""The report pages of ``vh-lens mask``, ``lens``, ``probe`` and ``patch`` (the shared template).

Each function writes one page with :func:`vh_lens.reports.page.write_report`: the title, the
run's settings, the figures, then the tables. The scan's page is
:func:`vh_lens.reports.scan.write_scan_report`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from vh_lens.reports.page import Table, markdown_table, rows_table, write_report

__all__ = ["write_lens_report", "write_mask_report", "write_patch_report", "write_probe_report"]

_MASK_COLUMNS = ("stage", "k", "k_used", "n_stage_heads", "baseline_acc", "top_acc", "random_mean", "random_std",
                 "top_drop", "random_drop", "n_seeds")  # fmt: skip


_IMAGE_SIDE = 160
"""Longest side of an image drawn under a per-pixel heatmap (keeps a page of two such figures well under 1 MB)."""


def write_mask_report(
    result: Any,
    path: str | os.PathLike[str],
    *,
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    plotlyjs: str = "file",
) -> Path:
    """The head-masking page: the masking curves, paper A's table and one row per (stage, k).

    Args:
        result: a :class:`vh_lens.visual_heads.masking.MaskingResult`.
        path: the page (e.g. ``out/masking.html``).
        settings: the run's settings.
        notes: warnings shown under the title.
        plotlyjs: ``"file"``, ``"cdn"`` or ``"inline"`` (:func:`~vh_lens.reports.page.write_report`).
    """
    from vh_lens.plotting.masking import plot_masking_curves

    meta = {"n_samples": result.n_samples, "method": result.method, "seeds": list(result.seeds), **(settings or {})}
    rows = result.to_rows()
    for row in rows:
        row["top_heads"] = " ".join(f"L{layer}H{head}" for layer, head in row["top_heads"])
    tables = [
        markdown_table("Accuracy with heads removed (top / random)", result.to_markdown(), name="masking"),
        rows_table("Rows", rows, [*_MASK_COLUMNS, "top_heads"], name="rows"),
    ]
    return write_report(path, title="Head masking", settings=meta, figures={"masking-curves": plot_masking_curves(result)},
                        tables=tables, notes=notes, kind="mask", plotlyjs=plotlyjs)  # fmt: skip


def write_lens_report(
    result: Any,
    path: str | os.PathLike[str],
    *,
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    plotlyjs: str = "file",
) -> Path:
    """The logit-lens page: rank traces of the final token (and the gold answer), probabilities, the per-layer table.

    Args:
        result: a :class:`vh_lens.analysis.logit_lens.LogitLensResult`.
        path: the page (e.g. ``out/lens.html``).
        settings: the run's settings.
        notes: warnings shown under the title.
        plotlyjs: ``"file"``, ``"cdn"`` or ``"inline"``.
    """
    from vh_lens.plotting.logit_lens import plot_answer_prob_heatmap, plot_rank_per_layer

    figures = {"lens-rank-final": plot_rank_per_layer(result, "final")}
    if result.has_answers:
        figures["lens-rank-answer"] = plot_rank_per_layer(result, "answer")
        figures["lens-prob-answer"] = plot_answer_prob_heatmap(result, "answer")
    else:
        figures["lens-prob-final"] = plot_answer_prob_heatmap(result, "final")
    meta = {"n_samples": result.n_samples, "n_layers": result.n_layers, "top_k": result.top_k, **(settings or {})}
    tables = [rows_table("Per layer", result.to_rows(), name="layers")]
    return write_report(path, title="Logit lens", settings=meta, figures=figures, tables=tables, notes=notes,
                        kind="lens", plotlyjs=plotlyjs)  # fmt: skip


def write_probe_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
    titles: Mapping[str, str],
    figures: Sequence[go.Figure] | Mapping[str, go.Figure],
    report: Any = None,
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
    plotlyjs: str = "file",
) -> Path:
    """The functional-heads page of ``vh-lens probe``: the figures, then the summary tables.

    Args:
        path: the page (e.g. ``out/report.html``).
        title: the page title.
        tables: ``{name: (header, rows)}``, shown under ``titles[name]``.
        titles: a heading per table name.
        figures: the figures (a list gets the names ``figure-1``, ...; a mapping keeps its names).
        report: a :class:`~vh_lens.functional_heads.interventions.FunctionInterventionReport` (its table is added).
        settings: the run's settings.
        notes: remarks shown under the title.
        warnings: warnings shown under the title (e.g. too few test items, unknown tokens).
        plotlyjs: ``"file"``, ``"cdn"`` or ``"inline"``.
    """
    named = dict(figures) if isinstance(figures, Mapping) else {f"figure-{i + 1}": f for i, f in enumerate(figures)}
    out = [
        Table(titles.get(name, name), header, rows, name=name.replace("_", "-"))
        for name, (header, rows) in tables.items()
    ]
    if report is not None:
        rows = report.to_rows()
        header = ["function", "n_heads", "baseline_own", "functional_own", "random_own_mean", "baseline_other",
                  "functional_other", "random_other_mean", "baseline_main", "functional_main", "random_main_mean"]  # fmt: skip
        out.append(rows_table("Interventions", rows, header, note=report.to_markdown().splitlines()[0],
                              name="interventions"))  # fmt: skip
    return write_report(path, title=title, settings=settings, figures=named, tables=out, notes=notes, warnings=warnings, kind="probe",
                        plotlyjs=plotlyjs)  # fmt: skip


def write_patch_report(
    results: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    image: Any = None,
    summary_markdown: str | None = None,
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    plotlyjs: str = "file",
) -> Path:
    """The activation-patching page of ``vh-lens patch``.

    Figures: each result's effect heatmap, the position grid's effect over ``image``, and
    attribution against activation patching where both were run. Tables: the summary
    (``summary_markdown``, the command's ``patch.md``).

    Args:
        results: ``{name: PatchingResult}`` (names like ``"regions_activation"``).
        path: the page (e.g. ``out/patch.html``).
        image: the image the position effects are drawn over (sample 0's).
        summary_markdown: the summary as markdown tables.
        settings: the run's settings.
        notes: warnings shown under the title.
        plotlyjs: ``"file"``, ``"cdn"`` or ``"inline"``.
    """
    from vh_lens.plotting.patching import plot_attribution_vs_activation, plot_effect_heatmap, plot_effect_on_image

    figures: dict[str, go.Figure] = {}
    for name, result in results.items():
        key = name.replace("_", "-")
        figures[f"effect-{key}"] = plot_effect_heatmap(result)
        if result.grid == "positions" and image is not None:
            figures[f"on-image-{key}"] = plot_effect_on_image(
                result, image, max_side=_IMAGE_SIDE, title=f"{name}, layer {result.layers[0]}: mean over {result.n_samples} samples, drawn "
                "over sample 0's image",
            )  # fmt: skip
    for name in results:
        if name.endswith("_activation"):
            grid = name[: -len("_activation")]
            if f"{grid}_attribution" in results:
                figures[f"attribution-vs-activation-{grid}"] = plot_attribution_vs_activation(
                    results[name], results[f"{grid}_attribution"]
                )
    tables: list[Table] = []
    if summary_markdown:
        blocks = [b for b in summary_markdown.split("\n\n") if "|" in b]
        tables = [markdown_table(f"Summary {i + 1}" if i else "Summary", b, name=f"summary-{i + 1}")
                  for i, b in enumerate(blocks)]  # fmt: skip
    return write_report(path, title="Activation patching", settings=settings, figures=figures, tables=tables,
                        notes=notes, kind="patch", plotlyjs=plotlyjs)  # fmt: skip
