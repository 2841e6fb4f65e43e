"""How benchmark questions are asked and how a model's answers are read.

Three pieces, all pure string work (no model, no I/O):

- :func:`format_question` writes a :class:`~vh_lens.data.sample.Sample` as the user turn of
  LLaVA's evaluation prompts (options as ``"A. option"`` lines, then an instruction).
- :func:`parse_letter`, :func:`parse_yes_no`, :func:`parse_number` and the dispatcher
  :func:`parse_answer` read a generated answer; :func:`is_correct` scores it.
- :func:`candidate_strings` and :func:`gold_index` list the answers compared when a model is
  scored by the logits of the first answer token instead of by generation.

A sample's kind (:func:`answer_kind`) decides all three: ``"choice"`` when it has
``choices``; ``"yes_no"`` when its metadata says ``task="yes_no"`` or its gold answer is
yes or no; ``"number"`` when its metadata says ``task="count"`` or its gold answer is a
number; ``"open"`` otherwise. For multiple choice the gold answer may be the option letter
(what the readers in :mod:`vh_lens.data.benchmarks` store) or the option's text.

The parsers are conservative: text that gives no answer, or gives two different ones
("A or B", "3 or 4", "maybe, I can't say yes"), reads as ``None`` and is scored wrong.
"""

from __future__ import annotations

from typing import Literal

from vh_lens.data.sample import Sample
from vh_lens.evaluation.parsing import (
    LONE_LETTER,
    normalize_answer,
    option_letters,
    parse_letter,
    parse_number,
    parse_plain_number,
    parse_yes_no,
)

AnswerKind = Literal["choice", "yes_no", "number", "open"]

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
"""LLaVA-1.5's instruction for multiple choice (MMBench, SEED-Bench, ScienceQA scripts)."""

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
"""LLaVA-1.5's instruction for short answers (VQAv2, GQA, POPE, MME scripts)."""

COUNT_RANGE: tuple[int, int] = (1, 7)
"""Default answer range of counting samples: PointQA / LookTwiceQA counts are 1 to 7."""


def answer_kind(sample: Sample) -> AnswerKind:
    """Which parser reads answers to ``sample``.

    ``"choice"`` if the sample has choices; ``"yes_no"`` if ``metadata["task"] == "yes_no"``
    or the gold answer is yes/no; ``"number"`` if ``metadata["task"] == "count"`` or the
    gold answer is a number; else ``"open"``.

    Example:
        >>> answer_kind(Sample(None, "Is it red?", answer="Yes"))
        'yes_no'
    """
    if sample.choices is not None:
        return "choice"
    task = sample.metadata.get("task")
    if task == "yes_no":
        return "yes_no"
    if task == "count":
        return "number"
    if sample.answer is not None:
        gold = normalize_answer(sample.answer)
        if gold in ("yes", "no"):
            return "yes_no"
        if parse_plain_number(sample.answer) is not None:
            return "number"
    return "open"


def format_question(
    sample: Sample,
    *,
    mc_suffix: str | None = MC_SUFFIX,
    yes_no_suffix: str | None = SHORT_ANSWER_SUFFIX,
    open_suffix: str | None = None,
) -> str:
    """The user turn for ``sample`` in LLaVA's evaluation format (no chat template, no image token).

    Multiple choice follows LLaVA's ``model_vqa_mmbench.py`` and its documented
    "option-only" format (``docs/Evaluation.md``), used for MMBench and SEED-Bench::

        <question>
        A. <option 1>
        B. <option 2>
        Answer with the option's letter from the given choices directly.

    Yes/no questions (POPE) get LLaVA's short-answer format: ``<question>\\n`` plus
    ``"Answer the question using a single word or phrase."`` (``llava_pope_test.jsonl``).
    Other questions (counting, open) get ``open_suffix``, none by default. A suffix the
    question already ends with is not added twice; ``None`` or ``""`` means no suffix.

    LLaVA's own Q-Bench script words it differently (``"<question>\\nChoose between one of
    the options as follows:\\nA. ...``", no final instruction); we use the MMBench format for
    all multiple choice so that benchmarks are comparable.

    Args:
        sample: The sample; MMBench's hint is already part of ``sample.question``.
        mc_suffix: Instruction after the options of a multiple-choice question.
        yes_no_suffix: Instruction after a yes/no question.
        open_suffix: Instruction after any other question.

    Returns:
        The text, lines joined by ``"\\n"``.

    Example:
        >>> format_question(Sample(None, "What colour?", answer="A", choices=("red", "blue")))
        "What colour?\\nA. red\\nB. blue\\nAnswer with the option's letter from the given choices directly."
    """
    kind = answer_kind(sample)
    lines = [sample.question.rstrip()]
    if kind == "choice":
        assert sample.choices is not None
        lines += [f"{letter}. {option}" for letter, option in zip(option_letters(len(sample.choices)), sample.choices)]
        suffix = mc_suffix
    elif kind == "yes_no":
        suffix = yes_no_suffix
    else:
        suffix = open_suffix
    if suffix and not lines[-1].endswith(suffix.strip()):
        lines.append(suffix.strip())
    return "\n".join(lines)


def parse_answer(text: str, sample: Sample) -> str | None:
    """Read a generated answer to ``sample`` in the canonical form of its kind.

    Returns an option letter (``"B"``) for multiple choice (the options' texts are used too,
    see :func:`parse_letter`), ``"yes"``/``"no"`` for yes/no, the number as a string
    (``"3"``, ``"2.5"``) for numeric answers, and :func:`normalize_answer` of the text for open
    answers; ``None`` when the text gives no (single) answer.

    Example:
        >>> parse_answer("There are 3 dogs.", Sample(None, "How many dogs?", answer="3"))
        '3'
    """
    kind = answer_kind(sample)
    if kind == "choice":
        assert sample.choices is not None
        return parse_letter(text, len(sample.choices), choices=sample.choices)
    if kind == "yes_no":
        return parse_yes_no(text)
    if kind == "number":
        value = parse_number(text)
        return None if value is None else _format_number(value)
    normalized = normalize_answer(text)
    return normalized or None


