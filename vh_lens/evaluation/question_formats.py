"""Question formats: how a checkpoint was taught to read a :class:`~vh_lens.data.sample.Sample`.

A :class:`~vh_lens.LlavaLens` knows its format (``model.question_format``, recognised by
:func:`recognise_question_format` when it is loaded), so callers no longer pass a
``format_question`` function: :meth:`vh_lens.LlavaLens.prepare_samples` and every experiment
built on the engine default to the model's.

- ``"llava"``: LLaVA's evaluation prompts (:func:`vh_lens.evaluation.answers.format_question`).
- ``"toy"``: the bundled toy model's training format (:func:`vh_lens.toy.format_question`,
  today the same text as ``"llava"``, kept apart so the two can diverge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vh_lens.data.sample import Sample

__all__ = ["CONFIG_KEY", "QUESTION_FORMATS", "question_formatter", "recognise_question_format"]

QUESTION_FORMATS: tuple[str, ...] = ("llava", "toy")
"""The known question formats."""

CONFIG_KEY = "vh_lens_question_format"
"""Key of a Hugging Face config that names the checkpoint's question format (saved with it)."""


def question_formatter(name: str) -> Callable[[Sample], str]:
    """The function that writes a sample as the user turn in format ``name``.

    Raises:
        ValueError: an unknown format.
    """
    if name == "llava":
        from vh_lens.evaluation.answers import format_question

        return format_question
    if name == "toy":
        from vh_lens.toy import format_question as toy_format

        return toy_format
    raise ValueError(f"question_format must be one of {QUESTION_FORMATS}, got {name!r}")


def recognise_question_format(config: Any, processor: Any) -> str:
    """The question format of a checkpoint.

    The config's ``vh_lens_question_format`` when it names one (saved with the checkpoint);
    else ``"toy"`` for a processor with the bundled toy's chat template; else ``"llava"``.

    Raises:
        ValueError: the config names an unknown format.
    """
    saved = getattr(config, CONFIG_KEY, None)
    if saved is not None:
        if saved not in QUESTION_FORMATS:
            raise ValueError(f"config.{CONFIG_KEY} must be one of {QUESTION_FORMATS}, got {saved!r}")
        return str(saved)
    from vh_lens.toy import CHAT_TEMPLATE

    template = getattr(processor, "chat_template", None)
    if template is None:
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    return "toy" if template == CHAT_TEMPLATE else "llava"
