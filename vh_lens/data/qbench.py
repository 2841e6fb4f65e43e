"""Q-Bench A1 (LLVisionQA) questions read into sample sets: :func:`load_qbench`.

Re-exported by :mod:`vh_lens.data.benchmarks` and :mod:`vh_lens.data`, whose conventions it follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vh_lens.data._images import (
    OnMissing,
    SampleSet,
    make_sample,
    read_json,
)
from vh_lens.data.benchmark_records import (
    check_inputs,
    collect_records,
    records_of,
    required_field,
)
from vh_lens.data.sample import Sample


def load_qbench(
    path: str | Path, images_dir: str | Path, *, limit: int | None = None, on_missing: OnMissing = "error"
) -> SampleSet:
    """Read Q-Bench A1 (LLVisionQA: ``llvisionqa_dev.json`` / ``llvisionqa_test.json``).

    The file is a list of ``{img_path, question, candidates, correct_ans, type, concern}``;
    ``correct_ans`` is the text of one candidate and becomes its letter (``None`` when the
    field is absent, as in the test split). Yes-or-no questions stay two-option multiple
    choice (candidates ``["Yes", "No"]``), as Q-Bench scores them.

    Args:
        path: The JSON file.
        images_dir: The folder of LLVisionQA images (``images_llvisionqa``).
        limit: Return at most this many samples.
        on_missing: ``"error"`` or ``"skip"`` for questions whose image file is absent.

    Returns:
        Samples with ``metadata["benchmark"] == "qbench"`` and ``type``/``concern`` kept.

    Example:
        >>> samples = load_qbench("llvisionqa_dev.json", "images_llvisionqa")  # doctest: +SKIP
    """
    path, images_dir = check_inputs(path, "Q-Bench JSON", images_dir, limit, on_missing)
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")

    def build(where: str, record: Mapping[str, Any], image: Path) -> Sample:
        candidates = record.get("candidates")
        if not isinstance(candidates, list) or len(candidates) < 2:
            raise ValueError(f"{where}: 'candidates' must be a list of at least two options, got {candidates!r}")
        choices = tuple(str(c) for c in candidates)
        answer = None
        if record.get("correct_ans") is not None:
            gold = str(record["correct_ans"]).strip()
            hits = [i for i, c in enumerate(choices) if c.strip() == gold]
            if len(hits) != 1:
                raise ValueError(f"{where}: correct_ans {gold!r} matches {len(hits)} of the candidates {list(choices)}")
            answer = chr(ord("A") + hits[0])
        extra = {k: v for k, v in record.items() if k not in ("img_path", "question", "candidates", "correct_ans")}
        metadata = {
            "benchmark": "qbench",
            "task": "multiple_choice",
            "id": record.get("id", record.get("img_path")),
            "img_path": record.get("img_path"),
            "correct_ans": record.get("correct_ans"),
        } | extra
        return make_sample(
            where,
            image=image,
            question=required_field(record, "question", where),
            answer=answer,
            choices=choices,
            metadata=metadata,
        )

    records = ((f"{path} item {i}", r) for i, r in enumerate(records_of(data, path)))
    return collect_records(
        path,
        images_dir,
        records,
        build,
        lambda r, w: images_dir / str(required_field(r, "img_path", w)),
        limit,
        on_missing,
    )