def gold_answer(sample: Sample) -> str:
    """The gold answer in the canonical form :func:`parse_answer` returns.

    Raises:
        ValueError: the sample has no gold answer, or it does not fit the sample's kind.
    """
    if sample.answer is None:
        raise ValueError(f"sample has no gold answer (question {sample.question[:60]!r})")
    kind = answer_kind(sample)
    if kind == "choice":
        return answer_letter(sample)
    if kind == "yes_no":
        gold = normalize_answer(sample.answer)
        if gold not in ("yes", "no"):
            raise ValueError(f"yes/no sample has gold answer {sample.answer!r}, expected yes or no")
        return gold
    if kind == "number":
        value = parse_plain_number(sample.answer)
        if value is None:
            raise ValueError(f"counting sample has gold answer {sample.answer!r}, expected a number")
        return _format_number(value)
    return normalize_answer(sample.answer)


def is_correct(prediction_text: str, sample: Sample) -> bool:
    """Whether a generated answer is right: ``parse_answer(text) == gold_answer(sample)``.

    An answer that cannot be read (``None``) is wrong.

    Raises:
        ValueError: the sample has no gold answer.

    Example:
        >>> is_correct("(B)", Sample(None, "Which?", answer="B", choices=("x", "y")))
        True
    """
    gold = gold_answer(sample)
    predicted = parse_answer(prediction_text, sample)
    return predicted is not None and predicted == gold


def answer_letter(sample: Sample) -> str:
    """The gold option letter of a multiple-choice sample.

    ``sample.answer`` may be the letter (``"B"``, ``"b"``, ``"(B)"``, ``"B."``; a letter wins
    over an option whose text is that letter) or the text of exactly one option.

    Raises:
        ValueError: no choices, no gold answer, a letter out of range, or a text that matches
            no option or several.

    Example:
        >>> answer_letter(Sample(None, "Which?", answer="blue", choices=("red", "blue")))
        'B'
    """
    if sample.choices is None:
        raise ValueError("answer_letter needs a multiple-choice sample (sample.choices is None)")
    if sample.answer is None:
        raise ValueError(f"sample has no gold answer (question {sample.question[:60]!r})")
    letters = option_letters(len(sample.choices))
    lone = LONE_LETTER.fullmatch(sample.answer.strip())
    if lone is not None and lone.group(1).upper() in letters:
        return lone.group(1).upper()
    matches = [i for i, choice in enumerate(sample.choices) if choice.strip() == sample.answer.strip()]
    if not matches:
        norm = normalize_answer(sample.answer)
        matches = [i for i, choice in enumerate(sample.choices) if normalize_answer(choice) == norm]
    if len(matches) == 1:
        return letters[matches[0]]
    if lone is not None:
        raise ValueError(f"gold letter {sample.answer!r} is out of range for {len(sample.choices)} choices")
    raise ValueError(
        f"gold answer {sample.answer!r} matches {len(matches)} of the choices {sample.choices!r}; expected exactly one"
    )


def candidate_strings(sample: Sample) -> list[str]:
    """The answers compared when scoring by the logits of the first answer token.

    Letters ``["A", "B", ...]`` for multiple choice, ``["Yes", "No"]`` for yes/no, and the
    digits of ``metadata["answer_range"]`` (default :data:`COUNT_RANGE`, 1 to 7:
    ``["1", ..., "7"]``) for numeric answers. The strings carry no leading space: how they
    are tokenized after the prompt (e.g. SentencePiece's ``"▁Yes"``) is the scorer's job.

    Raises:
        ValueError: for open answers, which have no fixed candidate list, and for a numeric
            gold answer outside the range.

    Example:
        >>> candidate_strings(Sample(None, "Is it red?", answer="no"))
        ['Yes', 'No']
    """
    kind = answer_kind(sample)
    if kind == "choice":
        assert sample.choices is not None
        return list(option_letters(len(sample.choices)))
    if kind == "yes_no":
        return ["Yes", "No"]
    if kind == "number":
        lo, hi = _answer_range(sample)
        if sample.answer is not None:
            value = parse_plain_number(sample.answer)
            if value is None or not (lo <= value <= hi) or not float(value).is_integer():
                raise ValueError(f"numeric gold answer {sample.answer!r} is not an integer in {lo}..{hi}")
        return [str(v) for v in range(lo, hi + 1)]
    raise ValueError("open-answer samples have no fixed candidate list to score by logits")


def gold_index(sample: Sample) -> int:
    """Index of the gold answer in :func:`candidate_strings` (``sample``)."""
    candidates = candidate_strings(sample)
    gold = gold_answer(sample)
    if answer_kind(sample) == "yes_no":
        return 0 if gold == "yes" else 1
    return candidates.index(gold)


# ---------------------------------------------------------------------------------------------


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _answer_range(sample: Sample) -> tuple[int, int]:
    answer_range = sample.metadata.get("answer_range", COUNT_RANGE)
    try:
        lo, hi = (int(v) for v in answer_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata['answer_range'] must be (lo, hi) integers, got {answer_range!r}") from err
    if hi < lo:
        raise ValueError(f"metadata['answer_range'] {answer_range!r} is empty")
    return lo, hi
