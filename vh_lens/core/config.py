"""Experiment settings as frozen dataclasses, shared by the Python API, the CLI and saved metadata.

A config subclasses :class:`ExperimentConfig` (and is declared ``@dataclass(frozen=True)``);
its fields are plain JSON values (bool, int, float, str, ``None``, tuples of them). It checks
itself on construction (:meth:`ExperimentConfig.validate`, one ``ValueError`` naming the
field), round-trips through :meth:`~ExperimentConfig.to_dict` /
:meth:`~ExperimentConfig.from_dict` (unknown keys are refused) and is what an experiment
writes into its result's metadata (under ``"config"``), as SAELens does with its runner configs.

Helpers for the common checks: :func:`check_positive_int`, :func:`check_choice`,
:func:`check_ints`, :func:`check_fraction`.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class MyConfig(ExperimentConfig):
    ...     batch_size: int = 8
    ...     def validate(self) -> None:
    ...         check_positive_int("batch_size", self.batch_size)
    >>> MyConfig.from_dict({"batch_size": 4}).to_dict()
    {'batch_size': 4}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "ExperimentConfig",
    "check_choice",
    "check_fraction",
    "check_ints",
    "check_positive_int",
    "resolve_config",
]

C = TypeVar("C", bound="ExperimentConfig")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    """Lists (from JSON, or given by a caller) become tuples so the config stays hashable."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Base of every experiment's settings.

    Subclasses are ``@dataclass(frozen=True)`` with defaults for every field, and override
    :meth:`validate`. Sequences are stored as tuples.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            frozen = _freeze(value)
            if frozen is not value:
                object.__setattr__(self, f.name, frozen)
            try:
                json.dumps(_jsonable(frozen))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{type(self).__name__}.{f.name} must be a JSON value (bool, int, float, str, None or a "
                    f"list of them), got {type(value).__name__}"
                ) from None
        self.validate()

    def validate(self) -> None:
        """Check the fields; raise ``ValueError`` naming the first bad one."""

    # -- dict round trip -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return {name: _jsonable(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The config of a dict written by :meth:`to_dict` (missing keys take their defaults).

        Raises:
            ValueError: a key that is not a field, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {list(cls.field_names())}")
        return cls(**dict(data))

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` (validated; unknown names refused)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)


def resolve_config(cls: type[C], config: C | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> C:
    """The config an entry point runs with: ``config`` (or the defaults) updated by keyword arguments.

    Entry points take ``config=`` and the same settings as keyword arguments; each key of
    ``overrides`` replaces the config's field, so callers pass just the keywords the user set.

    Raises:
        ValueError: ``config`` is neither a ``cls``, a mapping nor ``None``; an unknown key.
    """
    if config is None:
        base = cls()
    elif isinstance(config, cls):
        base = config
    elif isinstance(config, Mapping):
        base = cls.from_dict(config)
    else:
        raise ValueError(f"config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")
    return base.replace(**dict(overrides)) if overrides else base


# -- checks -----------------------------------------------------------------------------------------


def check_positive_int(name: str, value: Any) -> None:
    """``value`` is an int (not a bool) ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    """``value`` is a real number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_ints(name: str, values: Sequence[Any], *, positive: bool, allow_empty: bool = False) -> tuple[int, ...]:
    """Distinct ints (``>= 1`` with ``positive``); empty only with ``allow_empty``."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or (positive and v < 1):
            raise ValueError(f"{name} must be {'positive ' if positive else ''}ints, got {list(values)!r}")
        out.append(int(v))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} repeat a value: {list(values)!r}")
    return tuple(out)
