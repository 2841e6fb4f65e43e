"""Working precision of the conversion: float64 checkpoints stay float64 through conversion and
TransformerLens' weight processing."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformerConfig
from transformer_lens.weight_processing import ProcessWeights


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype conversion and weight processing work in: float64 for a float64 model, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def process_weights_keeping_dtype(
    sd: dict[str, torch.Tensor],
    cfg: HookedTransformerConfig,
    *,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool,
) -> dict[str, torch.Tensor]:
    """``ProcessWeights.process_weights`` of an RMS-normed model, float64 kept float64.

    TransformerLens' ``process_weights`` casts every tensor that is not float32 to float32 and back
    (meant for float16 / bfloat16), so float64 weights would pass through float32. For float64 this
    runs the same steps it runs for RMS norms, in its order, on the float64 tensors: fold the norm
    weights (no biases, no centring), centre the unembedding, fold the value biases into ``b_O``
    (centring writing weights is a no-op for RMS norms in TransformerLens). Other dtypes go to
    ``process_weights`` itself; a test checks both give the same weights in float32.
    """
    if cfg.normalization_type not in ("RMS", "RMSPre"):
        raise ValueError(f"process_weights_keeping_dtype: RMS-normed models only, got {cfg.normalization_type!r}")
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                 fold_value_biases=fold_value_biases)
    if not any(v.dtype == torch.float64 for v in sd.values()):
        return ProcessWeights.process_weights(sd, cfg, **flags)
    if fold_ln:
        sd = ProcessWeights.fold_layer_norm(sd, cfg, fold_biases=False, center_weights=False)
    if center_unembed:
        sd = ProcessWeights.center_unembed(sd, cfg=cfg)
    if fold_value_biases:
        sd = ProcessWeights.fold_value_biases(sd, cfg)
    return sd
