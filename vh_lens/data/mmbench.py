"""MMBench (and MMBench-CN) TSV files read into sample sets: :func:`load_mmbench`.

Re-exported by :mod:`vh_lens.data.benchmarks` and :mod:`vh_lens.data`, whose conventions it follows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vh_lens.data._images import (
    OneLineMessage,
    OnMissing,
    SampleSet,
    check_limit,
    check_on_missing,
    finish_samples,
    make_sample,
)
from vh_lens.data.benchmark_records import (
    check_file,
    maybe_int,
    tsv_cell,
)
from vh_lens.data.sample import Sample


def load_mmbench(path: str | Path, *, limit: int | None = None, on_missing: OnMissing = "error") -> SampleSet:
    """Read an MMBench TSV (``mmbench_dev_20230712.tsv`` and its kin, including MMBench-CN).

    Columns used: ``index``, ``question``, ``image`` (base64), the option columns ``A``,
    ``B``, ... (single capital letters; empty ones skipped), and when present ``hint`` and
    ``answer``. The hint is put before the question as MMBench's official prompt and
    LLaVA's ``model_vqa_mmbench.py`` do (``"hint\\nquestion"``). Like LLaVA, the cells
    ``""``, ``"nan"`` and ``"none"`` (any case) count as empty.

    Options become ``choices`` in column order; if an empty option sits between two
    non-empty ones the later options move up a letter, ``answer`` is re-lettered to match,
    and ``metadata["option_letters"]`` keeps the file's letters. All other columns
    (``category``, ``l2-category``, ``split``, ``source``, ...) go to ``metadata``.

    The file is streamed row by row. Each image is opened lazily with PIL from its decoded
    bytes (only the compressed bytes stay in memory until the pixels are used). An image cell
    holding another row's ``index`` (VLMEvalKit's de-duplicated TSVs) reuses that row's image
    if it was read earlier.

    Args:
        path: The ``.tsv`` file.
        limit: Return at most this many samples (the rest of the file is not read).
        on_missing: ``"error"`` raises for rows whose image is empty or undecodable (after
            reading rows until ``limit`` samples are kept, listing the first few);
            ``"skip"`` drops them.

    Returns:
        One sample per row, ``metadata["benchmark"] == "mmbench"``.

    Raises:
        FileNotFoundError: no such file.
        MissingImagesError: ``on_missing="error"`` and some images are empty or undecodable
            (its ``problems`` name the rows as ``"index N"``).
        ValueError: a required column is missing, or a row has fewer than two options or a
            gold letter naming no option.

    Example:
        >>> samples = load_mmbench("mmbench_dev_20230712.tsv", limit=100)  # doctest: +SKIP
    """
    path = check_file(path, "MMBench TSV")
    check_limit(limit)
    check_on_missing(on_missing)
    samples: list[Sample] = []
    problems: list[tuple[str, str]] = []
    image_by_index: dict[str, Image.Image] = {}
    with _csv_field_limit(), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        absent = [c for c in ("index", "question", "image", "A", "B") if c not in columns]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; the header has {columns}")
        option_cols = sorted(c for c in columns if len(c) == 1 and c.isascii() and c.isupper())
        used = {"index", "question", "hint", "answer", "image", *option_cols}
        for row_number, row in enumerate(reader, start=2):
            if limit is not None and len(samples) >= limit:
                break
            index = tsv_cell(row.get("index"))
            where = f"{path} line {row_number} (index {index})"
            image = _mmbench_image(row.get("image"), image_by_index)
            if image is None:
                problems.append((f"index {index}", "empty or undecodable"))
                continue
            if index is not None:
                image_by_index[index] = image
            options = [(c, value) for c in option_cols if (value := tsv_cell(row.get(c))) is not None]
            if len(options) < 2:
                raise ValueError(f"{where}: fewer than two non-empty options in columns {option_cols}")
            source_letters = [c for c, _ in options]
            answer = tsv_cell(row.get("answer"))
            if answer is not None:
                gold = answer.strip().upper()
                if gold not in source_letters:
                    raise ValueError(f"{where}: answer {answer!r} names no non-empty option {source_letters}")
                answer = chr(ord("A") + source_letters.index(gold))
            question = tsv_cell(row.get("question"))
            if question is None or not question.strip():
                raise ValueError(f"{where}: empty question")
            hint = tsv_cell(row.get("hint"))
            if hint is not None:
                question = f"{hint}\n{question}"
            metadata: dict[str, Any] = {
                "benchmark": "mmbench",
                "task": "multiple_choice",
                "id": maybe_int(index),
                "index": maybe_int(index),
                "hint": hint,
                "option_letters": tuple(source_letters),
            }
            metadata |= {k: tsv_cell(v) for k, v in row.items() if k is not None and k not in used}
            samples.append(
                make_sample(
                    where,
                    image=image,
                    question=question,
                    answer=answer,
                    choices=tuple(v for _, v in options),
                    metadata=metadata,
                )
            )
    return finish_samples(
        samples,
        problems,
        source=str(path),
        on_missing=on_missing,
        one_line=OneLineMessage("images empty or undecodable"),
    )


def _mmbench_image(cell: str | None, image_by_index: Mapping[str, Image.Image]) -> Image.Image | None:
    value = tsv_cell(cell)
    if value is None:
        return None
    if len(value) <= 64 and value in image_by_index:
        return image_by_index[value]
    try:
        data = base64.b64decode(value, validate=False)
        return Image.open(io.BytesIO(data))
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None


@contextmanager
def _csv_field_limit(limit: int = 2**31 - 1) -> Iterator[None]:
    """Base64 images exceed csv's default 128 KiB field limit; raise it for one read only."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, limit))
    try:
        yield
    finally:
        csv.field_size_limit(old)


# ------------------------------------------------------------------------------------ POPE
