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

import math
import re
import string
from collections.abc import Sequence
from typing import Literal

from vh_lens.data.sample import Sample

AnswerKind = Literal["choice", "yes_no", "number", "open"]

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
"""LLaVA-1.5's instruction for multiple choice (MMBench, SEED-Bench, ScienceQA scripts)."""

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
"""LLaVA-1.5's instruction for short answers (VQAv2, GQA, POPE, MME scripts)."""

COUNT_RANGE: tuple[int, int] = (1, 7)
"""Default answer range of counting samples: PointQA / LookTwiceQA counts are 1 to 7."""

_LETTERS = string.ascii_uppercase
_YES = frozenset({"yes", "yeah", "yep", "yup"})
_NO = frozenset({"no", "not", "nope", "none", "nothing", "never"})
# Words after which a capital "A" / "I" is still read as an option letter, not an article
# or pronoun: "A or B", "A is correct".
_LETTER_FOLLOWERS = frozenset(
    {"or", "and", "nor", "is", "was", "are", "seems", "appears", "looks", "would", "should", "could", "might"}
)
_NUMBER_WORDS = {
    "zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_TENS = frozenset({"twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"})
_UNITS = frozenset({"one", "two", "three", "four", "five", "six", "seven", "eight", "nine"})

# A whole answer that is one letter, with optional brackets, quotes, markdown and punctuation:
# "B", "b", "(B)", "B.", "[C]", "**D**", "'A'".
_LONE_LETTER = re.compile(r"[\s(\[{*\"'`]*([A-Za-z])[\s)\]}.,:;!*\"'`]*")
# An option label opening the answer: "B. two dogs", "(C) red", "a) yes", "D: none".
_LEADING_LABEL = re.compile(r"\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[.):])(?:\s|$)")
# Explicit mentions: "the answer is C", "Answer: (b)", "option D", "choice is B".
_EXPLICIT = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*"
    r"[(\[]?([A-Za-z])(?![A-Za-z0-9'\u2019])[)\]]?",
    re.IGNORECASE,
)
# A letter in parentheses anywhere, not glued to a word: "... so (B)".
_PAREN_LETTER = re.compile(r"(?<![\w(])\(([A-Za-z])\)")
# A standalone capital letter: not part of a word, a number, a contraction or an abbreviation.
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'\u2019\-.])([A-Z])(?![A-Za-z0-9'\u2019\-]|\.[A-Za-z])")
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\w|\.\d)")


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
        if _parse_plain_number(sample.answer) is not None:
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


def option_letters(n_choices: int) -> tuple[str, ...]:
    """The option letters ``("A", "B", ...)`` of ``n_choices`` options (1 to 26)."""
    _check_n_choices(n_choices)
    return tuple(_LETTERS[:n_choices])


def parse_letter(text: str, n_choices: int, *, choices: Sequence[str] | None = None) -> str | None:
    """The option letter a generated answer gives, or ``None``.

    Read in order of confidence:

    1. The whole answer is one letter, any case, with brackets or punctuation: ``"B"``,
       ``"b"``, ``"(B)"``, ``"B."``.
    2. Explicit mentions: an opening label (``"B. two dogs"``, ``"(c) red"``), ``"the
       answer is C"``, ``"Answer: (b)"``, ``"option D"``, a letter in parentheses. If these
       name one letter it is the answer (``None`` if out of range); two letters: ``None``.
    3. Otherwise weaker evidence: standalone capital letters in range (a capital ``A``/``I``
       followed by a word is read as the article/pronoun, as in "A dog is ..."), and, when
       ``choices`` are given, the options whose text the answer contains as whole words (an
       option contained in a longer matching option is dropped). One letter in all: it;
       none or several: ``None``.

    Args:
        text: The generated text.
        n_choices: Number of options; letters beyond it are out of range.
        choices: The options' texts, to read answers that quote an option instead of its letter.

    Returns:
        An uppercase letter, or ``None``.

    Example:
        >>> parse_letter("The answer is (C).", 4), parse_letter("A or B", 4), parse_letter("E", 4)
        ('C', None, None)
    """
    valid = option_letters(n_choices)
    if choices is not None and len(choices) != n_choices:
        raise ValueError(f"got {len(choices)} choices for n_choices={n_choices}")
    text = _clean(text)
    if not text:
        return None
    if (lone := _LONE_LETTER.fullmatch(text)) is not None:
        letter = lone.group(1).upper()
        return letter if letter in valid else None

    strong = _strong_letters(text)
    if strong:
        if len(strong) > 1:
            return None
        letter = strong.pop()
        return letter if letter in valid else None

    weak = {m.group(1) for m in _STANDALONE.finditer(text) if m.group(1) in valid and not _is_word_use(text, m)}
    if choices is not None:
        weak |= {valid[i] for i in _matching_choices(text, choices)}
    return weak.pop() if len(weak) == 1 else None


