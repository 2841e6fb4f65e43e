"""Paper A, visual heads (arXiv 2412.18108). The files follow the pipeline:

``metrics`` (per-head attention on image and region, concentration, detection score) ->
``hooks`` (the pattern and q/k hook families) -> ``accumulator`` (streaming float64 moments) ->
``scan`` (the scan over a dataset) -> ``scores`` (the result: stages, rankings) -> ``masking``
(removing top heads vs random heads, measured as benchmark accuracy).
"""
