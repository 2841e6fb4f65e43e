"""PointQA / LookTwice-QA readers and paper A's six controlled settings.

Two published formats of the same counting questions ("How many of these are there?" with a
box around one example object, answers 1-7) on Visual Genome images:

- LookTwice-QA (Mani et al. 2020, ``princetonvisualai/pointingqa``): one JSON object
  ``{image_id: [qa, ...]}``; each ``qa`` has ``General_question``, ``Obj_question``,
  ``Super_question``, ``Ans``, ``BBox`` (the Visual Genome object, ``{x, y, w, h, ...}``, or
  a list ``[x, y, w, h]``) and ``Point``. Images are ``{images_dir}/{image_id}.jpg``.
  :func:`load_looktwice`.
- ViP-LLaVA's ``pointQA_twice_*.json`` (the file paper A's code read): a list of records
  with ``id``, ``image`` (a path relative to the image folder), ``bboxes`` (a list of
  ``[left, top, right, bottom]``; the first is the question's), ``answer``,
  ``general_question``, ``obj_question``, ``super_question``. :func:`load_vip_pointqa`.

Question types (paper A, section 4.1): ``"general"`` ("How many of these are there?"),
``"object"`` (names the object: "How many clocks are there?") and ``"super"`` (names its
super-category: "How many vehicles are there?"). :func:`paper_a_settings` builds the six
settings, each question type with a plain image and with the box drawn in red.

Prompt text: ``Sample.question`` is the dataset's question alone. Paper A's code
(``create_question_prompt_direct_pointQA`` in ``jing-bi/visual-head``) sent
``question + " The exemplary object is within the rectangle."`` followed by LLaVA's
``"\\nAnswer the question using a single word or phrase."``; pass
``question_suffix=RECTANGLE_HINT`` to add the first part.

:func:`looktwice_candidates` is the LookTwice-QA parsing itself, for readers that build other
samples from the same file (:func:`vh_lens.data.load_pointqa_counting`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vh_lens.data._images import (
    SampleSet,
    check_limit,
    check_on_missing,
    collect_samples,
    make_sample,
    read_json,
)
from vh_lens.data.sample import Box, Sample, as_box
from vh_lens.data.visual_prompt import with_visual_prompt

QuestionType = Literal["general", "object", "super"]
QUESTION_TYPES: tuple[str, ...] = ("general", "object", "super")
PAPER_A_SETTINGS: tuple[str, ...] = (
    "general",
    "general+visual",
    "object",
    "object+visual",
    "super",
    "super+visual",
)
FORMATS: tuple[str, ...] = ("looktwice", "vip-pointqa")

RECTANGLE_HINT = "The exemplary object is within the rectangle."
"""The sentence paper A's code appended to every PointQA question (plain and visual)."""

# Accepted field names, compared case-insensitively; the first is LookTwice-QA's spelling.
_QUESTION_KEYS: dict[str, tuple[str, ...]] = {
    "general": ("General_question",),
    "object": ("Obj_question", "object_question"),
    "super": ("Super_question",),
}
_ANSWER_KEYS = ("Ans", "answer")
_BBOX_KEYS = ("BBox",)
_MISSING_FIELD = "{where}: no {what} field (accepted: {accepted}; found: {found})"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_VG_SUBDIRS = ("", "VG_100K", "VG_100K_2")


def check_question_type(question: str) -> None:
    """Raise ``ValueError`` unless ``question`` is one of :data:`QUESTION_TYPES`."""
    if question not in QUESTION_TYPES:
        raise ValueError(f"question must be one of {QUESTION_TYPES}, got {question!r}")


@dataclass(frozen=True)
class RecordWording:
    """How messages about one LookTwice-QA record read (see :func:`looktwice_candidates`).

    Attributes:
        where: Names the record; a format string with ``{path}``, ``{image_id}`` and ``{k}``
            (the record's position in its image's list).
        missing: Says a required field is absent; a format string with ``{where}``, ``{key}``
            (the field's LookTwice-QA name, e.g. ``Obj_question``), ``{what}`` (e.g. ``object
            question``), ``{accepted}`` (the names tried) and ``{found}`` (the record's keys).

    Example:
        >>> RecordWording().where.format(path="qa.json", image_id="7", k=0)
        'qa.json: image 7 QA 0'
    """

    where: str = "{path}: image {image_id} QA {k}"
    missing: str = _MISSING_FIELD

    def __post_init__(self) -> None:
        try:
            self.where.format(path="p", image_id="i", k=0)
            self.missing.format(where="w", key="k", what="w", accepted="a", found=[])
        except (AttributeError, IndexError, KeyError, ValueError) as err:
            raise ValueError(f"RecordWording: bad format string ({type(err).__name__}: {err})") from err