def parse_yes_no(text: str) -> Literal["yes", "no"] | None:
    """``"yes"``, ``"no"`` or ``None`` for a generated answer to a yes/no question.

    The first word decides when it is yes/no (``"Yes, there is"`` -> yes, ``"no."`` -> no,
    ``"No, there is a cat"`` -> no). Otherwise the answer is yes if it contains a yes-word
    (yes, yeah, yep, yup) and no negation, no if it contains a negation (no, not, none,
    nothing, never, nope, or a word ending in "n't") and no yes-word, ``None`` if neither or
    both. LLaVA's ``eval_pope.py`` instead reads any answer without "no"/"not" as yes; we
    return ``None`` for answers such as "There is a dog." that do not say yes or no.

    Example:
        >>> parse_yes_no("Yes, there is a dog."), parse_yes_no("There isn't."), parse_yes_no("A dog.")
        ('yes', 'no', None)
    """
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", _clean(text).lower())
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    has_yes = any(w in _YES for w in words)
    has_no = any(w in _NO or w.endswith("n't") for w in words)
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


def parse_number(text: str, lo: float | None = None, hi: float | None = None) -> int | float | None:
    """The number a generated answer gives, or ``None``.

    Reads digits (``"3"``, ``"There are 3 dogs"``, ``"1,000"``, ``"2.5"``) and English number
    words up to ninety-nine (``"three"``, ``"twenty-one"``, ``"twenty one"``, ``"zero"``,
    ``"none"`` = 0). The same number mentioned twice is fine (``"3. There are three."``);
    two different numbers (``"3 or 4"``) give ``None``, as does a number outside
    ``[lo, hi]``.

    Returns:
        An ``int`` for whole numbers, else a ``float``; ``None`` if there is no single number.

    Example:
        >>> parse_number("There are three dogs."), parse_number("3 or 4"), parse_number("9", lo=1, hi=7)
        (3, None, None)
    """
    values = _numbers_in(_clean(text))
    if len(values) != 1:
        return None
    value = values.pop()
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None
    return int(value) if float(value).is_integer() else value


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse spaces (VQA style).

    Example:
        >>> normalize_answer("  A red Car. ")
        'red car'
    """
    text = text.lower().replace("\u2019", "'")
    text = text.translate(str.maketrans({c: " " for c in string.punctuation if c != "'"})).replace("'", "")
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


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
        value = _parse_plain_number(sample.answer)
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
    lone = _LONE_LETTER.fullmatch(sample.answer.strip())
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
            value = _parse_plain_number(sample.answer)
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


def _check_n_choices(n_choices: int) -> None:
    if not isinstance(n_choices, int) or not 1 <= n_choices <= len(_LETTERS):
        raise ValueError(f"n_choices must be an int in 1..{len(_LETTERS)}, got {n_choices!r}")


def _clean(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected the generated text as str, got {type(text).__name__}")
    return text.replace("\u2019", "'").replace("</s>", " ").strip()


def _strong_letters(text: str) -> set[str]:
    letters: set[str] = set()
    if (label := _LEADING_LABEL.match(text)) is not None:
        letters.add(next(g for g in label.groups() if g).upper())
    for match in _EXPLICIT.finditer(text):
        letter = match.group(1)
        rest = text[match.end() :].lstrip()
        # "the answer is a dog": a lowercase letter counts only when nothing but punctuation follows.
        if letter.islower() and rest and rest[0] not in ".,;:!)]":
            continue
        letters.add(letter.upper())
    letters |= {m.group(1).upper() for m in _PAREN_LETTER.finditer(text)}
    return letters


def _is_word_use(text: str, match: re.Match[str]) -> bool:
    """A capital A or I that is the article or the pronoun ("A dog ...", "I think ...")."""
    if match.group(1) not in ("A", "I"):
        return False
    following = re.match(r"\s+([A-Za-z']+)", text[match.end() :])
    if following is None:
        return False
    word = following.group(1)
    return (word[0].islower() or word.startswith("'")) and word.lower() not in _LETTER_FOLLOWERS


def _matching_choices(text: str, choices: Sequence[str]) -> list[int]:
    norm_text = f" {normalize_answer(text)} "
    norms = [normalize_answer(c) for c in choices]
    exact = [i for i, n in enumerate(norms) if n and n == norm_text.strip()]
    if exact:
        return exact
    found = [i for i, n in enumerate(norms) if n and f" {n} " in norm_text]
    # Keep only the longest of nested matches ("red" inside "dark red").
    return [i for i in found if not any(j != i and norms[i] != norms[j] and norms[i] in norms[j] for j in found)]


def _numbers_in(text: str) -> set[float]:
    values: set[float] = set()
    for match in _NUMBER.finditer(text):
        values.add(float(match.group(1).replace(",", "") + (match.group(2) or "")))
    words = re.findall(r"[a-z]+", re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower()))
    i = 0
    while i < len(words):
        word = words[i]
        if word in _NUMBER_WORDS:
            value = _NUMBER_WORDS[word]
            if word in _TENS and i + 1 < len(words) and words[i + 1] in _UNITS:
                value += _NUMBER_WORDS[words[i + 1]]
                i += 1
            values.add(float(value))
        i += 1
    return values


def _parse_plain_number(text: str) -> float | None:
    """A gold answer that is exactly a number ("3", " 2.5 ", "three"), else ``None``."""
    stripped = text.strip().rstrip(".").strip().lower()
    if stripped in _NUMBER_WORDS and stripped != "none":
        return float(_NUMBER_WORDS[stripped])
    try:
        value = float(stripped.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
