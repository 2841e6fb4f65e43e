"""Causal maps over the image: activation and attribution patching of heads, image positions, regions.

Definitions (DESIGN.md, "Patching"): clean run c, corrupted run r, metric m; the normalised
effect of a patch is ``(m_patched - m(r)) / (m(c) - m(r))``; attribution patching estimates it
by ``(a_c - a_r) . dm/da |_r``. TransformerLens' own ``transformer_lens.patching`` functions also
take a LlavaLens and a LlavaBatch directly (see tutorial 06).

Example:
    >>> from vh_lens import patching  # doctest: +SKIP
    >>> clean = model.prepare(images=[img], questions=[q])  # doctest: +SKIP
    >>> corrupt = patching.noise_image_embeddings(clean, seed=0)  # doctest: +SKIP
    >>> metric = patching.logit_diff_metric(clean, [answer_id], [foil_id])  # doctest: +SKIP
    >>> heads = patching.activation_patch(model, clean, corrupt, metric, patching.head_sites(clean, model.cfg.n_heads))  # doctest: +SKIP
"""

from vh_lens.patching.corruptions import (
    IMAGE_CORRUPTIONS,
    blur_box,
    check_aligned,
    corrupt_image,
    grey_box,
    noise_box,
    noise_image_embeddings,
)
from vh_lens.patching.heads import detect_head
from vh_lens.patching.metrics import METRICS, AnswerMetric, answer_logprob_metric, logit_diff_metric, normalise
from vh_lens.patching.patch import activation_patch, attribution_patch
from vh_lens.patching.result import PatchingResult, effect_share, merge
from vh_lens.patching.sites import RESID_ACTIVATIONS, Sites, grid_boxes, head_sites, position_sites, region_sites

__all__ = [
    "IMAGE_CORRUPTIONS",
    "METRICS",
    "RESID_ACTIVATIONS",
    "AnswerMetric",
    "PatchingResult",
    "Sites",
    "activation_patch",
    "answer_logprob_metric",
    "attribution_patch",
    "blur_box",
    "check_aligned",
    "corrupt_image",
    "detect_head",
    "effect_share",
    "grey_box",
    "grid_boxes",
    "head_sites",
    "logit_diff_metric",
    "merge",
    "noise_box",
    "noise_image_embeddings",
    "normalise",
    "position_sites",
    "region_sites",
]