LOOKTWICE_WORDING = RecordWording()
""":func:`load_looktwice`'s wording: ``"qa.json: image 7 QA 0: no object question field (accepted: ...)"``."""


def xywh_to_box(bbox: Mapping[str, Any] | Iterable[float]) -> Box:
    """Convert a ``{x, y, w, h}`` mapping (or ``[x, y, w, h]`` list) to ``(left, top, right, bottom)``.

    Example:
        >>> xywh_to_box({"x": 10, "y": 20, "w": 30, "h": 5})
        (10.0, 20.0, 40.0, 25.0)
    """
    if isinstance(bbox, Mapping):
        lowered = {str(k).lower(): v for k, v in bbox.items()}
        try:
            x, y, w, h = (float(lowered[k]) for k in ("x", "y", "w", "h"))
        except KeyError as err:
            raise ValueError(f"bbox mapping needs keys x, y, w, h; got {sorted(bbox)}") from err
    else:
        values = [float(v) for v in bbox]
        if len(values) != 4:
            raise ValueError(f"bbox list must be [x, y, w, h], got {values}")
        x, y, w, h = values
    return (x, y, x + w, y + h)


def _point(point: Any) -> tuple[float, float] | None:
    if point is None:
        return None
    if isinstance(point, Mapping):
        lowered = {str(k).lower(): v for k, v in point.items()}
        return (float(lowered["x"]), float(lowered["y"]))
    x, y = list(point)[:2]
    return (float(x), float(y))


def _field(
    record: Mapping[str, Any],
    names: tuple[str, ...],
    what: str,
    where: str,
    missing: str = _MISSING_FIELD,
    *,
    allow_null: bool = True,
) -> Any:
    """The value of the first of ``names`` present in ``record`` (keys compared case-insensitively).

    Without ``allow_null``, a ``null`` or blank value counts as absent. The error is
    ``missing`` formatted as :class:`RecordWording` describes.
    """
    lowered = {str(k).lower(): k for k in record}
    for name in names:
        if name.lower() in lowered:
            value = record[lowered[name.lower()]]
            if allow_null or not (value is None or (isinstance(value, str) and not value.strip())):
                return value
            break
    accepted = ", ".join(name.lower() for name in names)
    found = sorted(str(k) for k in record)
    raise ValueError(missing.format(where=where, key=names[0], what=what, accepted=accepted, found=found))


def _questions(record: Mapping[str, Any]) -> dict[str, str]:
    """All question types present in ``record``, by type."""
    lowered = {str(k).lower(): k for k in record}
    found = {}
    for qtype, names in _QUESTION_KEYS.items():
        for name in names:
            if name.lower() in lowered:
                found[qtype] = str(record[lowered[name.lower()]])
                break
    return found


def _vg_image_path(images_dir: Path, image_id: str) -> Path:
    """``images_dir/{image_id}.jpg``, or the first existing variant (other extension, VG_100K[_2]/)."""
    default = images_dir / f"{image_id}.jpg"
    if default.is_file():
        return default
    for subdir in _VG_SUBDIRS:
        for ext in _IMAGE_EXTENSIONS:
            candidate = images_dir / subdir / f"{image_id}{ext}"
            if candidate.is_file():
                return candidate
    return default


def _read_image_ids(image_ids: Iterable[str | int] | str | Path | None) -> set[str] | None:
    if image_ids is None:
        return None
    if isinstance(image_ids, (str, Path)):
        ids = read_json(Path(image_ids))
        if not isinstance(ids, list):
            raise ValueError(f"{image_ids} must hold a JSON list of image ids, got {type(ids).__name__}")
        image_ids = ids
    return {str(i) for i in image_ids}


