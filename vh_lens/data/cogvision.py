"""Reader of CogVision-style chain-of-subquestion data (and of its text-only sibling CogQA).

An item is a main question (with its answer and, for CogVision, an image) decomposed into a
chain of subquestions, each with its own answer and one cognitive-function label. Paper B
probes attention heads for these function labels, one sample per subquestion, with the earlier
subquestions and their answers given as context (chain of thought).

Formats read by :func:`load_cogvision`:

* CogQA, exactly as published (``sihuo-design/CognitiveMirrors``, ``dataset/``)::

      [{"question": str, "answer": str,
        "generated": [{"subquestion": str, "answer": str | number, "cognitive_skill": str}]}]

* CogVision-style items: the same, plus an image path per item. Common spellings of the keys
  are accepted (see ``_ITEM_KEYS`` / ``_SUB_KEYS``): ``image`` / ``image_path`` / ``img``,
  ``question`` / ``main_question``, ``generated`` / ``subquestions`` / ``sub_questions`` /
  ``chain``, ``subquestion`` / ``question``, ``cognitive_skill`` / ``function`` /
  ``cognitive_function`` / ``skill`` / ``label``. Keys not used are kept in
  :attr:`CogItem.metadata`.

The file may be a JSON list, a JSON object holding the list under ``"data"``, or JSON lines
(``.jsonl``). Numeric answers (a few CogQA subquestion answers are JSON numbers) become strings.

Example:
    >>> items = load_cogvision("cogqa_balanced_cot_test_data.json")   # doctest: +SKIP
    >>> samples = subquestion_samples(items)                          # one per subquestion
    >>> samples[3].metadata["function"]                               # doctest: +SKIP
    'Retrieval'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vh_lens.data._images import MissingImagesError, check_on_missing, image_problem, read_json
from vh_lens.data.sample import ImageSource, Sample

__all__ = [
    "COGQA_FUNCTIONS",
    "CogItem",
    "SubQuestion",
    "format_chain_prompt",
    "load_cogvision",
    "main_question_samples",
    "subquestion_samples",
]

logger = logging.getLogger(__name__)

COGQA_FUNCTIONS: tuple[str, ...] = (
    "Retrieval",
    "Knowledge Recall",
    "Semantic Understanding",
    "Syntactic Understanding",
    "Math Calculation",
    "Inference",
    "Logical Reasoning",
    "Decision-making",
)
"""The eight cognitive-function labels of CogQA, in the group's order (information extraction
first, then higher-level reasoning). The published train file also carries six subquestions with
other labels (``Induction`` x3, ``Self-Evaluation``, ``Task Comprehension``, ``Lexical
Knowledge``); the reader keeps them as they are, so filter with ``functions=COGQA_FUNCTIONS``."""

_ITEM_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "img", "image_file"),
    "question": ("question", "main_question"),
    "answer": ("answer", "main_answer"),
    "subquestions": ("generated", "subquestions", "sub_questions", "chain"),
    "item_id": ("id", "item_id", "question_id"),
}
_SUB_KEYS: dict[str, tuple[str, ...]] = {
    "question": ("subquestion", "sub_question", "question"),
    "answer": ("answer", "sub_answer"),
    "function": ("cognitive_skill", "function", "cognitive_function", "skill", "label"),
}


@dataclass(frozen=True)
class SubQuestion:
    """One step of a chain: a subquestion, its gold answer and its function label.

    Attributes:
        question: The subquestion text.
        answer: Its gold answer (numbers in the source are turned into strings).
        function: The cognitive-function label (e.g. ``"Retrieval"``).
    """

    question: str
    answer: str
    function: str

    def __post_init__(self) -> None:
        for name in ("question", "answer", "function"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"SubQuestion.{name} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class CogItem:
    """A main question decomposed into a chain of subquestions.

    Attributes:
        image: the image: a path (resolved) as read from a file, an in-memory image (the generated
            CogVision-style shapes items), or ``None`` for a text-only item (CogQA).
        question: The main question.
        answer: The main question's gold answer, if given.
        subquestions: The chain, in order.
        item_id: The source's id, or ``"<file stem>:<index>"`` when the source has none.
        metadata: The item's other keys, as read.
    """

    image: ImageSource | None
    question: str
    answer: str | None
    subquestions: Sequence[SubQuestion]  # stored as a tuple
    item_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"CogItem.question must be a non-empty string, got {self.question!r}")
        subs = tuple(self.subquestions)
        if not subs:
            raise ValueError(f"CogItem {self.item_id!r} has no subquestions")
        if not all(isinstance(s, SubQuestion) for s in subs):
            raise ValueError("CogItem.subquestions must hold SubQuestion objects")
        object.__setattr__(self, "subquestions", subs)

    @property
    def functions(self) -> tuple[str, ...]:
        """The function label of each subquestion, in order."""
        return tuple(s.function for s in self.subquestions)


def load_cogvision(
    path: str | Path,
    images_dir: str | Path | None = None,
    on_missing: Literal["error", "skip"] = "error",
    verify_images: bool = False,
) -> list[CogItem]:
    """Read a CogVision-style (or CogQA) file into :class:`CogItem` objects.

    Args:
        path: The ``.json`` (list, or object with a ``"data"`` list) or ``.jsonl`` file.
        images_dir: Folder that relative image paths are relative to (default: the file's
            folder). Ignored for items without an image.
        on_missing: What to do with an item whose image file is missing (or unreadable):
            ``"error"`` raises one :class:`~vh_lens.data.MissingImagesError` listing them all,
            ``"skip"`` drops those items and logs how many at WARNING.
        verify_images: Also check that each image opens with PIL (header check; slower).

    Returns:
        The items, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MissingImagesError: an image is missing or unreadable and ``on_missing="error"``
            (a ``FileNotFoundError``).
        ValueError: an entry lacks a main question, subquestions, a subquestion's text,
            answer or function label; or ``on_missing`` is not a known option.

    Example:
        >>> items = load_cogvision("/data/cogqa/cogqa_balanced_cot_test_data.json")  # doctest: +SKIP
        >>> len(items), sum(len(it.subquestions) for it in items)                   # doctest: +SKIP
        (148, 713)
    """
    check_on_missing(on_missing)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CogVision file not found: {path}")
    root = Path(images_dir) if images_dir is not None else path.parent
    records = _read_records(path)

    items: list[CogItem] = []
    problems: list[tuple[str, str]] = []
    verdicts: dict[Path, str | None] = {}  # items may share an image: check each file once
    for index, record in enumerate(records):
        item = _parse_item(record, index=index, stem=path.stem, root=root, where=f"{path}[{index}]")
        if item.image is not None:
            image = Path(item.image)
            if image not in verdicts:
                verdicts[image] = image_problem(image, verify_images)
            if verdicts[image] is not None:
                problems.append((str(image), str(verdicts[image])))
                continue
        items.append(item)
    if problems and on_missing == "error":
        raise MissingImagesError(problems, n_checked=len(records), source=f"{path} (images under {root})")
    if problems:
        logger.warning(
            "skipped %d of %d items from %s: missing or unreadable image (first: %s)",
            len(problems),
            len(records),
            path,
            problems[0][0],
        )
    return items


def _read_records(path: Path) -> list[Mapping[str, Any]]:
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        records: Any = [json.loads(line) for line in lines if line.strip()]
    else:
        records = read_json(path)
        if isinstance(records, Mapping) and "data" in records:
            records = records["data"]
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise ValueError(f"{path}: expected a list of objects (or {{'data': [...]}}, or JSON lines)")
    return records


def _pick(record: Mapping[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        if name in record and record[name] is not None:
            return name, record[name]
    return None, None


def _text(value: Any) -> str:
    """Source values as text: numbers (some CogQA answers are JSON numbers) become strings."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise ValueError(f"expected text or a number, got {type(value).__name__}: {value!r}")


