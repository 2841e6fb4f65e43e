"""vh_lens: mechanistic interpretability of LLaVA-family models, as a TransformerLens plugin."""

from vh_lens.layout import ImageGrid, TokenLayout
from vh_lens.loading import SUPPORTED_BACKBONES, SUPPORTED_MODELS, UnsupportedModelError, load_llava, load_llava_no_processing
from vh_lens.model import LlavaBatch, LlavaLens

__all__ = [
    "SUPPORTED_BACKBONES",
    "SUPPORTED_MODELS",
    "ImageGrid",
    "LlavaBatch",
    "LlavaLens",
    "TokenLayout",
    "UnsupportedModelError",
    "load_llava",
    "load_llava_no_processing",
]
