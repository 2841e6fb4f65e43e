"""vh_lens: mechanistic interpretability of LLaVA-family models, as a TransformerLens plugin.

Import cost is kept low: submodules load on first use of a name (PEP 562), so ``import vh_lens``
does no work beyond reading this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    # loading and running
    "load_llava": "vh_lens.core.loading",
    "load_llava_no_processing": "vh_lens.core.loading",
    "SUPPORTED_MODELS": "vh_lens.core.loading",
    "SUPPORTED_BACKBONES": "vh_lens.core.loading",
    "UnsupportedModelError": "vh_lens.core.loading",
    "check_conformance": "vh_lens.core.conformance",
    "conformance_table": "vh_lens.core.conformance",
    "CheckpointError": "vh_lens.core.tensor_source",
    "LlavaLens": "vh_lens.core.model",
    "LlavaBatch": "vh_lens.core.model",
    "TokenLayout": "vh_lens.core.layout",
    "ImageGrid": "vh_lens.core.layout",
    "ImageLayout": "vh_lens.core.layout",
    "LlavaOnevisionImageOnlyProcessor": "vh_lens.core.onevision",
    # paper A: visual heads
    "scan_visual_heads": "vh_lens.visual_heads.scan",
    "visual_head_hooks": "vh_lens.visual_heads.scan",
    "visual_head_qk_hooks": "vh_lens.visual_heads.scan",
    "head_metrics": "vh_lens.visual_heads.scan",
    "detection_score": "vh_lens.visual_heads.scan",
    "default_layer_fn": "vh_lens.visual_heads.scan",
    "ScoreAccumulator": "vh_lens.visual_heads.scan",
    "HEAD_METRICS": "vh_lens.visual_heads.scan",
    "VisualHeadScores": "vh_lens.visual_heads.scores",
    "METRICS": "vh_lens.visual_heads.scores",
    "STAGES": "vh_lens.visual_heads.scores",
    "stage_layers": "vh_lens.visual_heads.scores",
    "stage_of": "vh_lens.visual_heads.scores",
    "pearson": "vh_lens.visual_heads.scores",
    "emd_layers": "vh_lens.visual_heads.scores",
    "layer_distribution": "vh_lens.visual_heads.scores",
    # logit lens and interventions
    "logit_lens": "vh_lens.analysis.logit_lens",
    "LogitLensResult": "vh_lens.analysis.logit_lens",
    "answer_token_ids": "vh_lens.analysis.logit_lens",
    "ablate_heads": "vh_lens.analysis.interventions",
    "scale_heads": "vh_lens.analysis.interventions",
    "shift_heads": "vh_lens.analysis.interventions",
    "head_means": "vh_lens.analysis.interventions",
    "HeadMeans": "vh_lens.analysis.interventions",
    "query_position_mask": "vh_lens.analysis.interventions",
    # evaluation and masking
    "evaluate": "vh_lens.evaluation.scoring",
    "EvalResult": "vh_lens.evaluation.scoring",
    "Prediction": "vh_lens.evaluation.scoring",
    "masking_experiment": "vh_lens.visual_heads.masking",
    "MaskingResult": "vh_lens.visual_heads.masking",
    "MaskingRow": "vh_lens.visual_heads.masking",
    "format_question": "vh_lens.evaluation.answers",
    "parse_answer": "vh_lens.evaluation.answers",
    "is_correct": "vh_lens.evaluation.answers",
    "candidate_strings": "vh_lens.evaluation.answers",
    # paper B: functional heads
    "collect_head_activations": "vh_lens.functional_heads.probes",
    "probe_heads": "vh_lens.functional_heads.probes",
    "HeadActivations": "vh_lens.functional_heads.probes",
    "ProbeResult": "vh_lens.functional_heads.probes",
    "FunctionDirections": "vh_lens.functional_heads.probes",
    "mean_difference_directions": "vh_lens.functional_heads.probes",
    "split_by_group": "vh_lens.functional_heads.probes",
    "elbow_index": "vh_lens.functional_heads.probes",
    "intervene_on_functions": "vh_lens.functional_heads.interventions",
    "FunctionInterventionReport": "vh_lens.functional_heads.interventions",
    "function_hooks": "vh_lens.functional_heads.interventions",
    "plot_function_interventions": "vh_lens.functional_heads.interventions",
}

_SUBPACKAGES = (
    "core", "evaluation", "visual_heads", "functional_heads", "analysis", "patching",
    "data", "plotting", "reports", "commands", "testing", "toy",
)

__all__ = sorted(_EXPORTS) + ["data", "plotting", "testing"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"vh_lens.{name}")
    raise AttributeError(f"module 'vh_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.core.loading import SUPPORTED_BACKBONES, SUPPORTED_MODELS, UnsupportedModelError, load_llava, load_llava_no_processing
    from vh_lens.core.conformance import check_conformance, conformance_table
    from vh_lens.core.model import LlavaBatch, LlavaLens
    from vh_lens.core.tensor_source import CheckpointError
