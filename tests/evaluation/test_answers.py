"""Prompt formatting and answer parsing (vh_lens.evaluation.answers)."""

from __future__ import annotations

import pytest

from vh_lens.data.sample import Sample
from vh_lens.evaluation.answers import (
    COUNT_RANGE,
    MC_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    answer_kind,
    answer_letter,
    candidate_strings,
    format_question,
    gold_answer,
    gold_index,
    is_correct,
    normalize_answer,
    option_letters,
    parse_answer,
    parse_letter,
    parse_number,
    parse_yes_no,
)

MC = Sample(None, "How many dogs?", answer="B", choices=("One", "Two", "Three", "Four"))
YES_NO = Sample(None, "Is there a dog in the image?", answer="yes", metadata={"task": "yes_no"})
COUNT = Sample(None, "How many dogs are there?", answer="3", metadata={"task": "count", "answer_range": (1, 7)})
OPEN = Sample(None, "What is the man holding?", answer="A red umbrella.")


# ------------------------------------------------------------------------------ parse_letter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        (" c\n", "C"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[D]", "D"),
        ("**A**", "A"),
        ("'C'", "C"),
        ("B) Two", "B"),
        ("B. Two dogs", "B"),
        ("(c) three", "C"),
        ("a. one", "A"),
        ("The answer is C", "C"),
        ("The answer is C.", "C"),
        ("The correct answer is (D).", "D"),
        ("Answer: B", "B"),
        ("answer: (b)", "B"),
        ("Option D is correct.", "D"),
        ("I would choose option a.", "A"),
        ("The best choice is B", "B"),
        ("It is A.", "A"),
        ("A is correct", "A"),
        ("I think it is B", "B"),
        ("B</s>", "B"),
        ("Looking at the image, (B) fits best.", "B"),
    ],
)
def test_parse_letter_reads_the_letter(text: str, expected: str) -> None:
    assert parse_letter(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I don't know.",
        "There are two dogs.",  # no letter and no choices given
        "A dog is lying on the grass.",  # article, not an option
        "the answer is a dog",  # lowercase article after "answer is"
        "E",  # out of range
        "e.",
        "(F)",
        "The answer is E",
        "A or B",
        "B or C.",
        "A and B",
        "Either (A) or (C).",
        "B. No wait, the answer is C",
        "Z",
        "answers",
    ],
)
def test_parse_letter_returns_none(text: str) -> None:
    assert parse_letter(text, 4) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "B"),
        ("two.", "B"),
        ("There are two dogs.", "B"),
        ("I see three of them", "C"),
        ("Two or three", None),  # two options quoted
        ("Five", None),
        ("A dog: two", "B"),  # the article is ignored, the option text counts
    ],
)
def test_parse_letter_matches_option_text(text: str, expected: str | None) -> None:
    assert parse_letter(text, 4, choices=MC.choices) == expected


def test_parse_letter_prefers_longest_nested_option() -> None:
    choices = ("red", "dark red", "blue")
    assert parse_letter("It is dark red.", 3, choices=choices) == "B"
    assert parse_letter("red", 3, choices=choices) == "A"
    assert parse_letter("red and blue", 3, choices=choices) is None


def test_parse_letter_option_text_conflicting_with_letter() -> None:
    # A weak standalone letter and a quoted option disagree: no answer.
    assert parse_letter("C, two", 4, choices=MC.choices) is None
    # A strong letter wins over the quoted text of another option.
    assert parse_letter("The answer is C, two", 4, choices=MC.choices) == "C"


def test_parse_letter_respects_n_choices() -> None:
    assert parse_letter("C", 2) is None
    assert parse_letter("B", 2) == "B"
    assert parse_letter("G", 7) == "G"
    with pytest.raises(ValueError, match="n_choices"):
        parse_letter("A", 0)
    with pytest.raises(ValueError, match="n_choices"):
        parse_letter("A", 27)
    with pytest.raises(ValueError, match="choices"):
        parse_letter("A", 3, choices=("x", "y"))


def test_parse_letter_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        parse_letter(None, 4)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ parse_yes_no


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("Yes, there is", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("yeah", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("No, there is a cat.", "no"),
        ("NO", "no"),
        ("There is no dog in the image.", "no"),
        ("There isn't a dog.", "no"),
        ("There isn\u2019t a dog.", "no"),
        ("The dog is not visible.", "no"),
        ("I would say yes.", "yes"),
        ("None.", "no"),
        ("", None),
        ("There is a dog.", None),
        ("Maybe.", None),
        ("I would say yes, but it is not clear.", None),
        ("Yesterday", None),
        ("Nobody knows", None),
    ],
)
def test_parse_yes_no(text: str, expected: str | None) -> None:
    assert parse_yes_no(text) == expected


