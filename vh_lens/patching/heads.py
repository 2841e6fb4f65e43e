"""TransformerLens' ``head_detector.detect_head`` on a multimodal batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformer_lens import head_detector


def detect_head(model: Any, batch: Any, detection_pattern: str | Tensor, **kwargs: Any) -> Tensor:
    """``transformer_lens.head_detector.detect_head`` on a one-sample :class:`~vh_lens.LlavaBatch`.

    TransformerLens' function tokenises with ``model.to_tokens`` (a batch's ``input_ids`` here) and
    runs ``model.run_with_cache`` on those ids, which cannot carry the image; so the cache is
    made here from the batch (image spliced in) and handed over. Equivalent to
    ``detect_head(model, batch, pattern, cache=model.run_with_cache(batch, remove_batch_dim=True)[1])``.
    A named pattern (``"previous_token_head"``, ...) is built from the ids: every image
    position holds the same placeholder id, so ``"duplicate_token_head"`` counts image tokens
    as duplicates of each other.

    Args:
        model: a :class:`~vh_lens.LlavaLens`.
        batch: a batch of one sample (no padding).
        detection_pattern: a ``[pos, pos]`` lower-triangular pattern or a TransformerLens head name.
        **kwargs: ``heads``, ``exclude_bos``, ``exclude_current_token``, ``error_measure``.

    Returns:
        ``[n_layers, n_heads]`` scores (-1 for heads not asked).
    """
    if len(batch) != 1 or not bool(batch.attention_mask.all()):
        raise ValueError("detect_head: give a batch of one sample without padding (one prompt, as TransformerLens)")
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, remove_batch_dim=True, names_filter=lambda n: n in names)
    return head_detector.detect_head(model, batch, detection_pattern, cache=cache, **kwargs)
