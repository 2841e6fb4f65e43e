"""The CogVision-style shapes dataset: deterministic, answers right (independent solver), CogVision format."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vh_lens.data import cogvision_shapes, load_cogvision, subquestion_samples, write_cogvision_shapes
from vh_lens.data.cogvision_shapes import FUNCTIONS
from vh_lens.data.shapes import COLORS

CELL = 12


def _grid(scene: dict) -> dict[tuple[int, int], tuple[str, str]]:
    return {(s["row"], s["col"]): (s["color"], s["kind"]) for s in scene["shapes"]}


def _solve(main: str, scene: dict) -> list[tuple[str, str, str]]:
    """Expected (subquestion, answer, function) chain, worked out from the question text and the scene alone."""
    grid = _grid(scene)
    shapes = list(grid.values())
    boxed = scene["boxed"]
    if boxed is not None:
        b = scene["shapes"][boxed]
        at = (b["row"], b["col"])
        box, left = grid[at], grid.get((at[0], at[1] - 1))
    yes = {True: "yes", False: "no"}
    m = re.fullmatch(r"Are there more (\w+) shapes than (\w+) (\w+)s\?", main)
    if m:
        c, c2, k2 = m.groups()
        n1 = len([1 for col, _ in shapes if col == c])
        n2 = len([1 for col, kind in shapes if (col, kind) == (c2, k2)])
        steps = [(f"How many {c} shapes are there?", str(n1), "Counting"),
                 (f"How many {c2} {k2}s are there?", str(n2), "Counting"),
                 (f"Is {n1} more than {n2}?", yes[n1 > n2], "Logical Reasoning")]  # fmt: skip
        final = yes[n1 > n2]
    elif main == "What color is the shape left of the boxed one?":
        steps = [("What shape is in the box?", box[1], "High-level Visual Reception"),
                 ("What color is the shape left of the box?", left[0], "Low-level Visual Reception")]  # fmt: skip
        final = left[0]
    elif main == "How many shapes share the boxed shape's color?":
        n = len([1 for col, _ in shapes if col == box[0]])
        steps = [("What color is the shape in the box?", box[0], "Low-level Visual Reception"),
                 (f"How many {box[0]} shapes are there?", str(n), "Counting")]  # fmt: skip
        final = str(n)
    elif main == "Is the boxed shape the same shape as the one left of it?":
        steps = [("What shape is in the box?", box[1], "High-level Visual Reception"),
                 ("What shape is left of the box?", left[1], "High-level Visual Reception"),
                 (f"Are {box[1]} and {left[1]} the same shape?", yes[box[1] == left[1]], "Logical Reasoning")]  # fmt: skip
        final = yes[box[1] == left[1]]
    else:
        raise AssertionError(f"unknown main question {main!r}")
    return [*steps, ("So, " + main[0].lower() + main[1:], final, "Decision-making")]


@pytest.fixture(scope="module")
def items():
    return cogvision_shapes(80, seed=3)


def test_deterministic_and_streamable(items):
    again = cogvision_shapes(40, seed=3, start=40)
    for a, b in zip(items[40:], again, strict=True):
        assert (a.question, a.answer, a.subquestions, a.metadata) == (b.question, b.answer, b.subquestions, b.metadata)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = cogvision_shapes(8, seed=4)
    assert [it.metadata["scene"] for it in other] != [it.metadata["scene"] for it in items[:8]]


def test_answers_match_an_independent_solver(items):
    for it in items:
        got = [(s.question, s.answer, s.function) for s in it.subquestions]
        assert got == _solve(it.question, it.metadata["scene"]), it.item_id
        assert it.answer == got[-1][1]
        assert {s.function for s in it.subquestions} <= set(FUNCTIONS)


def test_image_shows_the_scene(items):
    """The centre pixel of every shape's cell has its colour; the box outline is on the boxed cell only."""
    for it in items[:20]:
        px = np.asarray(it.image)
        scene = it.metadata["scene"]
        for s in scene["shapes"]:
            y, x = s["row"] * CELL + CELL // 2, s["col"] * CELL + CELL // 2
            assert tuple(px[y, x]) == COLORS[s["color"]]
        white = np.argwhere((px == 255).all(-1))
        if scene["boxed"] is None:
            assert len(white) == 0
        else:
            b = scene["shapes"][scene["boxed"]]
            assert set(map(tuple, white // CELL)) == {(b["row"], b["col"])}


def test_answers_are_balanced_and_not_shortcuts(items):
    for template in ("compare", "same_kind"):
        answers = [it.answer for it in cogvision_shapes(200, seed=5, templates=(template,))]
        assert 0.35 < answers.count("yes") / len(answers) < 0.65
    for it in cogvision_shapes(40, seed=5, templates=("left_color",)):
        assert it.subquestions[1].answer != it.metadata["scene"]["shapes"][it.metadata["scene"]["boxed"]]["color"]


def test_written_file_reads_back_with_load_cogvision(items, tmp_path):
    path = write_cogvision_shapes(items[:12], tmp_path / "cogvision_shapes.json")
    back = load_cogvision(path, verify_images=True)
    assert [b.item_id for b in back] == [it.item_id for it in items[:12]]
    for a, b in zip(items[:12], back, strict=True):
        assert (b.question, b.answer, b.subquestions) == (a.question, a.answer, a.subquestions)
        assert b.metadata["scene"]["shapes"] == [dict(s) for s in a.metadata["scene"]["shapes"]]
        with b.image.open("rb") as f:
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(f).convert("RGB")), np.asarray(a.image))
    prompts = subquestion_samples(back)
    assert prompts[3].question.startswith("Main question: " + back[0].question + "\nQ1: ")
    assert prompts[3].question.endswith(
        "A3: " + back[0].subquestions[2].answer + "\nQ4: " + back[0].subquestions[3].question
    )


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="templates"):
        cogvision_shapes(2, templates=("nope",))
    with pytest.raises(ValueError, match="distractors"):
        cogvision_shapes(2, distractors=(5, 2))
    with pytest.raises(ValueError, match="n and start"):
        cogvision_shapes(-1)
