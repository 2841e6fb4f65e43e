"""Synthetic PointQA-like samples: coloured shapes on a grid, and questions about them.

The images are drawn with PIL: a plain black background divided into a ``grid x grid`` array
of square cells, at most one shape (circle, square or triangle, in one of a few colours) per
cell. With the default sizes (96 px image, 8 x 8 cells of 12 px) every cell lines up with one
patch of the toy model's vision tower (:mod:`vh_lens.toy`, 12 px patches), so a shape is one
image token.

A shape's *class* is its ``(color, kind)`` pair, e.g. ``("red", "circle")``. Every image holds
the asked (target) class, ``1 .. max_count`` shapes of it (none for the "no" half of the
yes/no questions), and ``1 .. max_groups`` other classes with ``1 .. max_count`` shapes each,
so the answer is not the count of the most frequent class: the question (or the pointer)
must be read. Question kinds,
following paper A's PointQA / LookTwiceQA types (section 3.1) plus POPE-like and
multiple-choice questions:

``count_object`` (question type ``"object"``)
    "How many red circles are there?": the class is named; the answer is the number of shapes
    of that class in the whole image.
``count_super`` (``"super"``)
    "How many of these shapes are there?": the box points at one shape (the box is drawn as
    an outline around its cell) and the question names only the super-category ("shapes");
    the answer is the number of shapes of the *pointed shape's class* (same colour and same
    kind) in the whole image, the pointed one included. As in LookTwiceQA, "these" means
    "objects like the one pointed at".
``count_general`` (``"general"``)
    "How many of these are there?": as ``count_super`` with no category word at all.
``exists`` (``"yes_no"``)
    "Are there any blue squares?": answer ``"yes"`` or ``"no"`` (about half each). For "no" the
    image still holds shapes of the same colour or of the same kind (POPE's adversarial
    negatives), never the asked class.
``choice_color`` / ``choice_shape`` (``"multiple_choice"``)
    "What color is this shape?" / "What shape is this?" about the pointed shape, with every
    colour (or every kind) as a choice in shuffled order; the answer is the gold letter
    (``"A"``, ``"B"``, ...).

Every counting sample carries a box: for ``count_super`` / ``count_general`` the pointed
shape's cell; for ``count_object`` the cell of one shape of the named class (so region
metrics are defined for all three types). Count answers are uniform in ``1 .. max_count``.
With ``draw_box=True`` (default) the pointer of ``count_super``, ``count_general`` and the
``choice_*`` questions is drawn as a 1-pixel outline on the border of the pointed cell
(paper A's "visual" setting). With ``draw_box=False`` the pointer is invisible ("plain"
setting), so those questions can no longer be answered from the image. The box of a
``count_object`` question is drawn only with ``object_box=True``: the question names the
class, and a drawn box would let a model count "shapes like the boxed one" without reading
the question (a shortcut the first toy model took, failing every question without a box).

Generation is deterministic: sample ``i`` depends only on ``(seed, i)`` and the options,
so ``shapes(10, seed) == shapes(20, seed)[:10]`` and images are pixel-identical across runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vh_lens.data.sample import Sample

COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (230, 40, 40),
        "green": (40, 190, 60),
        "blue": (50, 90, 240),
        "yellow": (240, 220, 40),
    }
)
"""Shape colours (name -> RGB)."""

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
"""Shape kinds; the plural is the kind plus ``"s"``."""

KINDS: tuple[str, ...] = (
    "count_object",
    "count_super",
    "count_general",
    "exists",
    "choice_color",
    "choice_shape",
)
"""Question kinds ``shapes`` can generate."""

COUNT_KINDS: tuple[str, ...] = ("count_object", "count_super", "count_general")

QUESTION_TYPE: Mapping[str, str] = MappingProxyType(
    {
        "count_object": "object",
        "count_super": "super",
        "count_general": "general",
        "exists": "yes_no",
        "choice_color": "multiple_choice",
        "choice_shape": "multiple_choice",
    }
)
"""``metadata["question_type"]`` of each kind (paper A's names for the counting types)."""

QUESTION_TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "count_object": "How many {color} {kind}s are there?",
        "count_super": "How many of these shapes are there?",
        "count_general": "How many of these are there?",
        "exists": "Are there any {color} {kind}s?",
        "choice_color": "What color is this shape?",
        "choice_shape": "What shape is this?",
    }
)
"""Question text of each kind (``{color}`` and ``{kind}`` filled in)."""

BACKGROUND: tuple[int, int, int] = (0, 0, 0)
BOX_COLOR: tuple[int, int, int] = (255, 255, 255)
_LETTERS = "ABCDEFGHIJ"


