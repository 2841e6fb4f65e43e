"""What the benchmark readers share: argument and file checks, JSON records, TSV cells, option letters.

Used by :mod:`vh_lens.data.mmbench`, :mod:`vh_lens.data.pope`, :mod:`vh_lens.data.seed_bench`,
:mod:`vh_lens.data.qbench` and :mod:`vh_lens.data.pointqa_counting`; the messages name the
file and the record (``"{path} line {n}"``, ``"{path} item {i}"``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vh_lens.data._images import (
    OneLineMessage,
    OnMissing,
    SampleSet,
    check_limit,
    check_on_missing,
    collect_samples,
    read_json,
)
from vh_lens.data.sample import Sample

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Record = Mapping[str, Any]


def collect_records(
    path: Path,
    images_dir: Path,
    records: Iterable[tuple[str, Record]],
    build: Callable[[str, Record, Path], Sample],
    image_path: Callable[[Record, str], Path],
    limit: int | None,
    on_missing: OnMissing,
) -> SampleSet:
    """Build samples from ``(where, record)`` pairs and check each image file exists."""

    def candidates() -> Iterator[tuple[Sample, Path]]:
        for where, record in records:
            image = image_path(record, where)
            yield build(where, record, image), image

    return collect_samples(
        candidates(),
        source=str(path),
        on_missing=on_missing,
        limit=limit,
        limit_counts_kept=True,
        one_line=files_missing_under(images_dir),
    )


def files_missing_under(images_dir: Path) -> OneLineMessage:
    return OneLineMessage(f"image files missing under {images_dir}", relative_to=images_dir)


def check_inputs(
    path: str | Path, what: str, images_dir: str | Path, limit: int | None, on_missing: str
) -> tuple[Path, Path]:
    """The annotation file and the image folder, once both exist and ``limit``/``on_missing`` are valid."""
    path, images_dir = check_file(path, what), _check_dir(images_dir)
    check_limit(limit)
    check_on_missing(on_missing)
    return path, images_dir


def check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _check_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"images folder not found: {path}")
    return path


def iter_json_records(path: Path) -> Iterator[tuple[str, Record]]:
    """Objects of a JSON-lines file, or of a JSON array, with a location for messages."""
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(1024).lstrip()
    if head.startswith("["):
        yield from ((f"{path} item {i}", r) for i, r in enumerate(records_of(read_json(path), path)))
        return
    with path.open(encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_number}: not valid JSON ({err})") from err
            if not isinstance(record, Mapping):
                raise ValueError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
            yield f"{path} line {line_number}", record


def records_of(data: list[Any], path: Path) -> Iterator[Record]:
    for i, record in enumerate(data):
        if not isinstance(record, Mapping):
            raise ValueError(f"{path} item {i}: expected a JSON object, got {type(record).__name__}")
        yield record


def required_field(record: Record, key: str, where: str) -> Any:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        fields = sorted(k for k in record if not k.startswith("_"))
        raise ValueError(f"{where}: missing field {key!r} (fields: {fields})")
    return value


def tsv_cell(value: Any) -> str | None:
    """A TSV cell, ``None`` for what LLaVA's ``is_none`` treats as empty ("", nan, none)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    return None if text.strip().lower() in ("", "nan", "none") else text


def letter_fields(record: Record, keys: list[str]) -> list[str]:
    """Non-empty option fields in order, stopping at the first absent or empty one."""
    values: list[str] = []
    for key in keys:
        value = tsv_cell(record.get(key))
        if value is None:
            break
        values.append(value)
    return values


def gold_letter(raw: Any, n_choices: int, where: str) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    letter = str(raw).strip().strip("().").upper()
    if len(letter) != 1 or not "A" <= letter < chr(ord("A") + n_choices):
        raise ValueError(f"{where}: answer {raw!r} is not a letter among the {n_choices} options")
    return letter


def find_image(images_dir: Path, name: str) -> Path:
    path = images_dir / name
    if path.is_file() or path.suffix.lower() in _IMAGE_SUFFIXES:
        return path
    for suffix in _IMAGE_SUFFIXES:
        candidate = images_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return path


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is one (``3``, ``3.0``, ``"3"``, ``"3.0"``), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (match := re.fullmatch(r"\s*([+-]?\d+)(?:\.0*)?\s*", value)):
        return int(match.group(1))
    return None


def maybe_int(value: str | None) -> int | str | None:
    return int(value) if value is not None and re.fullmatch(r"[+-]?\d+", value.strip()) else value
