"""vh_lens: mechanistic interpretability of LLaVA-family models, as a TransformerLens plugin.

Import cost is kept low: submodules load on first use of a name (PEP 562), so ``import vh_lens``
does no work beyond reading this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    # loading and running
    "load_llava": "vh_lens.loading",
    "load_llava_no_processing": "vh_lens.loading",
    "SUPPORTED_MODELS": "vh_lens.loading",
    "SUPPORTED_BACKBONES": "vh_lens.loading",
    "UnsupportedModelError": "vh_lens.loading",
    "check_conformance": "vh_lens.conformance",
    "conformance_table": "vh_lens.conformance",
    "CheckpointError": "vh_lens.tensor_source",
    "LlavaLens": "vh_lens.model",
    "LlavaBatch": "vh_lens.model",
    "TokenLayout": "vh_lens.layout",
    "ImageGrid": "vh_lens.layout",
    "ImageLayout": "vh_lens.layout",
    "LlavaOnevisionImageOnlyProcessor": "vh_lens.onevision",
    # paper A: visual heads
    "scan_visual_heads": "vh_lens.visual_heads",
    "visual_head_hooks": "vh_lens.visual_heads",
    "visual_head_qk_hooks": "vh_lens.visual_heads",
    "head_metrics": "vh_lens.visual_heads",
    "detection_score": "vh_lens.visual_heads",
    "default_layer_fn": "vh_lens.visual_heads",
    "ScoreAccumulator": "vh_lens.visual_heads",
    "HEAD_METRICS": "vh_lens.visual_heads",
    "VisualHeadScores": "vh_lens.scores",
    "METRICS": "vh_lens.scores",
    "STAGES": "vh_lens.scores",
    "stage_layers": "vh_lens.scores",
    "stage_of": "vh_lens.scores",
    "pearson": "vh_lens.scores",
    "emd_layers": "vh_lens.scores",
    "layer_distribution": "vh_lens.scores",
    # logit lens and interventions
    "logit_lens": "vh_lens.lens",
    "LogitLensResult": "vh_lens.lens",
    "answer_token_ids": "vh_lens.lens",
    "ablate_heads": "vh_lens.interventions",
    "scale_heads": "vh_lens.interventions",
    "shift_heads": "vh_lens.interventions",
    "head_means": "vh_lens.interventions",
    "HeadMeans": "vh_lens.interventions",
    "query_position_mask": "vh_lens.interventions",
    # evaluation and masking
    "evaluate": "vh_lens.evaluation",
    "EvalResult": "vh_lens.evaluation",
    "Prediction": "vh_lens.evaluation",
    "masking_experiment": "vh_lens.masking",
    "MaskingResult": "vh_lens.masking",
    "MaskingRow": "vh_lens.masking",
    "format_question": "vh_lens.answers",
    "parse_answer": "vh_lens.answers",
    "is_correct": "vh_lens.answers",
    "candidate_strings": "vh_lens.answers",
    # paper B: functional heads
    "collect_head_activations": "vh_lens.probing",
    "probe_heads": "vh_lens.probing",
    "HeadActivations": "vh_lens.probing",
    "ProbeResult": "vh_lens.probing",
    "FunctionDirections": "vh_lens.probing",
    "mean_difference_directions": "vh_lens.probing",
    "split_by_group": "vh_lens.probing",
    "elbow_index": "vh_lens.probing",
    "intervene_on_functions": "vh_lens.functional",
    "FunctionInterventionReport": "vh_lens.functional",
    "function_hooks": "vh_lens.functional",
    "plot_function_interventions": "vh_lens.functional",
}

__all__ = sorted(_EXPORTS) + ["data", "plotting", "testing"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("data", "plotting", "testing", "toy", "patching"):
        return importlib.import_module(f"vh_lens.{name}")
    raise AttributeError(f"module 'vh_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.loading import SUPPORTED_BACKBONES, SUPPORTED_MODELS, UnsupportedModelError, load_llava, load_llava_no_processing
    from vh_lens.conformance import check_conformance, conformance_table
    from vh_lens.model import LlavaBatch, LlavaLens
    from vh_lens.tensor_source import CheckpointError