def shapes(
    n: int,
    seed: int = 0,
    image_size: int = 96,
    kinds: Sequence[str] = KINDS,
    *,
    grid: int = 8,
    max_count: int = 7,
    max_groups: int = 2,
    min_groups: int = 1,
    colors: Sequence[str] = tuple(COLORS),
    shape_kinds: Sequence[str] = SHAPE_KINDS,
    draw_box: bool = True,
    object_box: bool = False,
    box_color: tuple[int, int, int] = BOX_COLOR,
    start: int = 0,
) -> list[Sample]:
    """Generate ``n`` synthetic pointing / counting samples.

    Sample ``i`` (counting from ``start``) has question kind ``kinds[i % len(kinds)]`` (so
    kinds are balanced) and is drawn from a random generator seeded with ``(seed, i)``; so
    ``shapes(n, seed, start=k)`` continues ``shapes(k, seed)``.

    Args:
        n: number of samples.
        seed: random seed; the same seed gives identical samples and pixel-identical images.
        image_size: image width and height in pixels; a multiple of ``grid``.
        kinds: question kinds to cycle through (see :data:`KINDS`).
        grid: cells per side; each cell holds at most one shape.
        max_count: counting answers are uniform in ``1 .. max_count`` (at most 9: one digit).
        max_groups: besides the asked class, an image holds ``1 .. max_groups`` other
            classes, each with ``1 .. max_count`` shapes (so the asked class is not simply the
            most frequent one, and the question or the pointer must be read).
        min_groups: the least number of other classes (0 allows images of the asked class
            only, an easy curriculum stage; yes/no images always hold one other class).
        colors: colour names, a subset of :data:`COLORS`.
        shape_kinds: shape kinds, a subset of :data:`SHAPE_KINDS`.
        draw_box: draw the pointer of the super, general and multiple-choice questions as an
            outline on the image.
        object_box: also draw the box of ``count_object`` questions (hidden by default: the
            question names the class).
        box_color: RGB colour of the drawn box.
        start: index of the first sample (to stream a long sequence in batches).

    Returns:
        ``n`` :class:`~vh_lens.data.sample.Sample` objects. ``metadata`` holds ``id``,
        ``kind``, ``question_type``, ``target`` (the asked class as ``{"color", "kind"}``),
        ``count`` (shapes of the target class in the image), ``pointed`` (index of the pointed
        shape in ``shapes`` or ``None``), ``shapes`` (a tuple of ``{"color", "kind", "row",
        "col", "box"}`` dicts, ``box`` the cell in pixels), ``answer_text`` (the gold choice
        for multiple choice, else the answer), ``seed``, ``image_size`` and ``grid``.

    Example:
        >>> s = shapes(6, seed=0)
        >>> s[0].question, s[0].answer  # doctest: +SKIP
        ('How many green squares are there?', '4')
    """
    kinds = tuple(kinds)
    colors = tuple(colors)
    shape_kinds = tuple(shape_kinds)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    _check(n, image_size, kinds, grid, max_count, max_groups, colors, shape_kinds)
    if not 0 <= min_groups <= max_groups:
        raise ValueError(f"min_groups must be in 0 .. max_groups ({max_groups}), got {min_groups}")
    return [
        _sample(
            i,
            seed,
            kinds[i % len(kinds)],
            image_size=image_size,
            grid=grid,
            max_count=max_count,
            max_groups=max_groups,
            min_groups=min_groups,
            colors=colors,
            shape_kinds=shape_kinds,
            draw_box=draw_box and (object_box or kinds[i % len(kinds)] != "count_object"),
            box_color=tuple(box_color),
        )
        for i in range(start, start + n)
    ]


def _check(
    n: int,
    image_size: int,
    kinds: tuple[str, ...],
    grid: int,
    max_count: int,
    max_groups: int,
    colors: tuple[str, ...],
    shape_kinds: tuple[str, ...],
) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not kinds:
        raise ValueError("kinds must not be empty")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; known: {KINDS}")
    if grid < 2 or image_size % grid or image_size // grid < 6:
        raise ValueError(f"image_size ({image_size}) must be a multiple of grid ({grid}) with cells >= 6 px")
    if not 1 <= max_count <= 9:
        raise ValueError(f"max_count must be in 1..9, got {max_count}")
    if max_groups < 1 or max_groups >= len(colors) * len(shape_kinds):
        raise ValueError(f"max_groups must be in 1 .. (number of classes - 1), got {max_groups}")
    if max_count * (1 + max_groups) > grid * grid:
        raise ValueError(f"max_count * (1 + max_groups) shapes do not fit on a {grid}x{grid} grid")
    if len(colors) < 2 or any(c not in COLORS for c in colors) or len(set(colors)) != len(colors):
        raise ValueError(f"colors must be >= 2 distinct names from {tuple(COLORS)}, got {colors}")
    if (
        len(shape_kinds) < 2
        or any(k not in SHAPE_KINDS for k in shape_kinds)
        or len(set(shape_kinds)) != len(shape_kinds)
    ):
        raise ValueError(f"shape_kinds must be >= 2 distinct names from {SHAPE_KINDS}, got {shape_kinds}")


