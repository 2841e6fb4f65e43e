"""The visual-head scan report: every figure of a scan on one page of the shared template.

:func:`write_scan_report` is what ``vh-lens scan`` writes (:func:`vh_lens.reports.page.write_report`):
figures first (heatmaps of every metric per head, weight against concentration, per-layer
totals with the stage bounds, the top heads' attention over several samples' images and the
mean map over samples (:func:`plot_top_heads_on_samples`), the plain vs visual-prompt comparison
when both scans are given, the logit-lens rank traces when a lens result is given), then the
top-heads tables overall and per stage, and the run's settings.

:func:`head_attention_rows` reads the attention rows of a few chosen heads at a sample's query
position with hooks on the layers concerned, keeping only those rows (never a whole cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from vh_lens.core.hooks import act_name
from vh_lens.core.layout import TokenLayout
from vh_lens.data.sample import Sample
from vh_lens.plotting.overlays import OverlayRow, plot_attention_overlays, plot_prompt_comparison
from vh_lens.plotting.visual_heads import (
    plot_head_attention_on_image,
    plot_head_heatmap,
    plot_layer_totals,
    plot_weight_vs_concentration,
)
from vh_lens.reports.companions import prompt_pair
from vh_lens.reports.page import Table, write_report
from vh_lens.visual_heads.scores import METRICS, STAGES, Head, Stage, VisualHeadScores, stage_layers

__all__ = [
    "head_attention_rows",
    "plot_top_heads_on_image",
    "plot_top_heads_on_samples",
    "prompt_pair",
    "write_scan_report",
]

_LABELS = {
    "image_weight": "image weight",
    "region_weight": "region weight",
    "text_weight": "text weight",
    "concentration": "concentration",
    "detection": "detection score",
}
_HEATMAP_ORDER = ("detection", "image_weight", "concentration", "region_weight", "text_weight")


def head_attention_rows(
    model: Any,
    sample: Sample,
    heads: Sequence[Head],
    *,
    query: Literal["last_prompt", "answer_token"] = "last_prompt",
) -> tuple[TokenLayout, Float[Tensor, "n_heads key"]]:
    """The attention rows of ``heads`` at ``sample``'s query position.

    One forward pass (two with ``query="answer_token"``: the greedy next token is appended
    first, as :func:`vh_lens.visual_heads.scan.scan_visual_heads` does). A hook on each concerned
    layer's ``hook_pattern`` copies only the rows ``pattern[0, h, q, :]`` of the chosen heads.

    Args:
        model: a :class:`vh_lens.LlavaLens`.
        sample: the sample (its question and image; prepared by ``model.prepare_samples``).
        heads: ``[(layer, head), ...]``.
        query: ``"last_prompt"`` (the last prompt position) or ``"answer_token"`` (the row of
            the appended greedy answer token).

    Returns:
        ``(layout, rows)``: the sample's :class:`~vh_lens.core.layout.TokenLayout` and the rows
        ``[len(heads), key]`` (float32, on the CPU), in the order of ``heads``.

    Example:
        >>> layout, rows = head_attention_rows(model, sample, [(3, 1), (4, 6)])  # doctest: +SKIP
        >>> rows[:, layout.image_positions].sum(-1)  # image weight of each head  # doctest: +SKIP
    """
    if query not in ("last_prompt", "answer_token"):
        raise ValueError(f"query must be 'last_prompt' or 'answer_token', got {query!r}")
    heads = [(int(layer), int(head)) for layer, head in heads]
    if not heads:
        raise ValueError("head_attention_rows needs at least one head")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} are outside the model's {n_layers} layers x {n_heads} heads")
    with torch.inference_mode():
        batch = model.prepare_samples([sample])
        layout: TokenLayout = batch.layout[0]
        q = layout.query_position
        if query == "answer_token":
            logits = model(batch)
            token = logits[0, q].argmax(-1).reshape(1, 1)
            batch = model.append_tokens(batch, token)
            layout = batch.layout[0]
            q = int(layout.answer_positions[0])
        found: dict[int, Tensor] = {}

        def keep(pattern: Float[Tensor, "batch head q k"], *, hook: HookPoint, layer: int, index: Tensor) -> None:
            found[layer] = pattern[0, index.to(pattern.device), q, :].detach().float().cpu()

        layers = sorted({layer for layer, _ in heads})
        hooks: list[tuple[str | Callable[[str], bool], Callable[..., Any]]] = []
        for layer in layers:
            index = torch.tensor([h for ly, h in heads if ly == layer], dtype=torch.long)
            hooks.append((act_name("pattern", layer), partial(keep, layer=layer, index=index)))
        model.run_with_hooks(batch, fwd_hooks=hooks)
    missing = [layer for layer in layers if layer not in found]
    if missing:
        raise RuntimeError(f"no hook_pattern call for layers {missing}")
    position = {layer: 0 for layer in layers}
    rows = []
    for layer, _ in heads:
        rows.append(found[layer][position[layer]])
        position[layer] += 1
    return layout, torch.stack(rows)


def plot_top_heads_on_image(
    model: Any,
    scores: VisualHeadScores,
    sample: Sample,
    *,
    k: int = 4,
    stage: Stage | None = None,
    metric: str = "detection",
    query: Literal["last_prompt", "answer_token"] | None = None,
    normalize: bool = True,
) -> go.Figure:
    """The attention of the top ``k`` heads by ``metric`` over one sample's image patches.

    Args:
        model: the :class:`vh_lens.LlavaLens` the scores were computed on.
        scores: the scan's scores (they choose the heads).
        sample: a sample with an image; its box, if any, is drawn as an outline.
        k: number of heads (one panel each).
        stage: take the top heads of one stage only (``None``: all layers).
        metric: the metric that ranks the heads.
        query: the query row to read; default: the scan's (``scores.metadata["query"]``).
        normalize: show each head's share of its image attention (else the raw weights).

    Returns:
        A figure from :func:`vh_lens.plotting.visual_heads.plot_head_attention_on_image`, one
        panel per head titled ``"L{layer}H{head}"`` with its image weight on this sample.

    Example:
        >>> fig = plot_top_heads_on_image(model, scores, samples[0], k=3)  # doctest: +SKIP
    """
    image = sample.load_image()
    if image is None:
        raise ValueError("plot_top_heads_on_image needs a sample with an image")
    query = query or scores.metadata.get("query", "last_prompt")
    heads = scores.top_heads(k, stage, metric)
    layout, rows = head_attention_rows(model, sample, heads, query=query)  # type: ignore[arg-type]
    weights = rows[:, layout.image_positions].sum(-1)
    labels = [f"L{layer}H{head} (image weight {float(w):.2f})" for (layer, head), w in zip(heads, weights, strict=True)]
    question = sample.question if len(sample.question) <= 80 else sample.question[:77] + "..."
    fig = plot_head_attention_on_image(
        image, layout, rows, labels=labels, normalize=normalize,
        title=f"top {len(heads)} heads by {metric}{'' if stage is None else f' ({stage} stage)'}: "
        f"attention at the {query.replace('_', ' ')} position over the image, for {question!r}",
    )  # fmt: skip
    if sample.box is not None:
        left, top, right, bottom = _display_box(sample.box, image.size)
        for i in range(len(heads)):
            xref = "x" if i == 0 else f"x{i + 1}"
            yref = "y" if i == 0 else f"y{i + 1}"
            fig.add_shape(type="rect", x0=left, y0=top, x1=right, y1=bottom, xref=xref, yref=yref,
                          line={"color": "cyan", "width": 2})  # fmt: skip
    return fig


def _display_box(box: Sequence[float], size: tuple[int, int], max_side: int = 336) -> tuple[float, ...]:
    """``box`` in the coordinates of the downscaled picture that the attention plot draws."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    sx, sy = w / width, h / height
    left, top, right, bottom = (float(v) for v in box)
    return (left * sx - 0.5, top * sy - 0.5, right * sx - 0.5, bottom * sy - 0.5)