def _parse_item(record: Mapping[str, Any], *, index: int, stem: str, root: Path, where: str) -> CogItem:
    used: set[str] = set()

    def take(field_name: str) -> Any:
        key, value = _pick(record, _ITEM_KEYS[field_name])
        if key is not None:
            used.add(key)
        return value

    # "question" doubles as a subquestion key only inside the chain, so items are safe.
    try:
        question = _text(take("question"))
        answer_text = _text(take("answer"))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if not question:
        raise ValueError(f"{where}: no main question (keys {list(record)})")
    answer = _pick(record, _ITEM_KEYS["answer"])[1]
    chain = take("subquestions")
    if not isinstance(chain, list) or not chain:
        raise ValueError(f"{where}: no chain of subquestions (looked for {_ITEM_KEYS['subquestions']})")
    image = take("image")
    item_id = take("item_id")

    subs = []
    for j, sub in enumerate(chain):
        if not isinstance(sub, Mapping):
            raise ValueError(f"{where}.subquestions[{j}]: expected an object, got {sub!r}")
        values = {name: _pick(sub, keys)[1] for name, keys in _SUB_KEYS.items()}
        try:
            subs.append(SubQuestion(**{name: _text(v) for name, v in values.items()}))
        except ValueError as err:
            raise ValueError(f"{where}.subquestions[{j}]: {err}") from err

    if image is not None:
        image = Path(str(image))
        if not image.is_absolute():
            image = root / image
    return CogItem(
        image=image,
        question=question,
        answer=None if answer is None else answer_text,
        subquestions=tuple(subs),
        item_id=str(item_id) if item_id is not None else f"{stem}:{index}",
        metadata={k: v for k, v in record.items() if k not in used},
    )


