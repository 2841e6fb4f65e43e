"""Paper B, functional heads (CogVision, arXiv 2512.10300). The files follow the pipeline:

``activations`` (per-head activations at the answer position) -> ``probes`` (per-head probes of
cognitive functions) -> ``selection`` (functional heads, directions) -> ``interventions``
(removing or emphasising them).
"""