def _overlay_samples(samples: Sequence[Sample], n: int = 3) -> list[tuple[str, Sample]]:
    """Up to ``n`` samples with an image: one per question type (``metadata["question_type"]``)."""
    with_image = [s for s in samples if s.image is not None]
    chosen: dict[str, Sample] = {}
    for s in with_image:
        kind = s.metadata.get("question_type") if isinstance(s.metadata, Mapping) else None
        if kind is None or str(kind) in chosen:
            continue
        chosen[str(kind)] = s
        if len(chosen) == n:
            break
    if chosen:
        return [(f"{kind} question", s) for kind, s in chosen.items()]
    return [("", s) for s in with_image[:n]]


def _sample_name(sample: Sample, index: int) -> str:
    ident = sample.metadata.get("id") if isinstance(sample.metadata, Mapping) else None
    return f"sample {ident}" if ident is not None else f"sample {index}"


def plot_top_heads_on_samples(
    model: Any,
    scores: VisualHeadScores,
    samples: Sequence[Sample],
    *,
    k: int = 4,
    metric: str = "detection",
    n_examples: int = 3,
    mean_samples: int = 16,
    query: Literal["last_prompt", "answer_token"] | None = None,
) -> go.Figure:
    """The top ``k`` heads' attention over several samples' images and their mean map.

    One row per example sample (one per question type where the samples name one,
    ``metadata["question_type"]``; else the first ``n_examples`` with an image), each labelled
    with the sample and its question type, each panel with that head's image weight **on this
    sample**; then one row with the mean over the first ``mean_samples`` samples with an image
    of each head's share of its image attention per image token (no picture behind it), each
    panel with the head's mean image weight **over the scan**. Values are shares of each
    head's image attention (they sum to 1 over the image tokens).

    Args:
        model: the :class:`vh_lens.LlavaLens` the scores were computed on.
        scores: the scan's scores (they choose the heads).
        samples: the samples to draw from (those with an image are used).
        k: number of heads (columns).
        metric: the metric that ranks the heads.
        n_examples: example rows.
        mean_samples: samples averaged in the mean row (those whose base grid has the shape
            of the first one's).
        query: the query row to read; default: the scan's (``scores.metadata["query"]``).

    Returns:
        A :func:`vh_lens.plotting.overlays.plot_attention_overlays` figure.
    """
    examples = _overlay_samples(samples, n_examples)
    if not examples:
        raise ValueError("plot_top_heads_on_samples needs samples with an image")
    query = query or scores.metadata.get("query", "last_prompt")
    heads = scores.top_heads(min(k, scores.n_layers * scores.n_heads), None, metric)
    names = [f"L{layer}H{head}" for layer, head in heads]
    index = {id(s): i for i, s in enumerate(samples)}
    rows: list[OverlayRow] = []
    for kind, sample in examples:
        layout, attn = head_attention_rows(model, sample, heads, query=query)  # type: ignore[arg-type]
        grid = layout.grid("base")
        values = attn[:, grid.positions]
        weights = attn[:, layout.image_positions].sum(-1)
        share = values / values.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
        question = sample.question if len(sample.question) <= 40 else sample.question[:37] + "..."
        label = f"{_sample_name(sample, index.get(id(sample), 0))}{f' ({kind})' if kind else ''}: {question!r}"
        rows.append(OverlayRow(label, share, sample.load_image(), grid.cell_boxes, sample.box,
                               [f"weight here {float(w):.2f}" for w in weights]))  # fmt: skip
    total, count, shape = None, 0, None
    for sample in [s for s in samples if s.image is not None][: max(0, mean_samples)]:
        layout, attn = head_attention_rows(model, sample, heads, query=query)  # type: ignore[arg-type]
        values = attn[:, layout.grid("base").positions]
        if shape is None:
            shape = tuple(values.shape)
        if tuple(values.shape) != shape:
            continue
        share = values / values.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
        total = share if total is None else total + share
        count += 1
    if total is not None:
        mean_weight = scores.mean["image_weight"]
        rows.append(OverlayRow(f"mean map over {count} samples (image tokens; no picture)", total / count,
                               panel_labels=[f"scan mean weight {float(mean_weight[h]):.2f}" for h in heads],
                               own_scale=True))  # fmt: skip
    return plot_attention_overlays(
        rows, names, colorbar_title="share",
        title=f"top {len(heads)} heads by {_LABELS.get(metric, metric)}: attention over the image, per sample and "
        "mean",
    )  # fmt: skip


