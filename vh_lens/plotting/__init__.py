"""Plots: every function takes a result and returns a ``plotly.graph_objects.Figure``."""

from vh_lens.plotting.functional import (
    plot_function_head_maps,
    plot_function_overlap,
    plot_heads_per_layer,
    plot_sorted_scores,
)
from vh_lens.plotting.logit_lens import plot_answer_prob_heatmap, plot_rank_per_layer
from vh_lens.plotting.masking import plot_masking_curves
from vh_lens.plotting.patching import plot_attribution_vs_activation, plot_effect_heatmap, plot_effect_on_image
from vh_lens.plotting.visual_heads import (
    plot_head_attention_on_image,
    plot_head_heatmap,
    plot_layer_totals,
    plot_weight_vs_concentration,
    scores_report_html,
)

__all__ = [
    "plot_answer_prob_heatmap",
    "plot_attribution_vs_activation",
    "plot_effect_heatmap",
    "plot_effect_on_image",
    "plot_function_head_maps",
    "plot_function_overlap",
    "plot_heads_per_layer",
    "plot_masking_curves",
    "plot_rank_per_layer",
    "plot_sorted_scores",
    "plot_head_attention_on_image",
    "plot_head_heatmap",
    "plot_layer_totals",
    "plot_weight_vs_concentration",
    "scores_report_html",
]
