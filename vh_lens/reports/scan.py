"""The visual-head scan report: every figure of a scan in one self-contained HTML file.

:func:`write_scan_report` is what ``vh-lens scan`` writes: the report of
:func:`vh_lens.plotting.visual_heads.scores_report_html` (metadata, top-heads tables overall and
per stage, heatmaps of the detection score, image weight and concentration, weight against
concentration, per-layer totals) plus the heatmaps of the other metrics (region and text
weight) and, when a model and a sample are given, the attention of the top heads over that
sample's image patches (:func:`plot_top_heads_on_image`).

:func:`head_attention_rows` reads the attention rows of a few chosen heads at a sample's query
position with hooks on the layers concerned, keeping only those rows (never a whole cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.utils import get_act_name

from vh_lens.data.sample import Sample
from vh_lens.core.layout import TokenLayout
from vh_lens.plotting.visual_heads import plot_head_attention_on_image, plot_head_heatmap, scores_report_html
from vh_lens.visual_heads.scores import METRICS, Head, Stage, VisualHeadScores

__all__ = ["head_attention_rows", "plot_top_heads_on_image", "write_scan_report"]

_HEATMAPS_IN_BASE_REPORT = ("detection", "image_weight", "concentration")
"""The heatmaps :func:`scores_report_html` draws itself; :func:`write_scan_report` adds the others."""


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
            hooks.append((get_act_name("pattern", layer), partial(keep, layer=layer, index=index)))
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


def write_scan_report(
    scores: VisualHeadScores,
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    sample: Sample | None = None,
    k: int = 10,
    image_heads: int = 4,
    note: str | None = None,
    title: str = "Visual-head scan",
    include_plotlyjs: bool | str = True,
) -> Path:
    """Write the full scan report (one self-contained HTML file, written atomically).

    Everything :func:`~vh_lens.plotting.visual_heads.scores_report_html` shows, plus a heatmap
    of every other metric (region weight, text weight) and, given ``model`` and a ``sample``
    with an image, the attention of the top ``image_heads`` heads over that sample's image
    (:func:`plot_top_heads_on_image`).

    Args:
        scores: the scan's scores.
        path: the HTML file to write.
        model: the model the scores came from (for the attention-over-image figure).
        sample: the sample to draw that figure for.
        k: heads per top-heads table (overall and per stage).
        image_heads: heads in the attention-over-image figure.
        note: a warning shown in the page title, e.g. ``"demo on a random-weight model: no
            findings"``.
        title: page title.
        include_plotlyjs: ``True`` embeds plotly.js (works offline); ``"cdn"`` keeps the file small.

    Returns:
        The path written.

    Example:
        >>> write_scan_report(scores, "out/report.html", model=model, sample=samples[0])  # doctest: +SKIP
    """
    if k < 1 or image_heads < 1:
        raise ValueError(f"k and image_heads must be at least 1, got {k} and {image_heads}")
    figures = [plot_head_heatmap(scores, m) for m in METRICS if m not in _HEATMAPS_IN_BASE_REPORT]
    if model is not None and sample is not None:
        n = min(image_heads, scores.n_layers * scores.n_heads)
        figures.append(plot_top_heads_on_image(model, scores, sample, k=n))
    full_title = title if note is None else f"{title} ({note})"
    return scores_report_html(
        scores, path, k=k, extra_figures=figures, title=full_title, include_plotlyjs=include_plotlyjs
    )