def _top_table(scores: VisualHeadScores, k: int, stage: Stage | None, metric: str) -> Table:
    n_layers = scores.n_layers if stage is None else len(stage_layers(stage, scores.n_layers))
    heads = scores.top_heads(min(k, n_layers * scores.n_heads), stage, metric)
    std = scores.std(metric)
    others = [m for m in METRICS if m != metric]
    rows = [
        [rank + 1, layer, head, f"{float(scores.mean[metric][layer, head]):.4g} ± {float(std[layer, head]):.2g}"]
        + [float(scores.mean[m][layer, head]) for m in others]
        for rank, (layer, head) in enumerate(heads)
    ]
    header = ["rank", "layer", "head", f"{_LABELS[metric]} (mean ± std)", *[_LABELS[m] for m in others]]
    title = f"Top {len(heads)} heads by {_LABELS[metric]}" if stage is None else f"{stage} stage"
    span = stage_layers(stage, scores.n_layers) if stage is not None else None
    note = None if span is None else f"layers {span.start}-{span.stop - 1}"
    return Table(title, header, rows, note=note, name="top" if stage is None else f"top-{stage}")


def scan_figures(scores: VisualHeadScores) -> dict[str, go.Figure]:
    """The figures of a scan that need only its scores: ``{name: figure}`` in page order."""
    figures = {f"heatmap-{m.replace('_', '-')}": plot_head_heatmap(scores, m) for m in _HEATMAP_ORDER}
    figures["weight-vs-concentration"] = plot_weight_vs_concentration(scores)
    figures["layer-totals"] = plot_layer_totals(scores)
    return figures


