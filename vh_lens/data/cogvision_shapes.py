"""A CogVision-style synthetic dataset on the shapes world: main questions as chains of subquestions.

Each item is a scene of coloured shapes on an ``8 x 8`` grid (drawn by
:func:`vh_lens.data.shapes.draw_shapes`, so pixel-identical to :func:`~vh_lens.data.shapes.shapes`
images) and a main question that needs several steps, decomposed into subquestions, each with its
answer and one cognitive-function label (:data:`FUNCTIONS`, in CogVision's spirit):

``compare``   "Are there more red shapes than blue squares?"
    Q1 How many red shapes are there? (Counting) / Q2 How many blue squares are there?
    (Counting) / Q3 Is 4 more than 2? (Logical Reasoning) / Q4 So, are there more ...?
    (Decision-making)
``left_color`` "What color is the shape left of the boxed one?"
    Q1 What shape is in the box? (High-level Visual Reception) / Q2 What color is the shape
    left of the box? (Low-level Visual Reception: colour and position) / Q3 So, ...? (Decision)
``share_color`` "How many shapes share the boxed shape's color?"
    Q1 What color is the shape in the box? (Low-level) / Q2 How many red shapes are there?
    (Counting) / Q3 So, ...? (Decision)
``same_kind`` "Is the boxed shape the same shape as the one left of it?"
    Q1 What shape is in the box? (High-level) / Q2 What shape is left of the box? (High-level) /
    Q3 Are circle and square the same shape? (Logical Reasoning) / Q4 So, ...? (Decision)

"Left of the box" is the cell right before the boxed one in its row; it always holds a shape.
The box is drawn as a 1-pixel outline on the boxed cell (only for the templates that point).
Answers are one word: a digit, ``yes`` / ``no``, a colour or a shape name. Yes/no answers are
balanced per template; the left neighbour's colour (kind) differs from the boxed shape's in
``left_color`` (in half of ``same_kind``), so reading the boxed shape instead is wrong.

Items are :class:`~vh_lens.data.cogvision.CogItem` objects (the image a PIL image in memory),
with ``metadata["scene"]`` (the shapes, the boxed index, the template's parameters) so the
answers can be checked. :func:`write_cogvision_shapes` writes them in CogVision's item format
(JSON list + PNG files), which :func:`~vh_lens.data.cogvision.load_cogvision` reads back; so the
same readers and commands (``subquestion_samples``, ``vh-lens probe --data``) serve both.

Deterministic: item ``i`` depends only on ``(seed, i)`` and the options.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vh_lens.data.cogvision import CogItem, SubQuestion
from vh_lens.data.shapes import COLORS, SHAPE_KINDS, draw_shapes

__all__ = [
    "FUNCTIONS",
    "LOW_LEVEL",
    "HIGH_LEVEL",
    "COUNTING",
    "LOGICAL",
    "DECISION",
    "TEMPLATES",
    "MAIN_QUESTIONS",
    "cogvision_shapes",
    "cogvision_shapes_vocabulary",
    "write_cogvision_shapes",
]

LOW_LEVEL = "Low-level Visual Reception"
HIGH_LEVEL = "High-level Visual Reception"
COUNTING = "Counting"
LOGICAL = "Logical Reasoning"
DECISION = "Decision-making"
FUNCTIONS: tuple[str, ...] = (LOW_LEVEL, HIGH_LEVEL, COUNTING, LOGICAL, DECISION)
"""The function labels, perception first (CogVision's order: reception, then reasoning, then decision)."""

TEMPLATES: tuple[str, ...] = ("compare", "left_color", "share_color", "same_kind")
"""Main-question templates; item ``i`` uses ``templates[i % len(templates)]``."""

MAIN_QUESTIONS: Mapping[str, str] = {
    "compare": "Are there more {color} shapes than {color2} {kind2}s?",
    "left_color": "What color is the shape left of the boxed one?",
    "share_color": "How many shapes share the boxed shape's color?",
    "same_kind": "Is the boxed shape the same shape as the one left of it?",
}
"""Main question of each template."""

SUBQUESTIONS: Mapping[str, str] = {
    "count_color": "How many {color} shapes are there?",
    "count_class": "How many {color} {kind}s are there?",
    "more_than": "Is {a} more than {b}?",
    "box_kind": "What shape is in the box?",
    "left_color": "What color is the shape left of the box?",
    "box_color": "What color is the shape in the box?",
    "left_kind": "What shape is left of the box?",
    "same": "Are {kind} and {kind2} the same shape?",
}
"""Subquestion texts (the decision step is ``"So, "`` + the main question, first letter lowered)."""

GRID = 8
IMAGE_SIZE = 96
MAX_COUNT = 6


def cogvision_shapes_vocabulary() -> tuple[str, ...]:
    """Every word of the dataset's questions, the chain prompt's ``Main question`` / ``Q1`` / ``A1`` labels and the answers."""
    import re

    texts = [*MAIN_QUESTIONS.values(), *SUBQUESTIONS.values(), "So Main question", " ".join(COLORS),
             " ".join(SHAPE_KINDS), " ".join(k + "s" for k in SHAPE_KINDS)]  # fmt: skip
    words: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", text)):
            if len(word) > 1:
                words.setdefault(word, None)
    for k in range(1, 7):
        words.setdefault(f"Q{k}", None)
        words.setdefault(f"A{k}", None)
    return tuple(words)


def cogvision_shapes(
    n: int,
    seed: int = 0,
    *,
    templates: Sequence[str] = TEMPLATES,
    distractors: tuple[int, int] = (2, 5),
    start: int = 0,
) -> list[CogItem]:
    """Generate ``n`` chain-of-subquestion items on the shapes world.

    Args:
        n: number of items.
        seed: random seed (the same seed gives identical items and pixel-identical images).
        templates: main-question templates to cycle through (see :data:`TEMPLATES`).
        distractors: inclusive range of extra shapes (not needed by the answer, may share a
            colour or a kind with the asked ones without changing the answers). Raise it for
            harder held-out items (e.g. ``(8, 12)``).
        start: index of the first item (``cogvision_shapes(n, s, start=k)`` continues
            ``cogvision_shapes(k, s)``).

    Returns:
        Items whose ``image`` is a PIL image; ``metadata``: ``template``, ``seed``, ``index``,
        ``scene`` (``shapes``: ``{"color", "kind", "row", "col"}`` dicts; ``boxed``: index of the
        boxed shape or ``None``; ``params``: the template's colours / kinds).
    """
    templates = tuple(templates)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    bad = [t for t in templates if t not in TEMPLATES]
    if not templates or bad:
        raise ValueError(f"templates must be a non-empty subset of {TEMPLATES}, got {list(templates)}")
    lo, hi = (int(x) for x in distractors)
    if not 0 <= lo <= hi <= 20:
        raise ValueError(f"distractors must be a range (lo, hi) with 0 <= lo <= hi <= 20, got {distractors}")
    return [_item(i, seed, templates[i % len(templates)], (lo, hi)) for i in range(start, start + n)]


def _item(index: int, seed: int, template: str, distractors: tuple[int, int]) -> CogItem:
    rng = np.random.default_rng([seed, index, 17])
    colors, kinds = tuple(COLORS), SHAPE_KINDS
    cells = [int(c) for c in rng.permutation(GRID * GRID)]
    placed: list[dict[str, Any]] = []
    taken: set[int] = set()

    def put(color: str, kind: str, cell: int | None = None) -> int:
        if cell is None:
            cell = next(c for c in cells if c not in taken)
        taken.add(cell)
        placed.append({"color": color, "kind": kind, "row": cell // GRID, "col": cell % GRID})
        return len(placed) - 1

    def pick(seq: Sequence[str], avoid: Sequence[str] = ()) -> str:
        pool = [x for x in seq if x not in avoid]
        return pool[int(rng.integers(len(pool)))]

    n_extra = int(rng.integers(distractors[0], distractors[1] + 1))
    boxed: int | None = None
    params: dict[str, Any] = {}
    if template == "compare":
        color, color2 = pick(colors), None
        color2 = pick(colors, [color])
        kind2 = pick(kinds)
        yes = bool(rng.random() < 0.5)
        a, b = sorted(int(x) for x in rng.choice(np.arange(1, MAX_COUNT + 1), 2, replace=False))
        n_color, n_class = (b, a) if yes else (a, b)
        if not yes and rng.random() < 0.25:
            n_class = n_color  # a tie: "more" is false
        for _ in range(n_color):
            put(color, pick(kinds))
        for _ in range(n_class):
            put(color2, kind2)
        params = {"color": color, "color2": color2, "kind2": kind2}
        # distractors: never the counted colour nor the counted class
        for _ in range(n_extra):
            c = pick(colors, [color])
            put(c, pick(kinds, [kind2]) if c == color2 else pick(kinds))
    elif template in ("left_color", "same_kind", "share_color"):
        anchor = next(c for c in cells if c % GRID > 0)
        box_color, box_kind = pick(colors), pick(kinds)
        if template == "left_color":
            left = (pick(colors, [box_color]), pick(kinds))
        elif template == "same_kind":
            same = bool(rng.random() < 0.5)
            left = (pick(colors), box_kind if same else pick(kinds, [box_kind]))
        else:
            left = None
        boxed = put(box_color, box_kind, anchor)
        if left is not None:
            put(*left, anchor - 1)
        if template == "share_color":
            total = int(rng.integers(1, MAX_COUNT + 1))
            for _ in range(total - 1):
                put(box_color, pick(kinds))
            for _ in range(n_extra):
                put(pick(colors, [box_color]), pick(kinds))
        else:
            for _ in range(n_extra):
                put(pick(colors), pick(kinds))
    order = [int(j) for j in rng.permutation(len(placed))]  # shape list in random order
    shape_list = [placed[j] for j in order]
    if boxed is not None:
        boxed = order.index(boxed)
    scene = {"shapes": shape_list, "boxed": boxed, "params": params}
    subs, main, answer = _chain(template, scene)
    cell = IMAGE_SIZE // GRID

    def box_of(s: Mapping[str, Any]) -> tuple[int, int, int, int]:
        return (s["col"] * cell, s["row"] * cell, (s["col"] + 1) * cell, (s["row"] + 1) * cell)

    image = draw_shapes(
        [{**s, "box": box_of(s)} for s in shape_list],
        IMAGE_SIZE,
        box_of(shape_list[boxed]) if boxed is not None else None,
    )
    return CogItem(
        image=image,
        question=main,
        answer=answer,
        subquestions=tuple(subs),
        item_id=f"cogshapes-{seed}-{index}",
        metadata={"template": template, "seed": seed, "index": index, "scene": scene},
    )


def _chain(template: str, scene: Mapping[str, Any]) -> tuple[list[SubQuestion], str, str]:
    """The subquestions, main question and answer of ``template`` on ``scene`` (the generator's solver)."""
    shape_list, p = scene["shapes"], scene["params"]
    box = shape_list[scene["boxed"]] if scene["boxed"] is not None else None
    left = next((s for s in shape_list if box and s["row"] == box["row"] and s["col"] == box["col"] - 1), None)

    def yn(x: bool) -> str:
        return "yes" if x else "no"

    main = MAIN_QUESTIONS[template].format(**p)
    decision = "So, " + main[0].lower() + main[1:]
    if template == "compare":
        n_color = sum(s["color"] == p["color"] for s in shape_list)
        n_class = sum(s["color"] == p["color2"] and s["kind"] == p["kind2"] for s in shape_list)
        answer = yn(n_color > n_class)
        subs = [
            SubQuestion(SUBQUESTIONS["count_color"].format(color=p["color"]), str(n_color), COUNTING),
            SubQuestion(SUBQUESTIONS["count_class"].format(color=p["color2"], kind=p["kind2"]), str(n_class), COUNTING),
            SubQuestion(SUBQUESTIONS["more_than"].format(a=n_color, b=n_class), answer, LOGICAL),
        ]
    elif template == "left_color":
        answer = left["color"]
        subs = [
            SubQuestion(SUBQUESTIONS["box_kind"], box["kind"], HIGH_LEVEL),
            SubQuestion(SUBQUESTIONS["left_color"], answer, LOW_LEVEL),
        ]
    elif template == "share_color":
        answer = str(sum(s["color"] == box["color"] for s in shape_list))
        subs = [
            SubQuestion(SUBQUESTIONS["box_color"], box["color"], LOW_LEVEL),
            SubQuestion(SUBQUESTIONS["count_color"].format(color=box["color"]), answer, COUNTING),
        ]
    else:
        answer = yn(left["kind"] == box["kind"])
        subs = [
            SubQuestion(SUBQUESTIONS["box_kind"], box["kind"], HIGH_LEVEL),
            SubQuestion(SUBQUESTIONS["left_kind"], left["kind"], HIGH_LEVEL),
            SubQuestion(SUBQUESTIONS["same"].format(kind=box["kind"], kind2=left["kind"]), answer, LOGICAL),
        ]
    return [*subs, SubQuestion(decision, answer, DECISION)], main, answer


def write_cogvision_shapes(items: Sequence[CogItem], path: str | Path, images_dir: str = "images") -> Path:
    """Write ``items`` in CogVision's item format: a JSON list at ``path``, the images as PNG files.

    Each record: ``id``, ``image`` (relative to ``path``'s folder), ``question``, ``answer``,
    ``generated`` (``subquestion`` / ``answer`` / ``cognitive_skill``), and the item's other
    metadata (``template``, ``seed``, ``index``, ``scene``), kept by ``load_cogvision`` in
    :attr:`CogItem.metadata`.

    Returns:
        ``path``.
    """
    path = Path(path)
    folder = path.parent / images_dir
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for item in items:
        if not hasattr(item.image, "save"):
            raise ValueError(f"item {item.item_id!r}: image must be an in-memory PIL image to write")
        rel = f"{images_dir}/{item.item_id}.png"
        item.image.save(path.parent / rel)
        records.append({
            "id": item.item_id,
            "image": rel,
            "question": item.question,
            "answer": item.answer,
            "generated": [{"subquestion": s.question, "answer": s.answer, "cognitive_skill": s.function}
                          for s in item.subquestions],
            **{k: v for k, v in item.metadata.items() if k not in ("id", "image", "question", "answer", "generated")},
        })  # fmt: skip
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path