def load_looktwice(
    path: str | Path,
    images_dir: str | Path,
    question: QuestionType = "general",
    visual_prompt: bool = False,
    on_missing: Literal["error", "skip"] = "error",
    limit: int | None = None,
    *,
    image_ids: Iterable[str | int] | str | Path | None = None,
    question_suffix: str = "",
    verify_images: bool = False,
) -> SampleSet:
    """Read LookTwice-QA's published JSON into samples of one question type.

    Args:
        path: The JSON file ``{image_id: [qa, ...]}``.
        images_dir: The Visual Genome image folder; the image of ``image_id`` is
            ``{images_dir}/{image_id}.jpg`` (other extensions, and the subfolders ``VG_100K``
            and ``VG_100K_2``, are tried when that file is absent).
        question: ``"general"``, ``"object"`` or ``"super"``.
        visual_prompt: Draw the question's box on the image in red (lazily, at load time).
        on_missing: ``"error"`` raises one :class:`~vh_lens.data.MissingImagesError` listing the
            missing images; ``"skip"`` drops those samples (count in ``n_skipped``, also logged).
        limit: Keep at most this many samples (in file order).
        image_ids: Keep only these images: ids, or the path of a published split file such
            as ``looktwiceqa_test_imgs.json`` (a JSON list of ids).
        question_suffix: Appended to each question after a space (e.g. :data:`RECTANGLE_HINT`).
        verify_images: Also check that every image opens with PIL (slower).

    Returns:
        A :class:`~vh_lens.data.SampleSet`. Each sample's ``box`` is ``(x, y, x + w, y + h)``;
        ``metadata`` holds ``image_id``, ``qa_index`` (position in that image's list),
        ``sample_id`` (``"{image_id}/{qa_index}"``, shared by the six settings),
        ``question_type``, ``questions`` (all three texts), ``point`` (``(x, y)`` or ``None``),
        ``visual_prompt``, ``dataset`` (``"looktwiceqa"``) and ``source`` (the JSON path).

    Raises:
        ValueError: bad argument, or a record lacks a required field or has a bad one (the
            message names the record and the field).
        MissingImagesError: ``on_missing="error"`` and some image is missing.

    Example:
        >>> samples = load_looktwice("looktwiceqa_dataset.json", "VG/images", question="object")  # doctest: +SKIP
        >>> samples[0].question, samples[0].answer, samples[0].box  # doctest: +SKIP
        ('How many clocks are there?', '2', (120.0, 40.0, 160.0, 90.0))
    """
    check_question_type(question)
    check_on_missing(on_missing)
    check_limit(limit)
    candidates = looktwice_candidates(path, images_dir, question, image_ids=image_ids, question_suffix=question_suffix)
    return _collect(candidates, path, on_missing, limit, verify_images, visual_prompt)


