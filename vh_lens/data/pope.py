"""POPE yes/no object-hallucination files read into sample sets: :func:`load_pope`.

Re-exported by :mod:`vh_lens.data.benchmarks` and :mod:`vh_lens.data`, whose conventions it follows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vh_lens.data._images import (
    OnMissing,
    SampleSet,
    make_sample,
)
from vh_lens.data.benchmark_records import (
    check_inputs,
    collect_records,
    iter_json_records,
    required_field,
)
from vh_lens.data.sample import Sample

_SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


def load_pope(
    path: str | Path,
    images_dir: str | Path,
    *,
    category: str | None = None,
    limit: int | None = None,
    on_missing: OnMissing = "error",
) -> SampleSet:
    """Read a POPE file (``coco_pope_random.json`` and the like: one JSON object a line).

    Each line has ``question_id``, ``image`` (a file name in ``images_dir``, e.g. COCO
    val2014), ``text`` (the question) and ``label`` (``"yes"``/``"no"``; without it the
    answer is ``None``, as in LLaVA's ``llava_pope_test.jsonl``). A JSON array of the same
    objects is read too. LLaVA's short-answer instruction, if the question already carries
    it, is removed (:func:`vh_lens.evaluation.answers.format_question` adds it back).

    Args:
        path: The annotation file.
        images_dir: The folder holding the images.
        category: ``metadata["category"]``; default: the line's ``category`` field, else the
            part after ``pope_`` in the file name (``random``, ``popular``, ``adversarial``).
        limit: Return at most this many samples.
        on_missing: ``"error"`` or ``"skip"`` for questions whose image file is absent.

    Returns:
        One sample per question, ``metadata["benchmark"] == "pope"``, ``task == "yes_no"``.

    Example:
        >>> samples = load_pope("coco_pope_random.json", "coco/val2014")  # doctest: +SKIP
    """
    path, images_dir = check_inputs(path, "POPE annotation", images_dir, limit, on_missing)
    if category is None and (match := re.search(r"pope_([A-Za-z]+)", path.stem)) is not None:
        file_category: str | None = match.group(1)
    else:
        file_category = category

    def build(where: str, record: Mapping[str, Any], image: Path) -> Sample:
        question = required_field(record, "text", where)
        if not isinstance(question, str):
            raise ValueError(f"{where}: 'text' (the question) must be a string, got {type(question).__name__}")
        if question.rstrip().endswith(_SHORT_ANSWER_SUFFIX):
            question = question.rstrip()[: -len(_SHORT_ANSWER_SUFFIX)].rstrip()
        label = record.get("label")
        answer = None
        if label is not None:
            answer = str(label).strip().lower()
            if answer not in ("yes", "no"):
                raise ValueError(f"{where}: label {label!r} is not yes or no")
        question_id = record.get("question_id")
        metadata = {
            "benchmark": "pope",
            "task": "yes_no",
            "id": question_id,
            "question_id": question_id,
            "category": category or record.get("category") or file_category,
            "image_file": str(record["image"]),
        }
        return make_sample(where, image=image, question=question, answer=answer, metadata=metadata)

    records = iter_json_records(path)
    return collect_records(
        path,
        images_dir,
        records,
        build,
        lambda r, w: images_dir / str(required_field(r, "image", w)),
        limit,
        on_missing,
    )
