"""Visual prompts: the drawn outline checked pixel by pixel against a numpy mask."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from vh_lens.data._images import SampleSet
from vh_lens.data.sample import Sample, load_rgb
from vh_lens.data.visual_prompt import BoxedImage, default_box_width, draw_box, with_visual_prompt

GRAY = (90, 120, 150)


def outline_mask(shape: tuple[int, int], box: tuple[int, int, int, int], width: int) -> np.ndarray:
    """Independent reference: pixels of the box within ``width`` of its border (right/bottom exclusive)."""
    h, w = shape
    left, top, right, bottom = box
    ys, xs = np.mgrid[0:h, 0:w]
    inside = (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom)
    core = (xs >= left + width) & (xs < right - width) & (ys >= top + width) & (ys < bottom - width)
    return inside & ~core


def test_red_pixels_lie_exactly_on_the_box_outline():
    image = Image.new("RGB", (100, 80), GRAY)
    box = (10, 20, 50, 60)
    drawn = np.asarray(draw_box(image, box, width=3))
    mask = outline_mask((80, 100), box, 3)
    assert (drawn[mask] == (255, 0, 0)).all()
    assert (drawn[~mask] == GRAY).all()  # inside the outline and outside the box: untouched
    assert mask.sum() == 2 * 3 * (40 + 40) - 4 * 9  # hand count: four 3-px bands, corners once


def test_source_image_is_not_modified_and_mode_is_converted():
    image = Image.new("L", (30, 30), 77)
    out = draw_box(image, (5, 5, 25, 25), width=2)
    assert out.mode == "RGB" and out is not image
    assert image.mode == "L" and set(np.asarray(image).ravel()) == {77}


def test_default_width_is_one_percent_of_shorter_side_at_least_two():
    assert default_box_width((100, 80)) == 2
    assert default_box_width((640, 480)) == 5
    image = Image.new("RGB", (640, 480), GRAY)
    box = (100, 100, 300, 200)
    drawn = np.asarray(draw_box(image, box))
    red = (drawn == (255, 0, 0)).all(axis=-1)
    assert np.array_equal(red, outline_mask((480, 640), box, 5))


def test_float_box_is_rounded_and_box_is_clipped_to_the_image():
    image = Image.new("RGB", (40, 30), GRAY)
    drawn = np.asarray(draw_box(image, (-10.0, 4.6, 20.2, 100.0), width=2))
    red = (drawn == (255, 0, 0)).all(axis=-1)
    assert np.array_equal(red, outline_mask((30, 40), (0, 5, 20, 30), 2))


def test_alpha_blends_the_outline_colour():
    image = Image.new("RGB", (20, 20), (0, 0, 200))
    drawn = np.asarray(draw_box(image, (2, 2, 18, 18), width=2, alpha=128)).astype(int)
    pixel = drawn[2, 10]
    expected = np.array([255 * 128 / 255, 0, 200 * (1 - 128 / 255)])
    assert np.abs(pixel - expected).max() <= 1
    assert tuple(drawn[10, 10]) == (0, 0, 200)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box": (5, 5, 5, 10)}, "empty"),
        ({"box": (50, 50, 60, 60)}, "does not overlap"),
        ({"box": (1, 1, 9, 9), "color": (300, 0, 0)}, "color"),
        ({"box": (1, 1, 9, 9), "width": 0}, "width"),
        ({"box": (1, 1, 9, 9), "alpha": 256}, "alpha"),
    ],
)
def test_draw_box_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw_box(Image.new("RGB", (20, 20)), **kwargs)


def test_boxed_image_loads_lazily_and_pickles(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (60, 50), GRAY).save(path)
    boxed = BoxedImage(str(path), (5, 6, 40, 30), width=2)
    assert boxed.path == path
    clone = pickle.loads(pickle.dumps(boxed))
    assert clone == boxed
    expected = np.asarray(draw_box(load_rgb(path), (5, 6, 40, 30), width=2))
    assert np.array_equal(np.asarray(clone.load()), expected)
    # from a PIL image and from another lazy image (boxes drawn one after the other)
    assert np.array_equal(np.asarray(BoxedImage(Image.open(path), (5, 6, 40, 30), width=2).load()), expected)
    twice = BoxedImage(boxed, (45, 35, 55, 45), color=(0, 255, 0), width=1).load()
    assert twice.getpixel((5, 6)) == (255, 0, 0) and twice.getpixel((45, 35)) == (0, 255, 0)


def test_boxed_image_missing_file_fails_on_load_not_on_creation(tmp_path):
    boxed = BoxedImage(tmp_path / "nope.jpg", (0, 0, 5, 5))
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        boxed.load()
    with pytest.raises(ValueError, match="empty"):
        BoxedImage(tmp_path / "nope.jpg", (5, 0, 5, 5))


def test_with_visual_prompt_keeps_everything_but_the_image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 30), GRAY).save(path)
    plain = SampleSet(
        (Sample(path, "How many?", "2", box=(3, 3, 20, 20), metadata={"k": 1, "visual_prompt": False}),),
        n_skipped=4,
        source="src",
    )
    visual = with_visual_prompt(plain, width=2)
    assert isinstance(visual, SampleSet) and visual.n_skipped == 4 and visual.source == "src"
    (s,) = visual
    assert isinstance(s.image, BoxedImage) and s.image.path == path
    assert (s.question, s.answer, s.box) == ("How many?", "2", (3.0, 3.0, 20.0, 20.0))
    assert s.metadata == {"k": 1, "visual_prompt": True}
    assert plain[0].metadata["visual_prompt"] is False  # input untouched
    assert s.image.load().getpixel((3, 10)) == (255, 0, 0)


def test_with_visual_prompt_requires_image_and_box():
    with pytest.raises(ValueError, match="1 of 2 samples have no image or no box"):
        with_visual_prompt([Sample("x.jpg", "q?", box=(0, 0, 1, 1)), Sample("x.jpg", "q?")])


def test_sample_load_image_draws_the_box(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 30), GRAY).save(path)
    sample = Sample(BoxedImage(path, (3, 3, 20, 20), width=2), "q?", box=(3, 3, 20, 20))
    assert sample.load_image().getpixel((3, 10)) == (255, 0, 0)