def looktwice_candidates(
    path: str | Path,
    images_dir: str | Path,
    question: QuestionType = "general",
    *,
    image_ids: Iterable[str | int] | str | Path | None = None,
    question_suffix: str = "",
    wording: RecordWording = LOOKTWICE_WORDING,
) -> Iterator[tuple[Sample, Path]]:
    """LookTwice-QA's records as ``(sample, image_path)`` pairs, before any image is checked.

    The parsing behind :func:`load_looktwice`, for readers that turn the same records into
    other samples (:func:`vh_lens.data.load_pointqa_counting`) and then hand the pairs to
    :func:`vh_lens.data._images.collect_samples`. The file is read, and its top level checked,
    when this is called; records are parsed one by one as the iterator is consumed.

    Args:
        path: The JSON file ``{image_id: [qa, ...]}``.
        images_dir: The Visual Genome image folder (see :func:`load_looktwice`).
        question: ``"general"``, ``"object"`` or ``"super"``.
        image_ids: Keep only these images (ids, or the path of a JSON list of ids).
        question_suffix: Appended to each question after a space.
        wording: How messages name a record and an absent field.

    Returns:
        The samples as :func:`load_looktwice` describes them (``visual_prompt`` ``False``),
        each with the path of its image file (which may not exist).

    Raises:
        ValueError: bad argument, the file is not LookTwice-QA's format, or (while iterating)
            a record lacks a required field or has a bad one.

    Example:
        >>> pairs = looktwice_candidates("looktwiceqa_dataset.json", "VG/images", "object")  # doctest: +SKIP
        >>> sample, image_path = next(pairs)  # doctest: +SKIP
    """
    check_question_type(question)
    path, images_dir = Path(path), Path(images_dir)
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{path}: expected a JSON object mapping image ids to QA lists ({{image_id: [qa, ...]}}, "
            f"LookTwice-QA's format), got {type(data).__name__}"
            + (
                " (a list: is this ViP-LLaVA's pointQA_twice file? use load_vip_pointqa)"
                if isinstance(data, list)
                else ""
            )
        )
    keep_ids = _read_image_ids(image_ids)

    def pairs() -> Iterator[tuple[Sample, Path]]:
        for image_id, qas in data.items():
            image_id = str(image_id)
            if keep_ids is not None and image_id not in keep_ids:
                continue
            if not isinstance(qas, list):
                raise ValueError(f"{path}: entry {image_id!r} must be a list of QA records, got {type(qas).__name__}")
            image_path = _vg_image_path(images_dir, image_id)
            for k, qa in enumerate(qas):
                where = wording.where.format(path=path, image_id=image_id, k=k)
                if not isinstance(qa, Mapping):
                    raise ValueError(f"{where}: expected an object, got {type(qa).__name__}")
                text = _field(
                    qa, _QUESTION_KEYS[question], f"{question} question", where, wording.missing, allow_null=False
                )
                answer = _field(qa, _ANSWER_KEYS, "answer", where, wording.missing)
                bbox = _field(qa, _BBOX_KEYS, "bbox", where, wording.missing)
                try:
                    box = xywh_to_box(bbox)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{where}: BBox {bbox!r} is not {{x, y, w, h}} or [x, y, w, h] ({err})") from err
                raw_point = next((qa[key] for key in qa if str(key).lower() == "point"), None)
                try:
                    point = _point(raw_point)
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{where}: Point {raw_point!r} is not {{x, y}} or [x, y]") from err
                sample = make_sample(
                    where,
                    image=image_path,
                    question=_with_suffix(str(text), question_suffix),
                    answer=None if answer is None else str(answer),
                    box=box,
                    metadata={
                        "dataset": "looktwiceqa",
                        "source": str(path),
                        "image_id": image_id,
                        "qa_index": k,
                        "sample_id": f"{image_id}/{k}",
                        "question_type": question,
                        "questions": _questions(qa),
                        "point": point,
                        "visual_prompt": False,
                    },
                )
                yield sample, image_path

    return pairs()


def load_vip_pointqa(
    path: str | Path,
    images_dir: str | Path,
    question: QuestionType = "general",
    visual_prompt: bool = False,
    on_missing: Literal["error", "skip"] = "error",
    limit: int | None = None,
    *,
    question_suffix: str = "",
    verify_images: bool = False,
) -> SampleSet:
    """Read ViP-LLaVA's ``pointQA_twice`` JSON (the file paper A's code used) into samples.

    Args:
        path: The JSON list of records (``id``, ``image``, ``bboxes``, ``answer``,
            ``general_question`` / ``obj_question`` / ``super_question``; key case is ignored,
            ``object_question`` is accepted for ``obj_question``).
        images_dir: The folder the records' ``image`` paths are relative to (absolute paths
            are used as they are).
        question: ``"general"``, ``"object"`` or ``"super"``.
        visual_prompt: Draw the question's box (the first of ``bboxes``) in red, lazily.
        on_missing: ``"error"`` or ``"skip"``, as in :func:`load_looktwice`.
        limit: Keep at most this many samples.
        question_suffix: Appended to each question after a space (e.g. :data:`RECTANGLE_HINT`).
        verify_images: Also check that every image opens with PIL (slower).

    Returns:
        A :class:`~vh_lens.data.SampleSet`; ``box`` is the first of ``bboxes``, as given;
        ``metadata`` holds ``id``, ``sample_id`` (= ``id``), ``image_id`` (the file stem),
        ``question_type``, ``questions``, ``n_boxes``, ``visual_prompt``, ``dataset``
        (``"vip-pointqa"``) and ``source``.

    Raises:
        ValueError: bad argument, or a record lacks a required field (the message names it).
        MissingImagesError: ``on_missing="error"`` and some image is missing.

    Example:
        >>> samples = load_vip_pointqa("pointQA_twice_test.json", "LookTwiceQA/", "super")  # doctest: +SKIP
    """
    check_question_type(question)
    check_on_missing(on_missing)
    check_limit(limit)
    path, images_dir = Path(path), Path(images_dir)
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: ViP-LLaVA pointQA_twice JSON must be a list of records, got {type(data).__name__}"
            + (" (an object: is this LookTwice-QA's file? use load_looktwice)" if isinstance(data, Mapping) else "")
        )

    def candidates() -> Iterator[tuple[Sample, Path]]:
        for i, record in enumerate(data):
            if not isinstance(record, Mapping):
                raise ValueError(f"{path}: record {i} must be an object, got {type(record).__name__}")
            record_id = str(next((record[k] for k in record if str(k).lower() == "id"), i))
            where = f"{path}: record {i} (id {record_id})"
            text = _field(record, _QUESTION_KEYS[question], f"{question} question", where, allow_null=False)
            answer = _field(record, _ANSWER_KEYS, "answer", where)
            image = Path(str(_field(record, ("image",), "image", where, allow_null=False)))
            bboxes = _field(record, ("bboxes", "bbox"), "bboxes", where)
            if isinstance(bboxes, list) and bboxes and isinstance(bboxes[0], (list, tuple)):
                first = bboxes[0]
                n_boxes = len(bboxes)
            else:  # a single box given directly
                first, n_boxes = bboxes, 1
            if not isinstance(first, (list, tuple)) or len(first) != 4:
                raise ValueError(f"{where}: bboxes must be a list of [left, top, right, bottom], got {bboxes!r}")
            image_path = image if image.is_absolute() else images_dir / image
            sample = make_sample(
                where,
                image=image_path,
                question=_with_suffix(str(text), question_suffix),
                answer=None if answer is None else str(answer),
                box=as_box(first, f"{where}: bboxes[0]"),  # a bad coordinate: an error naming the record
                metadata={
                    "dataset": "vip-pointqa",
                    "source": str(path),
                    "id": record_id,
                    "sample_id": record_id,
                    "image_id": image.stem,
                    "question_type": question,
                    "questions": _questions(record),
                    "n_boxes": n_boxes,
                    "visual_prompt": False,
                },
            )
            yield sample, image_path

    return _collect(candidates(), path, on_missing, limit, verify_images, visual_prompt)


