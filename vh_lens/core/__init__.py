"""The core every experiment stands on: loading a checkpoint (``loading``, ``checkpoint_config``,
``backbone``, ``conformance``, ``tensor_source``, ``processing``, ``fingerprint``, ``onevision``), the model
(``model``) and its batches (``batch``), which position is
what (``layout``, ``image_tokens``, ``geometry``), fast paths (``fast_attention``), prompts (``prompts``,
``tokenizer``), TransformerLens-native images (``tl_native``), the hook vocabulary (``hooks``), experiment
settings (``config``) and result files (``io``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vh_lens.core.lazy import lazy_exports

_EXPORTS = {
    "load_llava": "vh_lens.core.loading",
    "load_llava_no_processing": "vh_lens.core.loading",
    "SUPPORTED_MODELS": "vh_lens.core.loading",
    "SUPPORTED_BACKBONES": "vh_lens.core.loading",
    "UnsupportedModelError": "vh_lens.core.conformance",
    "check_conformance": "vh_lens.core.conformance",
    "conformance_table": "vh_lens.core.conformance",
    "CheckpointError": "vh_lens.core.tensor_source",
    "LlavaLens": "vh_lens.core.model",
    "LlavaBatch": "vh_lens.core.model",
    "TokenLayout": "vh_lens.core.layout",
    "ImageGrid": "vh_lens.core.layout",
    "ImageLayout": "vh_lens.core.layout",
    "LlavaOnevisionImageOnlyProcessor": "vh_lens.core.onevision",
    "Head": "vh_lens.core.hooks",
    "HookFunction": "vh_lens.core.hooks",
    "FwdHook": "vh_lens.core.hooks",
    "act_name": "vh_lens.core.hooks",
    "random_heads": "vh_lens.core.hooks",
    "ExperimentConfig": "vh_lens.core.config",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from vh_lens.core.config import ExperimentConfig
    from vh_lens.core.conformance import UnsupportedModelError, check_conformance, conformance_table
    from vh_lens.core.hooks import FwdHook, Head, HookFunction, act_name, random_heads
    from vh_lens.core.layout import ImageGrid, ImageLayout, TokenLayout
    from vh_lens.core.loading import SUPPORTED_BACKBONES, SUPPORTED_MODELS, load_llava, load_llava_no_processing
    from vh_lens.core.model import LlavaBatch, LlavaLens
    from vh_lens.core.onevision import LlavaOnevisionImageOnlyProcessor
    from vh_lens.core.tensor_source import CheckpointError
