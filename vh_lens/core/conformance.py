"""Config conformance: the one place that decides which checkpoint configs vh_lens loads exactly.

Every config field that can change the forward pass is in :data:`FIELD_RULES`, per config class,
marked ``honoured`` (how, and the test that proves it) or ``refused`` (a condition on its value).
Fields that cannot change the forward (bookkeeping, token ids, initialisation) are listed as
``inert``, with the reason, in :data:`INERT_FIELDS` and as ``inert`` rows. Anything else, a field
no row names, is refused when it differs from the class default (computed from the config class
itself); an attribute the class does not declare at all (an extra key of ``config.json``) is
refused outright. :func:`check_conformance` applies the table to a LLaVA config and its text and
vision sub-configs; ``vh_lens.core.checkpoint_config.check_config`` calls it on every load path.

:func:`attention_windows`, :func:`attention_biases` and :func:`tl_activation` turn the honoured
fields into what the conversion needs, so the decision and its use cannot drift apart.

Example:
    >>> from vh_lens.core.conformance import conformance_table
    >>> rows = conformance_table()                     # [(class, field, status, how/why, test), ...]
    >>> [r for r in rows if r[1] == "mlp_bias"][0][2]
    'refused'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vh_lens.core.conformance_rules import (
    FIELD_RULES,
    INERT_FIELDS,
    LLAVA_CLASSES,
    TEXT_CLASSES,
    TL_ACTIVATIONS,
    VISION_CLASSES,
    Check,  # noqa: F401  (re-exported: the old import path)
    FieldRule,
)

__all__ = [
    "FIELD_RULES",
    "INERT_FIELDS",
    "FieldRule",
    "UnsupportedModelError",
    "attention_biases",
    "attention_windows",
    "check_conformance",
    "conformance_table",
    "tl_activation",
]


class UnsupportedModelError(ValueError):
    """The checkpoint is not one of the supported LLaVA families or backbones, or uses a config
    value vh_lens cannot reproduce exactly."""


# --------------------------------------------------------------------------- checking


def _class_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


def _fields(config) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def _check_one(config, role: str, allowed: tuple[str, ...]) -> None:
    cls = type(config).__name__
    if cls not in allowed:
        raise UnsupportedModelError(f"unsupported config: {role} is a {cls} (supported: {', '.join(allowed)})")
    for name, value in _fields(config).items():
        if name in INERT_FIELDS or name in ("text_config", "vision_config"):
            continue
        rule = FIELD_RULES.get((cls, name))
        if rule is None:
            default = _class_default(type(config), name)
            if default is dataclasses.MISSING:
                raise UnsupportedModelError(
                    f"unsupported config: {cls}.{name} = {value!r} (not a {cls} field and not in vh_lens' conformance table)"
                )
            if value != default:
                raise UnsupportedModelError(
                    f"unsupported config: {cls}.{name} = {value!r} (differs from the default {default!r} and is not in "
                    "vh_lens' conformance table)"
                )
            continue
        why = rule.check(value, config) if rule.check is not None else None
        if why is not None:
            raise UnsupportedModelError(f"unsupported config: {cls}.{name} = {value!r} ({why})")


def check_conformance(config) -> None:
    """Refuse a LLaVA config that vh_lens cannot reproduce exactly, naming class, field and value.

    Checks the LLaVA config, its ``text_config`` and its ``vision_config`` against
    :data:`FIELD_RULES` and :data:`INERT_FIELDS`.

    Raises:
        UnsupportedModelError: e.g. ``unsupported config: LlamaConfig.mlp_bias = True
            (TransformerLens' gated MLP has no gate/up bias)``.
    """
    _check_one(config, "the LLaVA config", LLAVA_CLASSES)
    _check_one(config.text_config, "text_config", TEXT_CLASSES)
    _check_one(config.vision_config, "vision_config", VISION_CLASSES)


def conformance_table() -> list[tuple[str, str, str, str, str]]:
    """The table as rows ``(config class, field, status, how or why, test)``, inert fields last
    (class ``"*"``: every class), for the README and the issue notes."""
    rows = [(r.config_class, r.field, r.status, r.how, r.test or "") for r in FIELD_RULES.values()]
    return rows + [("*", name, "inert", why, "") for name, why in INERT_FIELDS.items()]


# --------------------------------------------------------------------------- what the conversion reads


def tl_activation(hidden_act: str) -> str:
    """The TransformerLens ``act_fn`` name for a Hugging Face ``hidden_act`` (honoured values only)."""
    if hidden_act not in TL_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported activation {hidden_act!r}")
    return TL_ACTIVATIONS[hidden_act]


def attention_windows(text_config) -> list[int | None]:
    """Per layer, the sliding window (keys ``q - window < k <= q``) or ``None`` for full attention.

    Qwen2 follows ``layer_types`` (transformers 5 derives it from ``use_sliding_window`` and
    ``max_window_layers``: the window applies to layers ``>= max_window_layers``); Mistral and
    Phi-3 window every layer when ``sliding_window`` is set; Llama never.
    """
    n = int(text_config.num_hidden_layers)
    window = getattr(text_config, "sliding_window", None)
    if text_config.model_type == "qwen2":
        return [int(window) if t == "sliding_attention" else None for t in text_config.layer_types]
    if text_config.model_type in ("mistral", "phi3") and window is not None:
        return [int(window)] * n
    return [None] * n


def attention_biases(text_config) -> tuple[str, ...]:
    """Which attention projections carry a bias: ``"q"``, ``"k"``, ``"v"``, ``"o"`` (read, never guessed)."""
    if text_config.model_type == "qwen2":
        return ("q", "k", "v")
    if text_config.model_type == "llama" and getattr(text_config, "attention_bias", False):
        return ("q", "k", "v", "o")
    return ()