def _collect(
    candidates: Iterable[tuple[Sample, Path]],
    path: Path | str,
    on_missing: str,
    limit: int | None,
    verify_images: bool,
    visual_prompt: bool,
) -> SampleSet:
    """Check the images (:func:`~vh_lens.data._images.collect_samples`), then draw the boxes if asked."""
    samples = collect_samples(
        candidates, source=str(path), on_missing=on_missing, verify_images=verify_images, limit=limit
    )
    return with_visual_prompt(samples) if visual_prompt else samples


def _with_suffix(question: str, suffix: str) -> str:
    return f"{question.rstrip()} {suffix.strip()}" if suffix.strip() else question


def paper_a_settings(
    path: str | Path,
    images_dir: str | Path,
    format: Literal["looktwice", "vip-pointqa"] = "looktwice",
    **kwargs: Any,
) -> dict[str, SampleSet]:
    """Paper A's six controlled settings (section 4.1): three question types, plain or visual.

    Keys, in order: ``"general"``, ``"general+visual"``, ``"object"``, ``"object+visual"``,
    ``"super"``, ``"super+visual"``. A ``+visual`` setting holds the same samples (same
    order, ``metadata["sample_id"]``, box and answer) as its plain one, with the box drawn in
    red on the image.

    Args:
        path: The data file.
        images_dir: The image folder.
        format: ``"looktwice"`` (:func:`load_looktwice`) or ``"vip-pointqa"``
            (:func:`load_vip_pointqa`).
        **kwargs: Passed to the reader (``on_missing``, ``limit``, ``question_suffix``,
            ``verify_images``, ``image_ids``); not ``question`` or ``visual_prompt``.

    Returns:
        ``{setting: SampleSet}``.

    Example:
        >>> settings = paper_a_settings("pointQA_twice_test.json", "LookTwiceQA/", format="vip-pointqa")  # doctest: +SKIP
        >>> {k: len(v) for k, v in settings.items()}  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    for fixed in ("question", "visual_prompt"):
        if fixed in kwargs:
            raise ValueError(f"paper_a_settings sets {fixed!r} itself; do not pass it")
    reader = load_looktwice if format == "looktwice" else load_vip_pointqa
    settings: dict[str, SampleSet] = {}
    for qtype in QUESTION_TYPES:
        plain = reader(path, images_dir, question=qtype, visual_prompt=False, **kwargs)  # type: ignore[arg-type]
        settings[qtype] = plain
        settings[f"{qtype}+visual"] = with_visual_prompt(plain)
    return settings