# ------------------------------------------------------------------------------ parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("3.", 3),
        (" 7\n", 7),
        ("There are 3 dogs.", 3),
        ("three", 3),
        ("Three.", 3),
        ("There are three dogs in the picture.", 3),
        ("3. There are three dogs.", 3),
        ("twenty-one", 21),
        ("twenty one", 21),
        ("twelve", 12),
        ("zero", 0),
        ("There are none.", 0),
        ("1,000", 1000),
        ("2.5", 2.5),
        ("0.5 litres", 0.5),
        ("3 or 4", None),
        ("three or four", None),
        ("2 cats and 3 dogs", None),
        ("no number here", None),
        ("", None),
        ("someone", None),
        ("the 3rd one", 1),  # "3rd" is an ordinal, not a count; "one" is a number word
        ("COCO_val2014_000000001.jpg", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    value = parse_number(text)
    assert value == expected
    if expected is not None:
        assert type(value) is type(expected)


@pytest.mark.parametrize(("text", "expected"), [("5", 5), ("9", None), ("0", None), ("seven", 7), ("eight", None)])
def test_parse_number_range(text: str, expected: int | None) -> None:
    assert parse_number(text, lo=1, hi=7) == expected


# ------------------------------------------------------------------------------ kinds, gold


@pytest.mark.parametrize(
    ("sample", "kind"),
    [
        (MC, "choice"),
        (YES_NO, "yes_no"),
        (Sample(None, "Is it?", answer="No"), "yes_no"),
        (Sample(None, "Is it?", metadata={"task": "yes_no"}), "yes_no"),
        (COUNT, "number"),
        (Sample(None, "How many?", answer="4"), "number"),
        (Sample(None, "How many?", metadata={"task": "count"}), "number"),
        (OPEN, "open"),
        (Sample(None, "What?"), "open"),
    ],
)
def test_answer_kind(sample: Sample, kind: str) -> None:
    assert answer_kind(sample) == kind


@pytest.mark.parametrize(
    ("answer", "letter"),
    [("B", "B"), ("b", "B"), ("(C)", "C"), ("D.", "D"), ("Two", "B"), ("  three ", "C"), ("four.", "D")],
)
def test_answer_letter(answer: str, letter: str) -> None:
    sample = Sample(None, "How many?", answer=answer, choices=MC.choices)
    assert answer_letter(sample) == letter


def test_answer_letter_prefers_letter_over_option_text() -> None:
    assert answer_letter(Sample(None, "Which?", answer="A", choices=("B", "A"))) == "A"


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        (Sample(None, "Q?", answer="E", choices=("a", "b")), "out of range"),
        (Sample(None, "Q?", answer="purple", choices=("red", "blue")), "matches 0"),
        (Sample(None, "Q?", answer="Red", choices=("red", "red.")), "matches 2"),
        (Sample(None, "Q?", choices=("red", "blue")), "no gold"),
        (Sample(None, "Q?", answer="A"), "multiple-choice"),
    ],
)
def test_answer_letter_errors(sample: Sample, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        answer_letter(sample)


def test_gold_answer_canonical_forms() -> None:
    assert gold_answer(MC) == "B"
    assert gold_answer(Sample(None, "Is it?", answer=" Yes. ")) == "yes"
    assert gold_answer(Sample(None, "How many?", answer="3.0")) == "3"
    assert gold_answer(Sample(None, "How many?", answer="three")) == "3"
    assert gold_answer(OPEN) == "red umbrella"
    with pytest.raises(ValueError, match="expected yes or no"):
        gold_answer(Sample(None, "Is it?", answer="maybe", metadata={"task": "yes_no"}))
    with pytest.raises(ValueError, match="expected a number"):
        gold_answer(Sample(None, "How many?", answer="lots", metadata={"task": "count"}))
    with pytest.raises(ValueError, match="no gold"):
        gold_answer(Sample(None, "How many?"))


# ------------------------------------------------------------------------------ parse / score


@pytest.mark.parametrize(
    ("text", "sample", "parsed", "correct"),
    [
        ("B", MC, "B", True),
        ("(b)", MC, "B", True),
        ("The answer is C", MC, "C", False),
        ("Two", MC, "B", True),
        ("A or B", MC, None, False),
        ("E", MC, None, False),
        ("Yes, there is", YES_NO, "yes", True),
        ("no.", YES_NO, "no", False),
        ("There is a dog.", YES_NO, None, False),
        ("There are 3 dogs", COUNT, "3", True),
        ("three", COUNT, "3", True),
        ("Four.", COUNT, "4", False),
        ("3 or 4", COUNT, None, False),
        ("a red umbrella", OPEN, "red umbrella", True),
        ("Red umbrella!", OPEN, "red umbrella", True),
        ("umbrella", OPEN, "umbrella", False),
        ("...", OPEN, None, False),
    ],
)
def test_parse_answer_and_is_correct(text: str, sample: Sample, parsed: str | None, correct: bool) -> None:
    assert parse_answer(text, sample) == parsed
    assert is_correct(text, sample) is correct


def test_is_correct_with_gold_option_text_and_float_count() -> None:
    by_text = Sample(None, "How many?", answer="Three", choices=MC.choices)
    assert is_correct("C", by_text)
    assert is_correct("There are three.", by_text)
    assert not is_correct("B", by_text)
    assert is_correct("2.5 litres", Sample(None, "How much?", answer="2.50"))


def test_is_correct_needs_gold() -> None:
    with pytest.raises(ValueError, match="no gold"):
        is_correct("B", Sample(None, "Which?", choices=("x", "y")))


def test_normalize_answer() -> None:
    assert normalize_answer("  The Red, Car! ") == "red car"
    assert normalize_answer("It\u2019s an apple.") == "its apple"
    assert normalize_answer("...") == ""


# ------------------------------------------------------------------------------ candidates


def test_candidate_strings_and_gold_index() -> None:
    assert candidate_strings(MC) == ["A", "B", "C", "D"]
    assert gold_index(MC) == 1
    assert candidate_strings(YES_NO) == ["Yes", "No"]
    assert gold_index(YES_NO) == 0
    assert gold_index(Sample(None, "Is it?", answer="No")) == 1
    assert candidate_strings(COUNT) == ["1", "2", "3", "4", "5", "6", "7"]
    assert gold_index(COUNT) == 2
    assert COUNT_RANGE == (1, 7)
    assert candidate_strings(Sample(None, "How many?", answer="5")) == [str(i) for i in range(1, 8)]
    wide = Sample(None, "How many?", answer="0", metadata={"task": "count", "answer_range": (0, 9)})
    assert candidate_strings(wide) == [str(i) for i in range(10)]
    assert gold_index(wide) == 0


def test_candidate_strings_errors() -> None:
    with pytest.raises(ValueError, match="open-answer"):
        candidate_strings(OPEN)
    with pytest.raises(ValueError, match="not an integer in 1..7"):
        candidate_strings(Sample(None, "How many?", answer="9"))
    with pytest.raises(ValueError, match="answer_range"):
        candidate_strings(Sample(None, "How many?", answer="2", metadata={"task": "count", "answer_range": "x"}))


def test_option_letters() -> None:
    assert option_letters(3) == ("A", "B", "C")
    assert len(option_letters(26)) == 26


# ------------------------------------------------------------------------------ format_question


def test_format_question_multiple_choice_llava_format() -> None:
    expected = "How many dogs?\nA. One\nB. Two\nC. Three\nD. Four\n" + MC_SUFFIX
    assert format_question(MC) == expected
    assert MC_SUFFIX == "Answer with the option's letter from the given choices directly."
    assert format_question(MC, mc_suffix=None) == "How many dogs?\nA. One\nB. Two\nC. Three\nD. Four"
    assert format_question(MC, mc_suffix="Pick one.").endswith("D. Four\nPick one.")


def test_format_question_keeps_multiline_hint_before_options() -> None:
    sample = Sample(None, "Hint line 1\nHint line 2\nWhich one?", answer="A", choices=("x", "y"))
    assert format_question(sample, mc_suffix=None) == "Hint line 1\nHint line 2\nWhich one?\nA. x\nB. y"


def test_format_question_yes_no_and_open() -> None:
    assert SHORT_ANSWER_SUFFIX == "Answer the question using a single word or phrase."
    assert format_question(YES_NO) == "Is there a dog in the image?\n" + SHORT_ANSWER_SUFFIX
    assert format_question(YES_NO, yes_no_suffix=None) == "Is there a dog in the image?"
    assert format_question(COUNT) == "How many dogs are there?"
    assert format_question(COUNT, open_suffix=SHORT_ANSWER_SUFFIX) == "How many dogs are there?\n" + SHORT_ANSWER_SUFFIX
    assert format_question(OPEN, open_suffix="") == "What is the man holding?"


def test_format_question_does_not_repeat_a_present_suffix() -> None:
    sample = Sample(None, "Is there a dog?\n" + SHORT_ANSWER_SUFFIX, answer="no")
    assert format_question(sample) == "Is there a dog?\n" + SHORT_ANSWER_SUFFIX
