"""The synthetic shapes task: determinism, ground truth read back from the pixels, balance."""

from __future__ import annotations

import numpy as np
import pytest

from vh_lens.data.sample import Sample
from vh_lens.data.shapes import (
    BACKGROUND,
    BOX_COLOR,
    COLORS,
    COUNT_KINDS,
    KINDS,
    QUESTION_TYPE,
    SHAPE_KINDS,
    count_class,
    shapes,
)

N = 120  # 20 of each kind


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return shapes(N, seed=3)


def _pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.load_image())


def _cell_color(pixels: np.ndarray, box: tuple[float, ...]) -> str | None:
    """The shape colour read from the pixels inside a cell (its border excluded), or None if empty."""
    left, top, right, bottom = (int(v) for v in box)
    inner = pixels[top + 1 : bottom - 1, left + 1 : right - 1].reshape(-1, 3)
    found = {name for name, rgb in COLORS.items() if (inner == np.array(rgb)).all(axis=1).any()}
    assert len(found) <= 1, f"two colours in one cell: {found}"
    return found.pop() if found else None


def test_same_seed_same_samples_and_pixels():
    a, b = shapes(12, seed=7), shapes(12, seed=7)
    for x, y in zip(a, b, strict=True):
        assert (x.question, x.answer, x.choices, x.box) == (y.question, y.answer, y.choices, y.box)
        assert x.metadata == y.metadata
        assert x.image.tobytes() == y.image.tobytes()
    c = shapes(12, seed=8)
    assert any(x.image.tobytes() != z.image.tobytes() for x, z in zip(a, c, strict=True))


def test_start_continues_the_stream():
    whole = shapes(10, seed=2)
    tail = shapes(4, seed=2, start=6)
    assert [s.metadata["id"] for s in tail] == [s.metadata["id"] for s in whole[6:]]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(tail, whole[6:], strict=True))


def test_kinds_cycle_and_question_types(samples):
    for i, s in enumerate(samples):
        kind = KINDS[i % len(KINDS)]
        assert s.metadata["kind"] == kind
        assert s.metadata["question_type"] == QUESTION_TYPE[kind]
    questions = {s.metadata["kind"]: s.question for s in samples}
    assert questions["count_super"] == "How many of these shapes are there?"
    assert questions["count_general"] == "How many of these are there?"
    assert questions["count_object"].startswith("How many ") and questions["count_object"].endswith("s are there?")
    assert questions["exists"].startswith("Are there any ")


def test_shapes_list_matches_the_pixels(samples):
    """Every listed shape is drawn in its cell with its colour; every other cell is background."""
    for s in samples:
        pixels = _pixels(s)
        cell = s.metadata["image_size"] // s.metadata["grid"]
        occupied = set()
        for shape in s.metadata["shapes"]:
            row, col = shape["row"], shape["col"]
            assert shape["box"] == (col * cell, row * cell, (col + 1) * cell, (row + 1) * cell)
            assert _cell_color(pixels, shape["box"]) == shape["color"]
            occupied.add((row, col))
        assert len(occupied) == len(s.metadata["shapes"])  # at most one shape per cell
        for row in range(s.metadata["grid"]):
            for col in range(s.metadata["grid"]):
                if (row, col) not in occupied:
                    box = (col * cell, row * cell, (col + 1) * cell, (row + 1) * cell)
                    assert _cell_color(pixels, box) is None


def test_shape_kinds_differ_in_pixels():
    """Circle, square and triangle of one colour have different pixel masks."""
    masks = {}
    for s in shapes(60, seed=5):
        pixels = _pixels(s)
        for shape in s.metadata["shapes"]:
            left, top, right, bottom = shape["box"]
            inner = pixels[top + 1 : bottom - 1, left + 1 : right - 1]
            masks.setdefault(shape["kind"], (inner != np.array(BACKGROUND)).any(-1))
    assert set(masks) == set(SHAPE_KINDS)
    keys = list(masks)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert (masks[keys[i]] != masks[keys[j]]).sum() >= 8


def test_count_answers_match_the_drawn_shapes(samples):
    counts = []
    for s in samples:
        if s.metadata["kind"] not in COUNT_KINDS:
            continue
        target = s.metadata["target"]
        n = count_class(s, target["color"], target["kind"])
        # Independent count from the pixels: cells whose colour is the target's and whose mask
        # is the target kind's mask (taken from the pointed / boxed shape of that class).
        pixels = _pixels(s)
        left, top, right, bottom = (int(v) for v in s.box)
        ref = (pixels[top + 1 : bottom - 1, left + 1 : right - 1] != np.array(BACKGROUND)).any(-1)
        from_pixels = 0
        for shape in s.metadata["shapes"]:
            bl, bt, br, bb = shape["box"]
            inner = pixels[bt + 1 : bb - 1, bl + 1 : br - 1]
            same_mask = ((inner != np.array(BACKGROUND)).any(-1) == ref).all()
            from_pixels += bool(same_mask and _cell_color(pixels, shape["box"]) == target["color"])
        assert s.answer == str(n) == str(from_pixels) == str(s.metadata["count"])
        assert 1 <= n <= 7
        counts.append(n)
    assert len(set(counts)) >= 5  # answers spread over the range


