"""The conformance table: which config fields vh_lens honours, refuses or ignores, per config class.

:data:`FIELD_RULES` and :data:`INERT_FIELDS` are the table's data; :mod:`vh_lens.core.conformance`
applies it (:func:`~vh_lens.core.conformance.check_conformance`) and re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FIELD_RULES",
    "INERT_FIELDS",
    "LLAVA_CLASSES",
    "TEXT_CLASSES",
    "TL_ACTIVATIONS",
    "VISION_CLASSES",
    "Check",
    "FieldRule",
]


Check = Callable[[Any, Any], "str | None"]
"""``check(value, config)``: ``None`` when the value is reproduced exactly, else why it is refused."""


@dataclass(frozen=True)
class FieldRule:
    """One row of the conformance table.

    Attributes:
        config_class: the Hugging Face config class name (``"LlamaConfig"``).
        field: the attribute name on that config.
        status: ``"honoured"``, ``"refused"`` (refused when ``check`` says so) or ``"inert"``.
        how: for honoured rows how (by vh_lens' conversion, or "Hugging Face module" for what the
            vision tower and projector consume); for refused rows why; for inert rows why it
            cannot change the forward.
        test: the test that proves an honoured row (``None`` for refused and inert rows).
        check: refuses some values of an honoured field, or is the condition of a refused one.
    """

    config_class: str
    field: str
    status: Literal["honoured", "refused", "inert"]
    how: str
    test: str | None = None
    check: Check | None = None


# --------------------------------------------------------------------------- conditions

TL_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",  # ACT2FN["swish"] is nn.SiLU
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_fast": "gelu_fast",
    "gelu_pytorch_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "relu2": "relu2",
}
"""Hugging Face ``hidden_act`` -> the TransformerLens activation computing the same function."""

_LLAMA3_KEYS = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}


def _refuse_if(predicate: Callable[[Any], bool], why: str) -> Check:
    return lambda value, config: why if predicate(value) else None


def _activation(value, config) -> str | None:
    if value in TL_ACTIVATIONS:
        return None
    return f"TransformerLens has no activation identical to Hugging Face's; honoured: {', '.join(TL_ACTIVATIONS)}"


def _rope_parameters(value, config) -> str | None:
    params = dict(value or {})
    if any(isinstance(v, dict) for v in params.values()):
        return "per-layer-type rope parameters are not supported"
    rope_type = params.get("rope_type", "default")
    allowed = {"rope_type", "rope_theta", "partial_rotary_factor"}
    if rope_type == "llama3" and config.model_type == "phi3":
        return "Phi-3 takes rope_type 'default' (or 'longrope', refused)"
    if rope_type == "llama3":
        allowed |= _LLAMA3_KEYS
    elif rope_type != "default":
        return "TransformerLens reproduces rope_type 'default' and 'llama3' only"
    extra = sorted(set(params) - allowed)
    if extra:
        return f"rope parameter(s) {extra} are not reproduced for rope_type {rope_type!r}"
    partial = float(params.get("partial_rotary_factor", 1.0))
    if partial != 1.0 and config.model_type != "phi3":
        return "only Phi-3 rotates part of each head; this backbone ignores or mis-sizes the factor"
    return None


def _layer_types(value, config) -> str | None:
    if value is None or len(value) != config.num_hidden_layers:
        return "must list one attention type per layer"
    unknown = sorted(set(value) - {"full_attention", "sliding_attention"})
    if unknown:
        return f"attention types {unknown} are not supported"
    if "sliding_attention" in value and getattr(config, "sliding_window", None) is None:
        return "sliding layers without a sliding_window (Hugging Face cannot run this config)"
    return None


def _window(value, config) -> str | None:
    if value is not None and int(value) < 1:
        return "a sliding window must be at least 1"
    return None


def _feature_strategy_full(value, config) -> str | None:
    return None if value == "full" else "a SigLIP tower has no CLS token to drop: only 'full' is exact"


def _feature_strategy_next(value, config) -> str | None:
    return None if value == "default" else "the anyres grid needs the CLS token dropped ('default')"


# --------------------------------------------------------------------------- the table

_T = "tests/core/test_conformance.py::test_honoured_field_matches_hugging_face"
_FAMILY = "tests/core/test_model.py::test_logits_and_patterns_match_hugging_face"
_ONEVISION_TILES = "tests/core/test_onevision.py::test_onevision_downsampled_tiles_match_hugging_face"
_HF = "Hugging Face module"
_EVAL = "no effect in eval: Hugging Face applies dropout only in training, TransformerLens has none"


def _text_rules(cls: str) -> list[FieldRule]:
    family = [
        FieldRule(cls, "vocab_size", "honoured", "conversion: d_vocab (embedding and unembedding rows)", _FAMILY),
        FieldRule(cls, "hidden_size", "honoured", "conversion: d_model", _FAMILY),
        FieldRule(cls, "intermediate_size", "honoured", "conversion: d_mlp", _FAMILY),
        FieldRule(cls, "num_hidden_layers", "honoured", "conversion: n_layers", _FAMILY),
        FieldRule(cls, "num_attention_heads", "honoured", "conversion: n_heads", _FAMILY),
        FieldRule(
            cls, "num_key_value_heads", "honoured", "conversion: n_key_value_heads (grouped-query attention)", _T
        ),
        FieldRule(
            cls, "head_dim", "honoured", "conversion: d_head (and the 1/sqrt(d_head) scale, the rotary size)", _T
        ),
        FieldRule(
            cls,
            "hidden_act",
            "honoured",
            "conversion: act_fn (the TransformerLens function equal to ACT2FN's)",
            _T,
            _activation,
        ),
        FieldRule(cls, "rms_norm_eps", "honoured", "conversion: eps of every RMS norm", _T),
        FieldRule(
            cls,
            "max_position_embeddings",
            "honoured",
            "conversion: n_ctx = min(it, 4096) unless given (longer batches are refused); the accepted rope types do not read it",
            _T,
        ),
        FieldRule(
            cls,
            "rope_parameters",
            "honoured",
            "conversion: rope_theta -> rotary_base; rope_type 'llama3' -> NTK-by-parts; Phi-3 partial_rotary_factor -> "
            "rotary_dim; refused: other rope types (linear, dynamic, yarn, longrope/su), other keys, a partial factor "
            "outside Phi-3",
            _T,
            _rope_parameters,
        ),
        FieldRule(cls, "attention_dropout", "honoured", _EVAL, _T),
        FieldRule(
            cls,
            "tie_word_embeddings",
            "inert",
            "Hugging Face's LLaVA ties by the LLaVA-level flag (LlavaConfig copies a True text flag up when built)",
        ),
    ]
    if cls == "LlamaConfig":
        family += [
            FieldRule(cls, "attention_bias", "honoured", "conversion: q/k/v/o_proj biases -> b_Q, b_K, b_V, b_O", _T),
            FieldRule(
                cls,
                "mlp_bias",
                "refused",
                "TransformerLens' gated MLP has no gate/up bias",
                check=_refuse_if(bool, "TransformerLens' gated MLP has no gate/up bias"),
            ),
            FieldRule(cls, "pretraining_tp", "honoured", "not read by transformers 5's Llama forward", _T),
        ]
    elif cls == "MistralConfig":
        family += [
            FieldRule(
                cls,
                "sliding_window",
                "honoured",
                "conversion: every layer local attention with window_size (Mistral windows all layers)",
                _T,
                _window,
            ),
        ]
    elif cls == "Qwen2Config":
        family += [
            FieldRule(
                cls,
                "layer_types",
                "honoured",
                "conversion: attn_types per layer ('sliding_attention' -> local with sliding_window), as Qwen2's "
                "attention and masks read it",
                _T,
                _layer_types,
            ),
            FieldRule(
                cls,
                "sliding_window",
                "honoured",
                "conversion: window_size of the layers layer_types marks sliding",
                _T,
                _window,
            ),
            FieldRule(
                cls,
                "use_sliding_window",
                "honoured",
                "through layer_types and sliding_window, which Qwen2Config derives from it (window on layers >= max_window_layers)",
                _T,
            ),
            FieldRule(
                cls, "max_window_layers", "honoured", "through layer_types, which Qwen2Config derives from it", _T
            ),
        ]
    elif cls == "Phi3Config":
        family += [
            FieldRule(
                cls,
                "sliding_window",
                "honoured",
                "conversion: every layer local attention with window_size",
                _T,
                _window,
            ),
            FieldRule(cls, "resid_pdrop", "honoured", _EVAL, _T),
            FieldRule(cls, "embd_pdrop", "honoured", _EVAL, _T),
            FieldRule(
                cls,
                "original_max_position_embeddings",
                "honoured",
                "read only by the longrope rotary (refused); no effect with the accepted rope types",
                _T,
            ),
        ]
    return family


def _llava_rules(cls: str) -> list[FieldRule]:
    onevision = cls == "LlavaOnevisionConfig"
    test = _FAMILY if onevision else _T
    rules = [
        FieldRule(cls, "text_config", "honoured", "sub-config, checked field by field", _FAMILY),
        FieldRule(cls, "vision_config", "honoured", "sub-config, checked field by field", _FAMILY),
        FieldRule(
            cls,
            "image_token_index",
            "honoured",
            "vh_lens splices the image features at this token, as Hugging Face does",
            _FAMILY,
        ),
        FieldRule(
            cls,
            "tie_word_embeddings",
            "honoured",
            "conversion: tied -> the unembedding is the token embedding; untied -> lm_head.weight is required",
            test,
        ),
        FieldRule(cls, "projector_hidden_act", "honoured", _HF + " (projector)", test),
        FieldRule(cls, "vision_feature_layer", "honoured", _HF + " (vision tower output selection)", test),
        FieldRule(
            cls,
            "image_seq_length",
            "inert",
            "read by the processor only; the layout counts the features the model makes",
        ),
        FieldRule(cls, "vocab_size", "inert", "legacy LLaVA-level key; transformers 5 reads text_config.vocab_size"),
    ]
    if cls != "VipLlavaConfig":
        rules.append(FieldRule(cls, "multimodal_projector_bias", "honoured", _HF + " (projector)", test))
    if cls == "VipLlavaConfig":
        rules.append(FieldRule(cls, "projector_layernorm_eps", "honoured", _HF + " (projector norm)", test))
    if cls == "LlavaConfig":
        rules.append(
            FieldRule(
                cls,
                "vision_feature_select_strategy",
                "honoured",
                _HF + " and vh_lens layout ('full' keeps the CLS feature ahead of the grid)",
                test,
            )
        )
    if cls == "LlavaNextConfig":
        rules.append(
            FieldRule(
                cls,
                "vision_feature_select_strategy",
                "honoured",
                _HF + " and vh_lens layout; refused: anything but 'default'",
                _FAMILY,
                _feature_strategy_next,
            )
        )
    if cls in ("LlavaNextConfig", "LlavaOnevisionConfig"):
        rules.append(
            FieldRule(cls, "image_grid_pinpoints", "honoured", _HF + " and vh_lens layout (anyres tiles)", _FAMILY)
        )
    if onevision:
        rules += [
            FieldRule(
                cls,
                "vision_feature_select_strategy",
                "honoured",
                _HF + " and vh_lens layout; refused: anything but 'full' (SigLIP has no CLS token)",
                _FAMILY,
                _feature_strategy_full,
            ),
            FieldRule(
                cls, "vision_aspect_ratio", "honoured", _HF + " and vh_lens layout (anyres_max_N)", _ONEVISION_TILES
            ),
            FieldRule(cls, "video_token_index", "inert", "vh_lens passes images only"),
        ]
    return rules


def _vision_rules(cls: str) -> list[FieldRule]:
    test = _FAMILY if cls == "SiglipVisionConfig" else _T
    family = _FAMILY
    rules = [
        FieldRule(cls, "hidden_size", "honoured", _HF, family),
        FieldRule(cls, "intermediate_size", "honoured", _HF, family),
        FieldRule(cls, "num_hidden_layers", "honoured", _HF, family),
        FieldRule(cls, "num_attention_heads", "honoured", _HF, family),
        FieldRule(cls, "num_channels", "honoured", _HF + " (the processor makes 3-channel images)", family),
        FieldRule(cls, "image_size", "honoured", _HF + " and vh_lens layout (patch grid)", family),
        FieldRule(cls, "patch_size", "honoured", _HF + " and vh_lens layout (patch grid)", family),
        FieldRule(cls, "hidden_act", "honoured", _HF, test),
        FieldRule(cls, "layer_norm_eps", "honoured", _HF, test),
        FieldRule(cls, "attention_dropout", "honoured", _HF + ", " + _EVAL.split(":")[0], test),
    ]
    if cls == "CLIPVisionConfig":
        rules += [
            FieldRule(cls, "projection_dim", "inert", "the projection head is not part of the vision tower LLaVA runs"),
            FieldRule(cls, "initializer_factor", "inert", "initialisation only"),
            FieldRule(
                cls, "vocab_size", "inert", "legacy key (CLIP's text vocabulary); the vision tower does not read it"
            ),
        ]
    else:
        rules.append(
            FieldRule(
                cls, "vision_use_head", "honoured", _HF + " (LLaVA reads hidden states, not the pooled head)", test
            )
        )
    return rules


LLAVA_CLASSES = ("LlavaConfig", "LlavaNextConfig", "VipLlavaConfig", "LlavaOnevisionConfig")
TEXT_CLASSES = ("LlamaConfig", "MistralConfig", "Qwen2Config", "Phi3Config")
VISION_CLASSES = ("CLIPVisionConfig", "SiglipVisionConfig")

FIELD_RULES: dict[tuple[str, str], FieldRule] = {
    (r.config_class, r.field): r
    for r in [
        *(r for c in LLAVA_CLASSES for r in _llava_rules(c)),
        *(r for c in TEXT_CLASSES for r in _text_rules(c)),
        *(r for c in VISION_CLASSES for r in _vision_rules(c)),
    ]
}
"""``(config class, field) -> rule``: every field that can change the forward pass."""

INERT_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        ("_name_or_path", "architectures", "transformers_version", "model_type", "auto_map", "_commit_hash"),
        "bookkeeping",
    ),
    "dtype": "storage dtype of the checkpoint; load_llava(dtype=...) chooses the working dtype",
    "torch_dtype": "legacy name of dtype",
    **dict.fromkeys(
        ("output_attentions", "output_hidden_states", "return_dict", "use_cache", "torchscript"),
        "what the Hugging Face forward returns, not what it computes",
    ),
    **dict.fromkeys(
        (
            "id2label",
            "label2id",
            "problem_type",
            "finetuning_task",
            "task_specific_params",
            "prefix",
            "tokenizer_class",
        ),
        "task and tokenizer metadata",
    ),
    **dict.fromkeys(
        ("bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id"),
        "token ids the forward does not read",
    ),
    "pad_token_id": "the embedding's padding_idx changes initialisation and gradients only; vh_lens masks padding",
    "ignore_index": "label value for the loss",
    "initializer_range": "initialisation only",
    "chunk_size_feed_forward": "not read by these models' forward",
    **dict.fromkeys(
        (
            "is_encoder_decoder",
            "is_decoder",
            "add_cross_attention",
            "cross_attention_hidden_size",
            "tie_encoder_decoder",
        ),
        "encoder-decoder flags, not read by these decoder-only models",
    ),
    **dict.fromkeys(
        ("use_bfloat16", "tf_legacy_loss", "pruned_heads"), "legacy keys transformers 5 keeps but never reads"
    ),
    "ignore_keys_at_rope_validation": "transformers' own rope-validation bookkeeping",
    "use_image_newline_parameter": "legacy LLaVA-NeXT key; transformers 5 always has the image newline",
}
"""Fields that cannot change the forward pass, for every config class, with the reason."""
