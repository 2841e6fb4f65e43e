"""A generic reader: one JSON object per line, one sample per object.

Each line holds ``question`` (required), and optionally ``image`` (a path; absent or
``null`` for a text-only sample), ``answer``, ``box`` (``[left, top, right, bottom]`` in
pixels of the original image), ``choices`` (a list of options, in order) and ``metadata``
(an object, merged into the sample's metadata). Every other key goes to the metadata too.
Blank lines are ignored. Example line::

    {"image": "imgs/cat.jpg", "question": "How many cats?", "answer": "2", "box": [4, 8, 60, 90], "split": "val"}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from vh_lens.data._images import SampleSet, check_limit, check_on_missing, collect_samples
from vh_lens.data.sample import Sample

_KNOWN = ("image", "question", "answer", "box", "choices", "metadata")


def load_jsonl(
    path: str | Path,
    images_dir: str | Path | None = None,
    on_missing: Literal["error", "skip"] = "error",
    limit: int | None = None,
    *,
    verify_images: bool = False,
) -> SampleSet:
    """Read a JSON-lines file of questions into samples.

    Args:
        path: The ``.jsonl`` file.
        images_dir: The folder relative ``image`` paths start from; default: the folder that
            holds ``path``. Absolute paths are used as they are.
        on_missing: ``"error"`` raises one :class:`~vh_lens.data.MissingImagesError` listing the
            missing images; ``"skip"`` drops those samples (count in ``n_skipped``, also logged).
            Text-only lines are never dropped.
        limit: Keep at most this many samples (in file order).
        verify_images: Also check that every image opens with PIL (slower).

    Returns:
        A :class:`~vh_lens.data.SampleSet`. ``metadata`` holds the line's other keys, the
        contents of its ``metadata`` object, ``source`` (the file) and ``line`` (1-based line
        number); keys from the file win over ``source`` and ``line``.

    Raises:
        ValueError: a line is not a JSON object or has a bad field (the message gives the
            line number).
        MissingImagesError: ``on_missing="error"`` and some image is missing.

    Example:
        >>> samples = load_jsonl("questions.jsonl", images_dir="images/")  # doctest: +SKIP
        >>> samples[0].question, samples.n_skipped  # doctest: +SKIP
    """
    check_on_missing(on_missing)
    check_limit(limit)
    path = Path(path)
    base = Path(images_dir) if images_dir is not None else path.parent

    def candidates() -> Iterator[tuple[Sample, Path | None]]:
        with path.open(encoding="utf-8") as f:
            for lineno, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not valid JSON: {err}") from err
                if not isinstance(record, Mapping):
                    raise ValueError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
                yield _sample(record, base, where, source=str(path), lineno=lineno)

    return collect_samples(
        candidates(), source=str(path), on_missing=on_missing, verify_images=verify_images, limit=limit
    )


def _sample(
    record: Mapping[str, Any], base: Path, where: str, *, source: str, lineno: int
) -> tuple[Sample, Path | None]:
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string, got {question!r}")
    image = record.get("image")
    image_path: Path | None = None
    if image is not None:
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: 'image' must be a path string or null, got {image!r}")
        image_path = Path(image) if Path(image).is_absolute() else base / image
    answer = record.get("answer")
    choices = record.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ValueError(f"{where}: 'choices' must be a list, got {type(choices).__name__}")
    box = record.get("box")
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        raise ValueError(f"{where}: 'box' must be [left, top, right, bottom], got {box!r}")
    extra = record.get("metadata") or {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"{where}: 'metadata' must be an object, got {type(extra).__name__}")
    metadata = {
        "source": source,
        "line": lineno,
        **extra,
        **{k: v for k, v in record.items() if k not in _KNOWN},
    }
    try:
        sample = Sample(
            image=image_path,
            question=question,
            answer=None if answer is None else str(answer),
            choices=None if choices is None else tuple(str(c) for c in choices),
            box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
            metadata=metadata,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from err
    return sample, image_path
