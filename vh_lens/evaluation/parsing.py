"""Reading a generated answer: option letters, yes/no and numbers, conservatively.

:mod:`vh_lens.evaluation.answers` re-exports every public name here and dispatches on a
sample's kind (:func:`~vh_lens.evaluation.answers.parse_answer`). Text that gives no answer,
or two different ones, reads as ``None``.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Literal

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
LONE_LETTER = re.compile(r"[\s(\[{*\"'`]*([A-Za-z])[\s)\]}.,:;!*\"'`]*")
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
    if (lone := LONE_LETTER.fullmatch(text)) is not None:
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


def parse_plain_number(text: str) -> float | None:
    """A gold answer that is exactly a number ("3", " 2.5 ", "three"), else ``None``."""
    stripped = text.strip().rstrip(".").strip().lower()
    if stripped in _NUMBER_WORDS and stripped != "none":
        return float(_NUMBER_WORDS[stripped])
    try:
        value = float(stripped.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None
