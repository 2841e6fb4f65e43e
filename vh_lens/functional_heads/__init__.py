"""Paper B, functional heads (CogVision, arXiv 2512.10300). The files follow the pipeline:

``activations`` (per-head activations at the answer position) -> ``probes`` (per-head probes of
cognitive functions) -> ``selection`` (group splits, functional heads, directions) ->
``interventions`` (removing or emphasising them) -> ``report`` (the intervention result).
``config`` holds the frozen settings of the three entry points; the figures are in
:mod:`vh_lens.plotting.functional`.
"""
