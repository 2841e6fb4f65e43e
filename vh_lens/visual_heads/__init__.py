"""Paper A, visual heads (arXiv 2412.18108). The files follow the pipeline:

``metrics`` (per-head attention on image and region, concentration, detection score) ->
``hooks`` (the pattern and q/k hook families) -> ``accumulator`` (streaming float64 moments) ->
``scan`` (the scan over a dataset, on :mod:`vh_lens.engine`; checkpoints) -> ``scores`` (the
result: stages, rankings) -> ``masking`` (removing top heads vs random heads, measured as
benchmark accuracy; its table in ``masking_result``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    "scan_visual_heads": "vh_lens.visual_heads.scan",
    "ScanConfig": "vh_lens.visual_heads.scan",
    "visual_head_hooks": "vh_lens.visual_heads.hooks",
    "visual_head_qk_hooks": "vh_lens.visual_heads.hooks",
    "head_metrics": "vh_lens.visual_heads.metrics",
    "detection_score": "vh_lens.visual_heads.metrics",
    "default_layer_fn": "vh_lens.visual_heads.metrics",
    "HEAD_METRICS": "vh_lens.visual_heads.metrics",
    "ScoreAccumulator": "vh_lens.visual_heads.accumulator",
    "VisualHeadScores": "vh_lens.visual_heads.scores",
    "METRICS": "vh_lens.visual_heads.scores",
    "STAGES": "vh_lens.visual_heads.scores",
    "stage_layers": "vh_lens.visual_heads.scores",
    "stage_of": "vh_lens.visual_heads.scores",
    "pearson": "vh_lens.visual_heads.scores",
    "emd_layers": "vh_lens.visual_heads.scores",
    "layer_distribution": "vh_lens.visual_heads.scores",
    "masking_experiment": "vh_lens.visual_heads.masking",
    "MaskingConfig": "vh_lens.visual_heads.masking",
    "MaskingResult": "vh_lens.visual_heads.masking_result",
    "MaskingRow": "vh_lens.visual_heads.masking_result",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.visual_heads.accumulator import ScoreAccumulator
    from vh_lens.visual_heads.hooks import visual_head_hooks, visual_head_qk_hooks
    from vh_lens.visual_heads.masking import MaskingConfig, masking_experiment
    from vh_lens.visual_heads.masking_result import MaskingResult, MaskingRow
    from vh_lens.visual_heads.metrics import HEAD_METRICS, default_layer_fn, detection_score, head_metrics
    from vh_lens.visual_heads.scan import ScanConfig, scan_visual_heads
    from vh_lens.visual_heads.scores import (
        METRICS,
        STAGES,
        VisualHeadScores,
        emd_layers,
        layer_distribution,
        pearson,
        stage_layers,
        stage_of,
    )
