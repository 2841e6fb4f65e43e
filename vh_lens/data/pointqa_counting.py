"""LookTwiceQA (PointQA) counting questions read as a benchmark: :func:`load_pointqa_counting`.

The file is parsed by :func:`vh_lens.data.pointqa.looktwice_candidates`; this module adds the
count and, on request, multiple-choice options. Re-exported by :mod:`vh_lens.data.benchmarks`
and :mod:`vh_lens.data`, whose conventions it follows.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from vh_lens.data._images import (
    OnMissing,
    SampleSet,
    collect_samples,
)
from vh_lens.data.benchmark_records import (
    as_int,
    check_inputs,
    files_missing_under,
)
from vh_lens.data.pointqa import QuestionType, RecordWording, check_question_type, looktwice_candidates
from vh_lens.data.sample import Sample

PointQAQuestion = QuestionType

_POINTQA_COUNTS = range(1, 8)
_POINTQA_WORDING = RecordWording(
    where="{path} image {image_id} entry {k}", missing="{where}: missing field {key!r} (fields: {found})"
)


def load_pointqa_counting(
    path: str | Path,
    images_dir: str | Path,
    *,
    question: PointQAQuestion = "object",
    as_choices: bool = False,
    n_choices: int = 4,
    seed: int = 0,
    limit: int | None = None,
    on_missing: OnMissing = "error",
) -> SampleSet:
    """Read LookTwiceQA (PointQA) counting questions as a benchmark.

    The file maps image ids to lists of questions:
    ``{image_id: [{Obj_question, Super_question, General_question, Ans, BBox, Point}, ...]}``;
    ``BBox`` is ``{x, y, w, h}`` or ``[x, y, w, h]`` in pixels and becomes the box
    ``(x, y, x + w, y + h)``; the image is ``{images_dir}/{image_id}.jpg``. ``Ans`` is the
    count, 1 to 7. The file is parsed by :func:`vh_lens.data.pointqa.looktwice_candidates`,
    as :func:`vh_lens.data.load_looktwice` reads it (so other image extensions and the
    ``VG_100K``/``VG_100K_2`` subfolders are found as there); this reader adds the count
    and, on request, the options.

    With ``as_choices=True`` each question becomes multiple choice as in paper A's benchmark
    use of PointQA: the gold count plus ``n_choices - 1`` different distractor counts drawn
    from 1..7, in random order. The draw is ours (the authors' exact one is not published):
    it depends only on ``seed``, the image id and the question's position in its list, so it
    does not change with ``limit`` or file order.

    Args:
        path: The LookTwiceQA JSON file.
        images_dir: The folder of the (Visual Genome) images.
        question: Which wording: ``"object"`` (names the object), ``"super"`` (names its
            super-category) or ``"general"`` ("How many objects ...").
        as_choices: Make multiple choice (``answer`` a letter) instead of an open count
            (``answer`` the count as a string, ``metadata["task"] == "count"``).
        n_choices: Options per question with ``as_choices`` (2 to 7).
        seed: Seed of the distractors and their order.
        limit: Return at most this many samples.
        on_missing: ``"error"`` or ``"skip"`` for questions whose image file is absent.

    Returns:
        Samples with ``metadata["benchmark"] == "pointqa"``, ``metadata["count"]`` (int),
        ``metadata["answer_range"] == (1, 7)``, ``id`` (``"{image_id}_{entry}"``),
        ``image_id``, ``entry`` (the question's position in its image's list),
        ``question_type``, the wordings present in ``metadata["questions"]`` and the
        ``point`` as ``[x, y]`` (or ``None``), besides the rest of
        :func:`vh_lens.data.load_looktwice`'s metadata (``sample_id``, ``qa_index``, ...).

    Raises:
        FileNotFoundError: no such file or image folder.
        MissingImagesError: ``on_missing="error"`` and some image files are missing.
        ValueError: bad argument, a question lacks a field or has a bad one, ``Ans`` is not
            an integer, or (``as_choices``) a count is outside 1..7.

    Example:
        >>> samples = load_pointqa_counting("lookTwiceQA_test.json", "vg/images", as_choices=True)  # doctest: +SKIP
    """
    check_question_type(question)
    if as_choices and not (isinstance(n_choices, int) and 2 <= n_choices <= len(_POINTQA_COUNTS)):
        raise ValueError(f"n_choices must be an int in 2..{len(_POINTQA_COUNTS)}, got {n_choices!r}")
    path, images_dir = check_inputs(path, "LookTwiceQA JSON", images_dir, limit, on_missing)
    looktwice = looktwice_candidates(path, images_dir, question, wording=_POINTQA_WORDING)
    options = n_choices if as_choices else None
    candidates = ((_as_counting(sample, path, options, seed), image) for sample, image in looktwice)
    return collect_samples(
        candidates,
        source=str(path),
        on_missing=on_missing,
        limit=limit,
        limit_counts_kept=True,
        one_line=files_missing_under(images_dir),
    )


def _as_counting(sample: Sample, path: Path, n_choices: int | None, seed: int) -> Sample:
    """A LookTwice-QA sample as a counting question; multiple choice when ``n_choices`` is given."""
    image_id, k = sample.metadata["image_id"], sample.metadata["qa_index"]
    where = _POINTQA_WORDING.where.format(path=path, image_id=image_id, k=k)
    count = as_int(sample.answer)
    if count is None:
        raise ValueError(f"{where}: Ans {sample.answer!r} is not an integer count")
    point = sample.metadata["point"]
    metadata: dict[str, Any] = {
        **sample.metadata,
        "benchmark": "pointqa",
        "task": "count",
        "id": f"{image_id}_{k}",
        "entry": k,
        "count": count,
        "answer_range": (_POINTQA_COUNTS[0], _POINTQA_COUNTS[-1]),
        "point": None if point is None else list(point),
    }
    answer, choices = str(count), None
    if n_choices is not None:
        if count not in _POINTQA_COUNTS:
            raise ValueError(f"{where}: count {count} is outside 1..7, cannot draw distractors")
        rng = random.Random(f"{seed}:{image_id}:{k}")
        options = [count, *rng.sample([c for c in _POINTQA_COUNTS if c != count], n_choices - 1)]
        rng.shuffle(options)
        choices = tuple(str(c) for c in options)
        answer = chr(ord("A") + options.index(count))
        metadata["task"] = "multiple_choice"
    return replace(sample, answer=answer, choices=choices, metadata=metadata)
