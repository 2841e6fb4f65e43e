"""Loading a LLaVA checkpoint: the language backbone into a HookedTransformer, layer by layer.

The language model is never built as a Hugging Face module when loading from a folder: each
layer's tensors are read from the memory-mapped safetensors files (:mod:`vh_lens.core.tensor_source`:
checked sizes, shapes and finiteness), converted to TransformerLens' layout as views, processed
(fold layer norm, centre unembed, ...) as TransformerLens' ``ProcessWeights`` does
(:mod:`vh_lens.core.processing`) and written block by block into the HookedTransformer, so host memory
peaks near the size of what stays loaded. The vision tower and projector stay Hugging Face modules.

The steps live in :mod:`vh_lens.core.checkpoint_config` (supported families, config checks, the
HookedTransformer config) and :mod:`vh_lens.core.backbone` (the layer-by-layer conversion); their public
names are importable from here too.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from vh_lens.core.backbone import convert_layer, load_backbone
from vh_lens.core.checkpoint_config import (
    DEFAULT_MAX_CTX,
    SUPPORTED_BACKBONES,
    SUPPORTED_MODELS,
    RemoteCodeError,
    check_config,
    check_no_remote_code,
    hooked_config,
    read_config,
    supported_list,
)
from vh_lens.core.conformance import UnsupportedModelError
from vh_lens.core.devices import check_n_devices
from vh_lens.core.tensor_source import CheckpointError, TensorSource, normalise_key

__all__ = [  # the moved names stay importable from here
    "DEFAULT_MAX_CTX",
    "SUPPORTED_BACKBONES",
    "SUPPORTED_MODELS",
    "CheckpointError",
    "RemoteCodeError",
    "UnsupportedModelError",
    "build_vision",
    "check_config",
    "check_no_remote_code",
    "convert_layer",
    "hooked_config",
    "load_backbone",
    "load_llava",
    "load_llava_no_processing",
    "load_processor",
    "read_config",
    "supported_list",
]


# --------------------------------------------------------------------------- vision side


def build_vision(config: PretrainedConfig, src: TensorSource, dtype: torch.dtype | None = None) -> nn.Module:
    """The LLaVA model part without its language model: vision tower, projector, image newline.

    Built on the meta device, where every checkpoint tensor's shape is checked against the
    model's; then only the vision weights are materialised, in ``dtype``, and read.

    Raises:
        CheckpointError: a tensor of the model is missing from the checkpoint or has another shape.
    """
    from vh_lens.core.image_tokens import leading_image_tokens

    model_cls = check_config(config)
    leading_image_tokens(config)  # refuse a tower / strategy the layout cannot follow before reading weights
    with torch.device("meta"):
        full = model_cls(config)
    tied = full.lm_head.weight is full.get_input_embeddings().weight
    expected = {n: tuple(t.shape) for k, t in full.state_dict().items() if (n := normalise_key(k)) is not None}
    src.check_shapes(expected, optional={"head.weight"} if tied else set())
    vision = full.model
    del vision.language_model
    if dtype is not None:
        vision.to(dtype)  # on the meta device: allocates nothing
    vision.to_empty(device="cpu")
    tower = vision.vision_tower
    for module in tower.modules():  # non-persistent buffers (position ids) are not in the checkpoint
        if module._non_persistent_buffers_set:
            tower._init_weights(module)
    state = {k: src.get(k) for k in src.names if not k.startswith(("lm.", "head."))}
    missing, unexpected = vision.load_state_dict(state, strict=False)
    del state
    src.release()
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the {model_cls.__name__} vision side: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    vision.eval()
    return vision


def load_llava(
    source: str | Path | PreTrainedModel,
    *,
    processor=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    n_ctx: int | None = None,
    fast_attention: bool = True,
    check_finite: bool = True,
    n_devices: int = 1,
):
    """Load a LLaVA checkpoint as a :class:`~vh_lens.LlavaLens`.

    The language backbone becomes a :class:`transformer_lens.HookedTransformer` with
    TransformerLens' weight processing (fold layer norm, centre writing weights, centre
    unembed, fold value biases) on by default, as ``HookedTransformer.from_pretrained`` does;
    pass ``fold_ln=False, center_writing_weights=False, center_unembed=False,
    fold_value_biases=False`` (or use :func:`load_llava_no_processing`) for the raw weights.
    Nothing is fetched from a network.

    Args:
        source: a local Hugging Face checkpoint folder (config, safetensors, processor files),
            or an in-memory ``LlavaForConditionalGeneration`` /
            ``LlavaNextForConditionalGeneration`` / ``VipLlavaForConditionalGeneration``
            (then pass ``processor``; the model's vision modules are shared, not copied).
        processor: the Hugging Face processor; read from the folder when not given.
        device: where to put the model (default: CPU).
        dtype: parameter dtype (default: the checkpoint's, float32 for an in-memory model's).
        n_ctx: context length of the HookedTransformer (default ``min(max positions, 4096)``).
        fast_attention: let layers whose pattern no hook reads use fused attention
            (:mod:`vh_lens.core.fast_attention`; same results, faster); ``False`` always runs
            TransformerLens' own attention. Switch later with ``model.fast_attention = ...``.
        check_finite: check every tensor read (language and vision side) for NaN and infinity
            and refuse a checkpoint holding any (measured: 0.7 s of 18 s for LLaVA-1.5-7B in float16); ``False`` skips it.
        n_devices: split the language backbone's layers over this many CUDA devices from
            ``device`` on (TransformerLens' layer split, :func:`vh_lens.core.devices.layer_devices`), for models that do
            not fit one GPU; the vision tower, projector and embedding stay on the first device.

    Returns:
        A :class:`~vh_lens.LlavaLens`.

    Raises:
        FileNotFoundError: the folder, its config, weights or processor files are missing.
        UnsupportedModelError: not a supported LLaVA family or language backbone.
        CheckpointError: a broken safetensors file or index, a tensor missing, of the wrong shape
            or holding NaN or infinity; the message names the file and the tensor.

    Example:
        >>> model = vh_lens.load_llava("/models/llava-1.5-7b-hf", dtype=torch.float16)  # doctest: +SKIP
    """
    from vh_lens.core.model import LlavaLens

    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(source, PreTrainedModel):
        config = source.config
        check_config(config)
        if processor is None:
            raise ValueError("load_llava: an in-memory model needs processor=...")
        src = TensorSource.from_module(source, check_finite=check_finite)
        for key in src.names:  # the vision side is shared, not copied: still checked for NaN / inf
            if not key.startswith(("lm.", "head.")):
                src.get(key)
        vision = source.model
        dtype = dtype or source.dtype
    elif isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        config = read_config(folder)
        processor = processor if processor is not None else load_processor(folder)
        src = TensorSource.from_folder(folder, check_finite=check_finite)
        dtype = dtype or _checkpoint_dtype(config)
        with _single_threaded():
            vision = build_vision(config, src, dtype)
    else:
        raise TypeError(
            f"load_llava: source must be a folder path or a Hugging Face LLaVA model, got {type(source).__name__}"
        )
    n_devices = check_n_devices(n_devices, device, int(config.text_config.num_hidden_layers))
    cfg = hooked_config(config, dtype=dtype, device=device, n_ctx=n_ctx, fold_ln=fold_ln)
    cfg.n_devices = n_devices  # checked above (TransformerLens' config checks only at construction)
    with _single_threaded():
        lm = load_backbone(
            src,
            config,
            cfg,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        )
    del src
    if not isinstance(source, PreTrainedModel):
        vision.to(device=device)
    return LlavaLens(lm, vision, processor, config, fast_attention=fast_attention)


@contextlib.contextmanager
def _single_threaded():
    """One intra-op thread while loading: the work is memory-bound copies (the transposing ones
    single-threaded in torch anyway), and on a shared machine torch's threads wait on each other:
    measured on 2 busy cores, 1 thread loaded 1.6-1.7 s where 2 took 1.5-12 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_llava_no_processing(source, **kwargs):
    """:func:`load_llava` without weight processing, as ``from_pretrained_no_processing`` does."""
    flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return load_llava(source, **{**flags, **kwargs})


def _checkpoint_dtype(config: PretrainedConfig) -> torch.dtype:
    dt = getattr(config, "dtype", None) or getattr(config.text_config, "dtype", None) or "float32"
    return dt if isinstance(dt, torch.dtype) else getattr(torch, str(dt).replace("torch.", ""))


def load_processor(folder: Path):
    """The checkpoint's processor with the PIL image backend (never torchvision)."""
    from transformers import AutoProcessor

    if not any(
        (folder / f).is_file()
        for f in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")
    ):
        raise FileNotFoundError(f"no processor files (preprocessor_config.json, tokenizer files) in {folder}")
    config_file = folder / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "llava_onevision":
        from vh_lens.core.onevision import load_onevision_processor

        processor = load_onevision_processor(folder)  # images only: HF's wants a torchvision video processor
    else:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    processor.tokenizer.padding_side = "left"
    return processor