def _sample(
    index: int,
    seed: int,
    kind: str,
    *,
    image_size: int,
    grid: int,
    max_count: int,
    max_groups: int,
    min_groups: int,
    colors: tuple[str, ...],
    shape_kinds: tuple[str, ...],
    draw_box: bool,
    box_color: tuple[int, ...],
) -> Sample:
    rng = np.random.default_rng([seed, index])
    classes = [(c, k) for c in colors for k in shape_kinds]
    perm = [int(j) for j in rng.permutation(len(classes))]
    target = classes[perm[0]]
    if kind == "exists":
        count = int(rng.integers(1, max_count + 1)) if rng.random() < 0.5 else 0
    else:
        count = int(rng.integers(1, max_count + 1))
    n_other = int(rng.integers(max(min_groups, kind == "exists"), max_groups + 1))
    other = [classes[j] for j in perm[1 : 1 + n_other]]
    if kind == "exists" and not any(cl[0] == target[0] or cl[1] == target[1] for cl in other):
        # POPE-like hard negative: a class sharing the asked colour or kind is always present.
        other[0] = next(classes[j] for j in perm[1:] if classes[j][0] == target[0] or classes[j][1] == target[1])
    other_counts = rng.integers(1, max_count + 1, size=n_other)
    placed = [target] * count + [cl for cl, m in zip(other, other_counts, strict=True) for _ in range(int(m))]

    cells = rng.choice(grid * grid, size=len(placed), replace=False)
    order = rng.permutation(len(placed))  # shape list in random order, not targets first
    cell = image_size // grid
    shape_list: list[dict[str, Any]] = []
    for j in order:
        row, col = divmod(int(cells[j]), grid)
        box = (col * cell, row * cell, (col + 1) * cell, (row + 1) * cell)
        shape_list.append({"color": placed[j][0], "kind": placed[j][1], "row": row, "col": col, "box": box})

    pointed: int | None = None
    if kind != "exists":
        # The pointed shape is a random one of the target class.
        first = int(rng.integers(count))
        pointed = int(np.flatnonzero(order == first)[0])

    color, shape_kind = target
    question = QUESTION_TEMPLATES[kind].format(color=color, kind=shape_kind)
    choices: tuple[str, ...] | None = None
    if kind in COUNT_KINDS:
        answer = str(count)
        answer_text = answer
    elif kind == "exists":
        answer = "yes" if count > 0 else "no"
        answer_text = answer
    else:
        options = colors if kind == "choice_color" else shape_kinds
        gold = color if kind == "choice_color" else shape_kind
        choices = tuple(options[int(j)] for j in rng.permutation(len(options)))
        answer = _LETTERS[choices.index(gold)]
        answer_text = gold

    box = shape_list[pointed]["box"] if pointed is not None else None
    image = _draw(shape_list, image_size, box if draw_box else None, box_color)
    metadata = {
        "id": f"shapes-{seed}-{index}",
        "kind": kind,
        "question_type": QUESTION_TYPE[kind],
        "target": {"color": color, "kind": shape_kind},
        "count": count,
        "pointed": pointed,
        "shapes": tuple(shape_list),
        "answer_text": answer_text,
        "seed": seed,
        "image_size": image_size,
        "grid": grid,
    }
    return Sample(image=image, question=question, answer=answer, choices=choices, box=box, metadata=metadata)


def _draw(
    shape_list: list[dict[str, Any]],
    image_size: int,
    box: tuple[int, int, int, int] | None,
    box_color: tuple[int, ...],
) -> Image.Image:
    """Draw the shapes (1 px inside their cell's border) and the box outline (on the border)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shape_list:
        left, top, right, bottom = s["box"]
        x0, y0, x1, y1 = left + 1, top + 1, right - 2, bottom - 2  # inclusive pixel bounds
        fill = COLORS[s["color"]]
        if s["kind"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s["kind"] == "square":
            draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    if box is not None:
        left, top, right, bottom = box
        draw.rectangle((left, top, right - 1, bottom - 1), outline=box_color, width=1)
    return image


def draw_shapes(
    shape_list: Sequence[Mapping[str, Any]],
    image_size: int = 96,
    box: tuple[int, int, int, int] | None = None,
    box_color: tuple[int, int, int] = BOX_COLOR,
) -> Image.Image:
    """Draw a scene as :func:`shapes` does (pixel-identical): for other generators on the same world.

    Args:
        shape_list: ``{"color", "kind", "box"}`` dicts (``box`` the shape's cell in pixels).
        image_size: image width and height in pixels.
        box: the cell to outline (the drawn pointer), or ``None``.
        box_color: RGB colour of the outline.
    """
    return _draw([dict(s) for s in shape_list], image_size, box, tuple(box_color))


def count_class(sample: Sample, color: str, kind: str) -> int:
    """Number of shapes of class ``(color, kind)`` drawn in a :func:`shapes` sample."""
    return sum(s["color"] == color and s["kind"] == kind for s in sample.metadata["shapes"])
