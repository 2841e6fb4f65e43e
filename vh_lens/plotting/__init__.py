"""Plots: every function takes a result and returns a ``plotly.graph_objects.Figure``."""

from vh_lens.plotting.visual_heads import (
    plot_head_attention_on_image,
    plot_head_heatmap,
    plot_layer_totals,
    plot_weight_vs_concentration,
    scores_report_html,
)

__all__ = [
    "plot_head_attention_on_image",
    "plot_head_heatmap",
    "plot_layer_totals",
    "plot_weight_vs_concentration",
    "scores_report_html",
]
