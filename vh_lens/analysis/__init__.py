"""Model-wide analyses used by both papers: the logit lens (``logit_lens``) and head
interventions as TransformerLens hooks (``interventions``: ablate, scale, shift, head means).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    "LensConfig": "vh_lens.analysis.logit_lens",
    "LogitLensResult": "vh_lens.analysis.lens_result",
    "ablate_heads": "vh_lens.analysis.interventions",
    "scale_heads": "vh_lens.analysis.interventions",
    "shift_heads": "vh_lens.analysis.interventions",
    "query_position_mask": "vh_lens.analysis.interventions",
    "HeadMeans": "vh_lens.analysis.head_means",
}

# ``logit_lens`` and ``head_means`` are also the names of submodules here: import the functions
# from ``vh_lens`` or from their modules (``vh_lens.analysis.logit_lens.logit_lens``).
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.analysis.head_means import HeadMeans
    from vh_lens.analysis.interventions import ablate_heads, query_position_mask, scale_heads, shift_heads
    from vh_lens.analysis.lens_result import LogitLensResult
    from vh_lens.analysis.logit_lens import LensConfig