# --- samples -----------------------------------------------------------------------------

MAIN_QUESTION_PREFIX = "Main question: "
"""Prefix of the main-question line in a chain prompt."""


def format_chain_prompt(
    subquestion: str,
    previous: Iterable[tuple[str, str]] = (),
    main_question: str | None = None,
) -> str:
    """The text of a subquestion prompt with its chain-of-thought context.

    The context follows the CogQA group's prompt (``utils.cot_prompt`` of CognitiveMirrors):
    the main question, then each earlier subquestion and its answer as numbered ``Q{k}:`` /
    ``A{k}:`` lines, then the current subquestion, numbered next. The group's instruction
    boilerplate (a system role and a JSON answer format, written for chat LLMs) is left out:
    the model's own chat template wraps this text. Example for the third subquestion::

        Main question: Lee mows one lawn and charges $33. ...
        Q1: How much does Lee charge for mowing one lawn?
        A1: $33
        Q2: How many lawns did Lee mow last week?
        A2: 16
        Q3: What is the total amount Lee earned from mowing 16 lawns?

    Args:
        subquestion: The current subquestion.
        previous: ``(subquestion, answer)`` pairs of the earlier steps, in order.
        main_question: The main question, or ``None`` to leave its line out.

    Returns:
        The prompt text (no trailing newline).
    """
    lines = [] if main_question is None else [MAIN_QUESTION_PREFIX + main_question.strip()]
    k = 0
    for k, (q, a) in enumerate(previous, start=1):
        lines += [f"Q{k}: {q.strip()}", f"A{k}: {a.strip()}"]
    lines.append(f"Q{k + 1}: {subquestion.strip()}")
    return "\n".join(lines)


def subquestion_samples(
    items: Sequence[CogItem],
    context: Literal["chain", "none"] = "chain",
    include_main_question: bool = True,
    functions: Iterable[str] | None = None,
) -> list[Sample]:
    """One :class:`Sample` per subquestion, for probing.

    Args:
        items: The items (e.g. from :func:`load_cogvision`).
        context: ``"chain"``: the prompt carries the earlier subquestions and answers (see
            :func:`format_chain_prompt`); ``"none"``: the bare subquestion.
        include_main_question: With ``context="chain"``, put the main question first.
        functions: Keep only subquestions with these labels (all when ``None``). The chain
            context still holds every earlier step.

    Returns:
        Samples with ``image`` the item's image, ``question`` the prompt text, ``answer`` the
        subquestion's gold answer and ``metadata``: ``group`` (the item's index in ``items``:
        the unit of train/test splits), ``item_id``, ``sub_index`` (0-based step),
        ``n_subquestions``, ``function``, ``subquestion`` (bare text), ``main_question``,
        ``main_answer``.

    Raises:
        ValueError: ``context`` is not ``"chain"`` or ``"none"``.

    Example:
        >>> samples = subquestion_samples(items, functions=COGQA_FUNCTIONS)  # doctest: +SKIP
    """
    if context not in ("chain", "none"):
        raise ValueError(f"context must be 'chain' or 'none', got {context!r}")
    keep = None if functions is None else set(functions)
    samples = []
    for group, item in enumerate(items):
        for j, sub in enumerate(item.subquestions):
            if keep is not None and sub.function not in keep:
                continue
            if context == "chain":
                previous = [(s.question, s.answer) for s in item.subquestions[:j]]
                main = item.question if include_main_question else None
                prompt = format_chain_prompt(sub.question, previous, main)
            else:
                prompt = sub.question
            samples.append(
                Sample(
                    image=item.image,
                    question=prompt,
                    answer=sub.answer,
                    metadata={
                        "group": group,
                        "item_id": item.item_id,
                        "sub_index": j,
                        "n_subquestions": len(item.subquestions),
                        "function": sub.function,
                        "subquestion": sub.question,
                        "main_question": item.question,
                        "main_answer": item.answer,
                    },
                )
            )
    return samples


def main_question_samples(items: Sequence[CogItem]) -> list[Sample]:
    """One :class:`Sample` per item: the main question and its answer, no chain.

    Metadata: ``group`` (index in ``items``), ``item_id``, ``functions`` (the chain's labels).
    """
    return [
        Sample(
            image=item.image,
            question=item.question,
            answer=item.answer,
            metadata={"group": group, "item_id": item.item_id, "functions": item.functions},
        )
        for group, item in enumerate(items)
    ]
