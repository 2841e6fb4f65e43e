"""SEED-Bench(-1) image questions read into sample sets: :func:`load_seed_bench`.

Re-exported by :mod:`vh_lens.data.benchmarks` and :mod:`vh_lens.data`, whose conventions it follows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from vh_lens.data._images import (
    OnMissing,
    SampleSet,
    make_sample,
    read_json,
)
from vh_lens.data.benchmark_records import (
    as_int,
    check_inputs,
    collect_records,
    find_image,
    gold_letter,
    letter_fields,
    records_of,
    required_field,
)
from vh_lens.data.sample import Sample


def load_seed_bench(
    path: str | Path,
    images_dir: str | Path,
    *,
    question_type_ids: Collection[int] | None = None,
    limit: int | None = None,
    on_missing: OnMissing = "error",
) -> SampleSet:
    """Read SEED-Bench(-1) ``SEED-Bench.json``, image questions only.

    The file is ``{"questions": [...], "question_type": {name: id}}`` (a bare list of
    questions is read too). Each question has ``question``, ``choice_a`` .. ``choice_d``,
    ``answer`` (a letter), ``data_id`` (the image file in ``images_dir``; tried as is, then
    with ``.jpg``, ``.jpeg``, ``.png``), ``data_type`` (``"image"`` or ``"video"``; video
    items are dropped), ``question_id`` and ``question_type_id``.

    Args:
        path: The JSON file.
        images_dir: The folder of SEED-Bench images (``SEED-Bench-image``).
        question_type_ids: Keep only these evaluation dimensions (1 to 9 are image ones).
        limit: Return at most this many samples.
        on_missing: ``"error"`` or ``"skip"`` for questions whose image file is absent.

    Returns:
        Samples with ``metadata["benchmark"] == "seed_bench"`` and, when the file names
        them, ``metadata["question_type"]`` (e.g. ``"Instance Counting"``).

    Example:
        >>> samples = load_seed_bench("SEED-Bench.json", "SEED-Bench-image")  # doctest: +SKIP
    """
    path, images_dir = check_inputs(path, "SEED-Bench JSON", images_dir, limit, on_missing)
    data = read_json(path)
    type_names: dict[int, str] = {}
    if isinstance(data, Mapping):
        if "questions" not in data:
            raise ValueError(f"{path}: expected a 'questions' list at the top level, found keys {list(data)[:10]}")
        raw_types = data.get("question_type") or {}
        if isinstance(raw_types, Mapping):
            type_names = {int(v): str(k) for k, v in raw_types.items()}
        data = data["questions"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of questions, got {type(data).__name__}")
    wanted = None if question_type_ids is None else {int(t) for t in question_type_ids}

    def keep(record: Mapping[str, Any]) -> bool:
        if record.get("data_type", "image") != "image":
            return False
        return wanted is None or as_int(record.get("question_type_id")) in wanted

    def build(where: str, record: Mapping[str, Any], image: Path) -> Sample:
        choices = letter_fields(record, [f"choice_{c}" for c in "abcdefgh"])
        if len(choices) < 2:
            raise ValueError(f"{where}: fewer than two non-empty 'choice_a'.. fields")
        answer = gold_letter(record.get("answer"), len(choices), where)
        type_id = as_int(record.get("question_type_id"))
        metadata = {
            "benchmark": "seed_bench",
            "task": "multiple_choice",
            "id": record.get("question_id"),
            "question_id": record.get("question_id"),
            "question_type_id": type_id,
            "question_type": type_names.get(type_id) if type_id is not None else None,
            "data_id": record.get("data_id"),
        }
        return make_sample(
            where,
            image=image,
            question=required_field(record, "question", where),
            answer=answer,
            choices=tuple(choices),
            metadata=metadata,
        )

    def image_path(record: Mapping[str, Any], where: str) -> Path:
        return find_image(images_dir, str(required_field(record, "data_id", where)))

    records = ((f"{path} question {i}", r) for i, r in enumerate(records_of(data, path)) if keep(r))
    return collect_records(path, images_dir, records, build, image_path, limit, on_missing)
