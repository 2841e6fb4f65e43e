"""vh_lens: mechanistic interpretability of LLaVA-family models, as a TransformerLens plugin.

The public API is the 26 names below plus the subpackages: ``core`` (loading, the model, layouts,
hooks, configs), ``engine`` (prepare once, run batches under hook conditions with a reducer),
``visual_heads`` (paper A), ``functional_heads`` (paper B), ``evaluation``, ``analysis`` (logit
lens, head interventions), ``patching``, ``data``, ``plotting``, ``reports``, ``toy`` and
``testing``. Every other public name lives in its subpackage (``vh_lens.visual_heads.head_metrics``);
see ``docs/architecture.md``.

Import cost is kept low: submodules load on first use of a name (PEP 562), so ``import vh_lens``
does no work beyond reading this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    # loading and running
    "load_llava": "vh_lens.core.loading",
    "LlavaLens": "vh_lens.core.model",
    "LlavaBatch": "vh_lens.core.model",
    "TokenLayout": "vh_lens.core.layout",
    "UnsupportedModelError": "vh_lens.core.conformance",
    "conformance_table": "vh_lens.core.conformance",
    "CheckpointError": "vh_lens.core.tensor_source",
    # the engine
    "Condition": "vh_lens.engine",
    "Reducer": "vh_lens.engine",
    # paper A: visual heads
    "scan_visual_heads": "vh_lens.visual_heads.scan",
    "visual_head_hooks": "vh_lens.visual_heads.hooks",
    "VisualHeadScores": "vh_lens.visual_heads.scores",
    "masking_experiment": "vh_lens.visual_heads.masking",
    "MaskingResult": "vh_lens.visual_heads.masking_result",
    # evaluation, logit lens and interventions
    "evaluate": "vh_lens.evaluation.scoring",
    "EvalResult": "vh_lens.evaluation.scoring",
    "logit_lens": "vh_lens.analysis.logit_lens",
    "LogitLensResult": "vh_lens.analysis.lens_result",
    "ablate_heads": "vh_lens.analysis.interventions",
    "scale_heads": "vh_lens.analysis.interventions",
    "shift_heads": "vh_lens.analysis.interventions",
    # paper B: functional heads
    "collect_head_activations": "vh_lens.functional_heads.activations",
    "probe_heads": "vh_lens.functional_heads.probes",
    "ProbeResult": "vh_lens.functional_heads.probes",
    "intervene_on_functions": "vh_lens.functional_heads.interventions",
    "FunctionInterventionReport": "vh_lens.functional_heads.report",
}

# Former top-level names: still importable from these subpackages.
_MOVED = {
    "FunctionDirections": "vh_lens.functional_heads",
    "HEAD_METRICS": "vh_lens.visual_heads",
    "HeadActivations": "vh_lens.functional_heads",
    "HeadMeans": "vh_lens.analysis",
    "ImageGrid": "vh_lens.core",
    "ImageLayout": "vh_lens.core",
    "LlavaOnevisionImageOnlyProcessor": "vh_lens.core",
    "METRICS": "vh_lens.visual_heads",
    "MaskingRow": "vh_lens.visual_heads",
    "Prediction": "vh_lens.evaluation",
    "STAGES": "vh_lens.visual_heads",
    "SUPPORTED_BACKBONES": "vh_lens.core",
    "SUPPORTED_MODELS": "vh_lens.core",
    "ScoreAccumulator": "vh_lens.visual_heads",
    "answer_token_ids": "vh_lens.analysis.logit_lens",
    "candidate_strings": "vh_lens.evaluation",
    "check_conformance": "vh_lens.core",
    "default_layer_fn": "vh_lens.visual_heads",
    "detection_score": "vh_lens.visual_heads",
    "elbow_index": "vh_lens.functional_heads",
    "emd_layers": "vh_lens.visual_heads",
    "format_question": "vh_lens.evaluation",
    "function_hooks": "vh_lens.functional_heads",
    "head_means": "vh_lens.analysis.head_means",
    "head_metrics": "vh_lens.visual_heads",
    "is_correct": "vh_lens.evaluation",
    "layer_distribution": "vh_lens.visual_heads",
    "load_llava_no_processing": "vh_lens.core",
    "mean_difference_directions": "vh_lens.functional_heads",
    "parse_answer": "vh_lens.evaluation",
    "pearson": "vh_lens.visual_heads",
    "plot_function_interventions": "vh_lens.plotting",
    "query_position_mask": "vh_lens.analysis",
    "split_by_group": "vh_lens.functional_heads",
    "stage_layers": "vh_lens.visual_heads",
    "stage_of": "vh_lens.visual_heads",
    "visual_head_qk_hooks": "vh_lens.visual_heads",
}

SUBPACKAGES = (
    "core", "engine", "evaluation", "visual_heads", "functional_heads", "analysis", "patching",
    "data", "plotting", "reports", "commands", "toy", "testing",
)  # fmt: skip

__all__ = sorted(_EXPORTS) + ["analysis", "core", "data", "engine", "evaluation", "functional_heads", "patching",
                              "plotting", "reports", "testing", "toy", "visual_heads"]  # fmt: skip

_names, _dir = lazy_exports(__name__, _EXPORTS, _MOVED)


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"vh_lens.{name}")
    return _names(name)


def __dir__() -> list[str]:
    return sorted(set(_dir()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.analysis.interventions import ablate_heads, scale_heads, shift_heads
    from vh_lens.analysis.lens_result import LogitLensResult
    from vh_lens.analysis.logit_lens import logit_lens
    from vh_lens.core.conformance import UnsupportedModelError, conformance_table
    from vh_lens.core.layout import TokenLayout
    from vh_lens.core.loading import load_llava
    from vh_lens.core.model import LlavaBatch, LlavaLens
    from vh_lens.core.tensor_source import CheckpointError
    from vh_lens.engine import Condition, Reducer
    from vh_lens.evaluation.scoring import EvalResult, evaluate
    from vh_lens.functional_heads.activations import collect_head_activations
    from vh_lens.functional_heads.interventions import intervene_on_functions
    from vh_lens.functional_heads.probes import ProbeResult, probe_heads
    from vh_lens.functional_heads.report import FunctionInterventionReport
    from vh_lens.visual_heads.hooks import visual_head_hooks
    from vh_lens.visual_heads.masking import masking_experiment
    from vh_lens.visual_heads.masking_result import MaskingResult
    from vh_lens.visual_heads.scan import scan_visual_heads
    from vh_lens.visual_heads.scores import VisualHeadScores