def write_scan_report(
    scores: VisualHeadScores,
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    sample: Sample | None = None,
    samples: Sequence[Sample] | None = None,
    k: int = 10,
    image_heads: int = 4,
    mean_samples: int = 16,
    note: str | None = None,
    title: str = "Visual-head scan",
    settings: Mapping[str, Any] | None = None,
    prompt_pair: tuple[VisualHeadScores, VisualHeadScores] | None = None,
    lens: Any = None,
    plotlyjs: str = "file",
) -> Path:
    """Write the scan report page (:func:`vh_lens.reports.page.write_report`, atomically).

    Figures: a heatmap per metric, weight vs concentration, per-layer totals with the stage
    bounds; given ``model`` and ``samples`` (or one ``sample``) with images, the top
    ``image_heads`` heads' attention over example samples and their mean map
    (:func:`plot_top_heads_on_samples`); given ``prompt_pair``, the plain vs visual-prompt
    comparison; given ``lens``, the logit-lens rank traces. Tables: the top ``k`` heads by
    detection score overall and per stage. Settings: the scores' metadata, then ``settings``.

    Args:
        scores: the scan's scores.
        path: the page to write (e.g. ``out/report.html``).
        model: the model the scores came from (for the attention-over-image figure).
        sample: one sample for that figure (used when ``samples`` is not given).
        samples: the samples to draw examples and the mean map from.
        k: heads per top-heads table (overall and per stage).
        image_heads: heads in the attention-over-image figure.
        mean_samples: samples averaged in the mean map.
        note: a warning shown with the title, e.g. ``"demo on a random-weight model: no findings"``.
        title: page title.
        settings: more settings to show (e.g. the command line's).
        prompt_pair: ``(plain, visual_prompt)`` scans of the same model and data.
        lens: a :class:`vh_lens.analysis.logit_lens.LogitLensResult` of the same model.
        plotlyjs: ``"file"`` (shared ``plotly.min.js`` beside the page), ``"cdn"`` or ``"inline"``.

    Returns:
        The path written.

    Example:
        >>> write_scan_report(scores, "out/report.html", model=model, samples=samples)  # doctest: +SKIP
    """
    if k < 1 or image_heads < 1:
        raise ValueError(f"k and image_heads must be at least 1, got {k} and {image_heads}")
    figures = scan_figures(scores)
    captions: dict[str, str] = {}
    pool = list(samples) if samples is not None else ([sample] if sample is not None else [])
    if model is not None and any(s.image is not None for s in pool):
        figures["attention-on-images"] = plot_top_heads_on_samples(
            model, scores, pool, k=image_heads, mean_samples=mean_samples
        )
        query = str(scores.metadata.get("query", "last_prompt")).replace("_", " ")
        captions["attention-on-images"] = (
            f"Rows: example samples (one per question type where the data names one), then the mean map over "
            f"samples. Colour: each head's share of its image attention per image token, at the {query} position. "
            "'weight here' is the head's image weight on that sample; 'scan mean weight' its mean over the scan. "
            "Cyan: the question's box."
        )
    if prompt_pair is not None:
        figures["prompt-comparison"] = plot_prompt_comparison(*prompt_pair)
    if lens is not None:
        from vh_lens.plotting.logit_lens import plot_rank_per_layer

        figures["lens-rank-final"] = plot_rank_per_layer(lens, "final")
        if lens.has_answers:
            figures["lens-rank-answer"] = plot_rank_per_layer(lens, "answer")
    tables = [_top_table(scores, k, None, "detection")]
    tables += [_top_table(scores, k, s, "detection") for s in STAGES if len(stage_layers(s, scores.n_layers))]
    meta = {"samples": scores.count, "layers": scores.n_layers, "heads": scores.n_heads, **scores.metadata}
    meta |= dict(settings or {})
    full_title = title if note is None else f"{title} ({note})"
    return write_report(path, title=full_title, settings=meta, figures=figures, tables=tables,
                        notes=[note] if note else [], captions=captions, kind="scan", plotlyjs=plotlyjs)  # fmt: skip