def test_answer_is_not_the_most_frequent_class_count():
    """Other classes come in groups too, so a model must read the question to count."""
    from collections import Counter

    samples = shapes(300, seed=6, kinds=COUNT_KINDS)
    majority = 0
    for s in samples:
        classes = Counter((x["color"], x["kind"]) for x in s.metadata["shapes"])
        assert len(classes) >= 2
        majority += s.answer == str(max(classes.values()))
    assert majority / len(samples) < 0.6


def test_count_object_question_names_the_target(samples):
    for s in samples:
        if s.metadata["kind"] == "count_object":
            t = s.metadata["target"]
            assert s.question == f"How many {t['color']} {t['kind']}s are there?"


def test_boxes_inside_the_image_and_around_a_target_shape(samples):
    for s in samples:
        size = s.metadata["image_size"]
        if s.metadata["kind"] == "exists":
            assert s.box is None and s.metadata["pointed"] is None
            continue
        left, top, right, bottom = s.box
        assert 0 <= left < right <= size and 0 <= top < bottom <= size
        pointed = s.metadata["shapes"][s.metadata["pointed"]]
        assert s.box == tuple(float(v) for v in pointed["box"])
        assert (pointed["color"], pointed["kind"]) == (s.metadata["target"]["color"], s.metadata["target"]["kind"])
        # The box outline is drawn on the border of the pointed cell; not for object questions,
        # which name the class (a drawn box would let a model skip reading the question).
        pixels = _pixels(s)
        drawn = (pixels == np.array(BOX_COLOR)).all(-1)
        if s.metadata["kind"] == "count_object":
            assert not drawn.any()
            continue
        assert drawn[int(top), int(left) : int(right)].all()
        assert drawn[int(bottom) - 1, int(left) : int(right)].all()


def test_object_box_draws_the_box_of_object_questions_too():
    plain = shapes(6, seed=2, kinds=("count_object",))
    boxed = shapes(6, seed=2, kinds=("count_object",), object_box=True)
    for a, b in zip(plain, boxed, strict=True):
        assert a.box == b.box and a.metadata["shapes"] == b.metadata["shapes"]
        left, top, right, _ = (int(v) for v in b.box)
        assert (_pixels(b)[top, left:right] == np.array(BOX_COLOR)).all()
        assert not (_pixels(a) == np.array(BOX_COLOR)).all(-1).any()
    # without draw_box nothing is drawn, object_box or not
    for s in shapes(6, seed=2, kinds=("count_object", "count_super"), draw_box=False, object_box=True):
        assert not (_pixels(s) == np.array(BOX_COLOR)).all(-1).any()


def test_draw_box_false_leaves_no_outline():
    for s in shapes(12, seed=3, draw_box=False):
        assert not (np.asarray(s.image) == np.array(BOX_COLOR)).all(-1).any()
        assert s.box is None or s.metadata["kind"] != "exists"


def test_yes_no_balance_and_truth():
    samples = shapes(300, seed=11, kinds=("exists",))
    answers = [s.answer for s in samples]
    assert set(answers) == {"yes", "no"}
    assert 0.4 <= answers.count("yes") / len(answers) <= 0.6
    for s in samples:
        t = s.metadata["target"]
        n = count_class(s, t["color"], t["kind"])
        assert (n > 0) == (s.answer == "yes")
        assert s.question == f"Are there any {t['color']} {t['kind']}s?"
        if s.answer == "no":  # hard negatives: a shape sharing colour or kind is present
            assert any(x["color"] == t["color"] or x["kind"] == t["kind"] for x in s.metadata["shapes"])


def test_choices_contain_the_gold_letter():
    letters = []
    for s in shapes(60, seed=4, kinds=("choice_color", "choice_shape")):
        pointed = s.metadata["shapes"][s.metadata["pointed"]]
        options = tuple(COLORS) if s.metadata["kind"] == "choice_color" else SHAPE_KINDS
        assert sorted(s.choices) == sorted(options)
        gold = pointed["color"] if s.metadata["kind"] == "choice_color" else pointed["kind"]
        assert s.choices["ABCD".index(s.answer)] == gold == s.metadata["answer_text"]
        letters.append(s.answer)
    assert len(set(letters)) >= 3  # the gold position is shuffled


def test_other_sizes_and_options():
    s = shapes(6, seed=0, image_size=64, colors=("red", "blue"), shape_kinds=("circle", "square"))
    assert all(x.image.size == (64, 64) for x in s)
    assert all(sh["color"] in ("red", "blue") for x in s for sh in x.metadata["shapes"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 2, "kinds": ("count_everything",)},
        {"n": 2, "kinds": ()},
        {"n": 2, "image_size": 90},
        {"n": 2, "max_count": 10},
        {"n": 2, "colors": ("red", "purple")},
        {"n": 2, "shape_kinds": ("circle",)},
        {"n": 2, "start": -3},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        shapes(**kwargs)
