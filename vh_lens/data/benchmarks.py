"""Readers of benchmark files in their published formats, into sample sets.

Nothing is downloaded: each reader takes a local annotation file (and an image folder where
the format keeps images apart) and returns a :class:`~vh_lens.data.SampleSet` (a read-only
sequence of :class:`Sample`; ``list(...)`` gives a list). Every reader takes ``limit=`` (the
most samples to return, counted after filtering and after dropping samples whose image is
bad) and ``on_missing="error" | "skip"`` (what to do with a sample whose image is absent or
unreadable: raise one :class:`~vh_lens.data.MissingImagesError`, a ``FileNotFoundError``,
naming the first few, or drop them, log how many and count them in ``n_skipped``). The image
checks are those of every reader (``vh_lens.data._images``); PointQA counting reads the file
with the LookTwice-QA parser of :mod:`vh_lens.data.pointqa`.

Conventions shared by all readers, relied on by :mod:`vh_lens.evaluation.answers`:

- Multiple choice: ``Sample.choices`` holds the options in order and ``Sample.answer`` the
  gold option's letter (``"A"`` for the first option); ``metadata["task"] ==
  "multiple_choice"``.
- Yes/no (POPE): ``Sample.answer`` is ``"yes"`` or ``"no"``; ``metadata["task"] == "yes_no"``.
- Counting (PointQA): ``Sample.answer`` is the count as a string; ``metadata["task"] ==
  "count"`` and ``metadata["answer_range"] == (1, 7)``.
- ``metadata["benchmark"]`` names the source and ``metadata["id"]`` the item's id there.
- ``Sample.answer`` is ``None`` where the file has no gold answer (e.g. MMBench test split).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import random
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vh_lens.data._images import (
    OneLineMessage,
    OnMissing,
    SampleSet,
    check_limit,
    check_on_missing,
    collect_samples,
    finish_samples,
    make_sample,
    read_json,
)
from vh_lens.data.pointqa import QuestionType, RecordWording, check_question_type, looktwice_candidates
from vh_lens.data.sample import Sample

PointQAQuestion = QuestionType

__all__ = [
    "OnMissing",
    "PointQAQuestion",
    "load_mmbench",
    "load_pointqa_counting",
    "load_pope",
    "load_qbench",
    "load_seed_bench",
]

_SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
_POINTQA_COUNTS = range(1, 8)
_POINTQA_WORDING = RecordWording(
    where="{path} image {image_id} entry {k}", missing="{where}: missing field {key!r} (fields: {found})"
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------------- MMBench


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
    path = _check_file(path, "MMBench TSV")
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
            index = _cell(row.get("index"))
            where = f"{path} line {row_number} (index {index})"
            image = _mmbench_image(row.get("image"), image_by_index)
            if image is None:
                problems.append((f"index {index}", "empty or undecodable"))
                continue
            if index is not None:
                image_by_index[index] = image
            options = [(c, value) for c in option_cols if (value := _cell(row.get(c))) is not None]
            if len(options) < 2:
                raise ValueError(f"{where}: fewer than two non-empty options in columns {option_cols}")
            source_letters = [c for c, _ in options]
            answer = _cell(row.get("answer"))
            if answer is not None:
                gold = answer.strip().upper()
                if gold not in source_letters:
                    raise ValueError(f"{where}: answer {answer!r} names no non-empty option {source_letters}")
                answer = chr(ord("A") + source_letters.index(gold))
            question = _cell(row.get("question"))
            if question is None or not question.strip():
                raise ValueError(f"{where}: empty question")
            hint = _cell(row.get("hint"))
            if hint is not None:
                question = f"{hint}\n{question}"
            metadata: dict[str, Any] = {
                "benchmark": "mmbench",
                "task": "multiple_choice",
                "id": _maybe_int(index),
                "index": _maybe_int(index),
                "hint": hint,
                "option_letters": tuple(source_letters),
            }
            metadata |= {k: _cell(v) for k, v in row.items() if k is not None and k not in used}
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
    value = _cell(cell)
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
    path, images_dir = _check_inputs(path, "POPE annotation", images_dir, limit, on_missing)
    if category is None and (match := re.search(r"pope_([A-Za-z]+)", path.stem)) is not None:
        file_category: str | None = match.group(1)
    else:
        file_category = category

    def build(where: str, record: Mapping[str, Any], image: Path) -> Sample:
        question = _required(record, "text", where)
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

    records = _iter_json_records(path)
    return _collect(
        path, images_dir, records, build, lambda r, w: images_dir / str(_required(r, "image", w)), limit, on_missing
    )


# ------------------------------------------------------------------------------ SEED-Bench


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
    path, images_dir = _check_inputs(path, "SEED-Bench JSON", images_dir, limit, on_missing)
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
        return wanted is None or _as_int(record.get("question_type_id")) in wanted

    def build(where: str, record: Mapping[str, Any], image: Path) -> Sample:
        choices = _letter_fields(record, [f"choice_{c}" for c in "abcdefgh"])
        if len(choices) < 2:
            raise ValueError(f"{where}: fewer than two non-empty 'choice_a'.. fields")
        answer = _gold_letter(record.get("answer"), len(choices), where)
        type_id = _as_int(record.get("question_type_id"))
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
            question=_required(record, "question", where),
            answer=answer,
            choices=tuple(choices),
            metadata=metadata,
        )

    def image_path(record: Mapping[str, Any], where: str) -> Path:
        return _find_image(images_dir, str(_required(record, "data_id", where)))

    records = ((f"{path} question {i}", r) for i, r in enumerate(_records_of(data, path)) if keep(r))
    return _collect(path, images_dir, records, build, image_path, limit, on_missing)


# -------------------------------------------------------------------------------- Q-Bench


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
    path, images_dir = _check_inputs(path, "Q-Bench JSON", images_dir, limit, on_missing)
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
            question=_required(record, "question", where),
            answer=answer,
            choices=choices,
            metadata=metadata,
        )

    records = ((f"{path} item {i}", r) for i, r in enumerate(_records_of(data, path)))
    return _collect(
        path, images_dir, records, build, lambda r, w: images_dir / str(_required(r, "img_path", w)), limit, on_missing
    )


# ------------------------------------------------------------------------- PointQA counting


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
    path, images_dir = _check_inputs(path, "LookTwiceQA JSON", images_dir, limit, on_missing)
    looktwice = looktwice_candidates(path, images_dir, question, wording=_POINTQA_WORDING)
    options = n_choices if as_choices else None
    candidates = ((_as_counting(sample, path, options, seed), image) for sample, image in looktwice)
    return collect_samples(
        candidates,
        source=str(path),
        on_missing=on_missing,
        limit=limit,
        limit_counts_kept=True,
        one_line=_files_missing_under(images_dir),
    )


def _as_counting(sample: Sample, path: Path, n_choices: int | None, seed: int) -> Sample:
    """A LookTwice-QA sample as a counting question; multiple choice when ``n_choices`` is given."""
    image_id, k = sample.metadata["image_id"], sample.metadata["qa_index"]
    where = _POINTQA_WORDING.where.format(path=path, image_id=image_id, k=k)
    count = _as_int(sample.answer)
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


# --------------------------------------------------------------------------------- helpers

_Record = Mapping[str, Any]


def _collect(
    path: Path,
    images_dir: Path,
    records: Iterable[tuple[str, _Record]],
    build: Callable[[str, _Record, Path], Sample],
    image_path: Callable[[_Record, str], Path],
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
        one_line=_files_missing_under(images_dir),
    )


def _files_missing_under(images_dir: Path) -> OneLineMessage:
    return OneLineMessage(f"image files missing under {images_dir}", relative_to=images_dir)


def _check_inputs(
    path: str | Path, what: str, images_dir: str | Path, limit: int | None, on_missing: str
) -> tuple[Path, Path]:
    """The annotation file and the image folder, once both exist and ``limit``/``on_missing`` are valid."""
    path, images_dir = _check_file(path, what), _check_dir(images_dir)
    check_limit(limit)
    check_on_missing(on_missing)
    return path, images_dir


def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def _check_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"images folder not found: {path}")
    return path


def _iter_json_records(path: Path) -> Iterator[tuple[str, _Record]]:
    """Objects of a JSON-lines file, or of a JSON array, with a location for messages."""
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(1024).lstrip()
    if head.startswith("["):
        yield from ((f"{path} item {i}", r) for i, r in enumerate(_records_of(read_json(path), path)))
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


def _records_of(data: list[Any], path: Path) -> Iterator[_Record]:
    for i, record in enumerate(data):
        if not isinstance(record, Mapping):
            raise ValueError(f"{path} item {i}: expected a JSON object, got {type(record).__name__}")
        yield record


def _required(record: _Record, key: str, where: str) -> Any:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        fields = sorted(k for k in record if not k.startswith("_"))
        raise ValueError(f"{where}: missing field {key!r} (fields: {fields})")
    return value


def _cell(value: Any) -> str | None:
    """A TSV cell, ``None`` for what LLaVA's ``is_none`` treats as empty ("", nan, none)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    return None if text.strip().lower() in ("", "nan", "none") else text


def _letter_fields(record: _Record, keys: list[str]) -> list[str]:
    """Non-empty option fields in order, stopping at the first absent or empty one."""
    values: list[str] = []
    for key in keys:
        value = _cell(record.get(key))
        if value is None:
            break
        values.append(value)
    return values


def _gold_letter(raw: Any, n_choices: int, where: str) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    letter = str(raw).strip().strip("().").upper()
    if len(letter) != 1 or not "A" <= letter < chr(ord("A") + n_choices):
        raise ValueError(f"{where}: answer {raw!r} is not a letter among the {n_choices} options")
    return letter


def _find_image(images_dir: Path, name: str) -> Path:
    path = images_dir / name
    if path.is_file() or path.suffix.lower() in _IMAGE_SUFFIXES:
        return path
    for suffix in _IMAGE_SUFFIXES:
        candidate = images_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return path


def _as_int(value: Any) -> int | None:
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


def _maybe_int(value: str | None) -> int | str | None:
    return int(value) if value is not None and re.fullmatch(r"[+-]?\d+", value.strip()) else value
