"""Paper B, functional heads (CogVision, arXiv 2512.10300). The files follow the pipeline:

``activations`` (per-head activations at the answer position) -> ``probes`` (per-head probes of
cognitive functions) -> ``selection`` (group splits, functional heads, directions) ->
``interventions`` (removing or emphasising them) -> ``report`` (the intervention result).
``config`` holds the frozen settings of the three entry points; the figures are in
:mod:`vh_lens.plotting.functional`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    "collect_head_activations": "vh_lens.functional_heads.activations",
    "HeadActivations": "vh_lens.functional_heads.activations",
    "probe_heads": "vh_lens.functional_heads.probes",
    "ProbeResult": "vh_lens.functional_heads.probes",
    "FunctionDirections": "vh_lens.functional_heads.selection",
    "mean_difference_directions": "vh_lens.functional_heads.selection",
    "split_by_group": "vh_lens.functional_heads.selection",
    "elbow_index": "vh_lens.functional_heads.selection",
    "intervene_on_functions": "vh_lens.functional_heads.interventions",
    "function_hooks": "vh_lens.functional_heads.interventions",
    "FunctionInterventionReport": "vh_lens.functional_heads.report",
    "InterventionRun": "vh_lens.functional_heads.report",
    "CollectionConfig": "vh_lens.functional_heads.config",
    "ProbeConfig": "vh_lens.functional_heads.config",
    "InterventionConfig": "vh_lens.functional_heads.config",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.functional_heads.activations import HeadActivations, collect_head_activations
    from vh_lens.functional_heads.config import CollectionConfig, InterventionConfig, ProbeConfig
    from vh_lens.functional_heads.interventions import function_hooks, intervene_on_functions
    from vh_lens.functional_heads.probes import ProbeResult, probe_heads
    from vh_lens.functional_heads.report import FunctionInterventionReport, InterventionRun
    from vh_lens.functional_heads.selection import (
        FunctionDirections,
        elbow_index,
        mean_difference_directions,
        split_by_group,
    )
