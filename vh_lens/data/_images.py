"""Shared by the data readers: the loaded-sample container, the image-file checks, JSON reading.

Readers build their samples lazily (one generator per file) and hand them to
:func:`collect_samples`, which checks that each image file exists (and, on request, that
it opens), either raises one :class:`MissingImagesError` listing the bad files or drops
those samples, and returns a :class:`SampleSet` recording how many were dropped. A reader
whose images are not files (MMBench keeps them inline, base64) finds the bad ones itself
and hands them to :func:`finish_samples`, which :func:`collect_samples` ends with too. No
image is decoded here beyond PIL's header check with ``verify_images=True``, so loading a
benchmark of thousands of samples keeps memory bounded.

Messages come in two wordings: by default a detailed one (a count of the samples checked,
then one line per bad file with the reason); with a :class:`OneLineMessage`, one line naming
the first few bad images (the benchmark readers' wording).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from PIL import Image

from vh_lens.data.sample import Sample

logger = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]
ON_MISSING: tuple[str, ...] = ("error", "skip")

_N_LISTED = 5
"""How many bad paths an error message lists."""


@dataclass(frozen=True)
class OneLineMessage:
    """Word a reader's missing-image messages on one line, naming the first few bad images.

    The error reads ``"{source}: {n} {what}: a, b, c, d, e, ... (pass on_missing='skip' to
    drop those samples)"`` and the warning logged with ``on_missing="skip"`` ``"skipped
    {source}: {n} {what}: a, b, ..."``.

    Attributes:
        what: What the count counts, e.g. ``"image files missing under coco/val2014"``.
        relative_to: Bad image paths are named relative to this folder (those inside it).

    Example:
        >>> OneLineMessage("image files missing under vg", relative_to=Path("vg")).describe(
        ...     [("vg/1.jpg", "missing")], source="qa.json")
        'qa.json: 1 image files missing under vg: 1.jpg'
    """

    what: str
    relative_to: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.what, str) or not self.what.strip():
            raise ValueError(f"OneLineMessage.what must be a non-empty string, got {self.what!r}")
        if self.relative_to is not None:
            object.__setattr__(self, "relative_to", Path(self.relative_to))

    def describe(self, problems: Sequence[tuple[str, str]], source: str) -> str:
        """``"{source}: {n} {what}: a, b, ..."`` for ``problems`` (``(path or label, reason)`` pairs)."""
        names = [self._name(path) for path, _ in problems[:_N_LISTED]]
        shown = ", ".join(names) + (", ..." if len(problems) > _N_LISTED else "")
        return f"{source}: {len(problems)} {self.what}: {shown}"

    def _name(self, path: str) -> str:
        if self.relative_to is None:
            return path
        try:
            return str(Path(path).relative_to(self.relative_to))
        except ValueError:
            return path


class MissingImagesError(FileNotFoundError):
    """Some samples' image files are missing or unreadable.

    Attributes:
        problems: ``(path, reason)`` for every bad image found, in reading order; ``path`` is
            the file, or a label such as ``"index 3"`` for an image kept inside the data file.
        n_checked: How many samples were checked.
        source: Where the samples came from.
    """

    def __init__(
        self,
        problems: Sequence[tuple[str, str]],
        n_checked: int,
        source: str,
        *,
        one_line: OneLineMessage | None = None,
    ) -> None:
        self.problems = tuple(problems)
        self.n_checked = n_checked
        self.source = source
        if one_line is not None:
            message = f"{one_line.describe(self.problems, source)} (pass on_missing='skip' to drop those samples)"
        else:
            listed = "\n".join(f"  {path} ({reason})" for path, reason in self.problems[:_N_LISTED])
            more = len(self.problems) - _N_LISTED
            tail = f"\n  ... and {more} more" if more > 0 else ""
            message = (
                f"{len(self.problems)} of {n_checked} samples from {source} have a missing or unreadable "
                f"image:\n{listed}{tail}\nPass on_missing='skip' to drop those samples."
            )
        super().__init__(message)


@dataclass(frozen=True)
class SampleSet(Sequence[Sample]):
    """The samples a reader loaded, with how many it dropped.

    A read-only sequence of :class:`~vh_lens.data.Sample`: ``len``, iteration, indexing and
    slicing work as for a tuple (a slice is again a ``SampleSet`` with the same ``source`` and
    ``n_skipped``); ``list(sample_set)`` gives a plain list.

    Attributes:
        samples: The samples, in file order.
        n_skipped: Samples dropped because their image was missing or unreadable
            (``on_missing="skip"``); 0 otherwise.
        source: Where the samples came from (the file path, or a description).

    Example:
        >>> s = SampleSet((Sample(None, "2+2?", "4"),), n_skipped=0, source="inline")
        >>> len(s), s[0].answer
        (1, '4')
    """

    samples: Sequence[Sample]  # stored as a tuple
    n_skipped: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        samples = tuple(self.samples)
        for i, sample in enumerate(samples):
            if not isinstance(sample, Sample):
                raise ValueError(f"SampleSet.samples[{i}] is {type(sample).__name__}, not Sample")
        object.__setattr__(self, "samples", samples)
        if isinstance(self.n_skipped, bool) or not isinstance(self.n_skipped, int) or self.n_skipped < 0:
            raise ValueError(f"SampleSet.n_skipped must be a non-negative int, got {self.n_skipped!r}")
        object.__setattr__(self, "source", str(self.source))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> SampleSet: ...

    def __getitem__(self, index: int | slice) -> Sample | SampleSet:
        if isinstance(index, slice):
            return SampleSet(self.samples[index], n_skipped=self.n_skipped, source=self.source)
        return self.samples[index]

    def __repr__(self) -> str:
        return f"SampleSet({len(self.samples)} samples, n_skipped={self.n_skipped}, source={self.source!r})"


def check_on_missing(on_missing: str) -> None:
    """Raise ``ValueError`` unless ``on_missing`` is one of :data:`ON_MISSING`."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")


def check_limit(limit: int | None) -> None:
    """Raise ``ValueError`` unless ``limit`` is ``None`` or a non-negative int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")


def image_problem(path: Path, verify: bool) -> str | None:
    """Why the image file at ``path`` cannot be used, or ``None`` if it can.

    Checks existence; with ``verify`` also runs PIL's ``Image.verify()`` (reads the header
    and checks the file's structure without decoding the pixels).
    """
    if not path.is_file():
        return "missing"
    if verify:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            return f"unreadable: {type(err).__name__}: {err}"
    return None


def make_sample(where: str, **fields: Any) -> Sample:
    """``Sample(**fields)``, a ``ValueError`` from it prefixed with ``where`` (the record's location).

    Example:
        >>> make_sample("qa.json line 3", image=None, question="2+2?", answer="4").answer
        '4'
    """
    try:
        return Sample(**fields)
    except (ValueError, TypeError) as err:  # TypeError: a field of the wrong type, where annotations are checked
        raise ValueError(f"{where}: {err}") from err


def read_json(path: Path) -> Any:
    """The JSON value in the file at ``path`` (UTF-8, a byte-order mark allowed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid JSON (the message names the file).
    """
    try:
        with Path(path).open(encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def collect_samples(
    candidates: Iterable[tuple[Sample, Path | None]],
    *,
    source: str,
    on_missing: str,
    verify_images: bool = False,
    limit: int | None = None,
    limit_counts_kept: bool = False,
    one_line: OneLineMessage | None = None,
) -> SampleSet:
    """Check each candidate's image file and build the :class:`SampleSet`.

    Args:
        candidates: ``(sample, image_path)`` pairs, ``image_path`` ``None`` for text-only
            samples (not checked). Consumed lazily: no candidate is drawn once ``limit`` is
            reached.
        source: Recorded in the result and in messages.
        on_missing: ``"error"``: raise one :class:`MissingImagesError` listing every bad file
            among the samples read; ``"skip"``: drop those samples, log their count at WARNING
            and record it in ``SampleSet.n_skipped``.
        verify_images: Also check that each file opens with PIL (slower).
        limit: Keep at most this many samples. With ``"skip"``, reading continues past dropped
            samples until ``limit`` samples are kept; with ``"error"``, exactly the first
            ``limit`` samples are read and checked (see ``limit_counts_kept``).
        limit_counts_kept: With ``"error"`` too, read on past bad samples until ``limit``
            samples are kept (the error then lists every bad one read on the way).
        one_line: Word the error and the warning on one line (:class:`OneLineMessage`)
            instead of the detailed default.

    Returns:
        The kept samples.

    Raises:
        MissingImagesError: ``on_missing="error"`` and some image is missing or unreadable.
    """
    check_on_missing(on_missing)
    check_limit(limit)
    count_kept_only = limit_counts_kept or on_missing == "skip"
    kept: list[Sample] = []
    problems: list[tuple[str, str]] = []
    verdicts: dict[Path, str | None] = {}  # many samples share one image: check each file once
    remaining = iter(candidates)
    while limit is None or (len(kept) if count_kept_only else len(kept) + len(problems)) < limit:
        candidate = next(remaining, None)
        if candidate is None:
            break
        sample, path = candidate
        if path is not None:
            if path not in verdicts:
                verdicts[path] = image_problem(path, verify_images)
            reason = verdicts[path]
            if reason is not None:
                problems.append((str(path), reason))
                continue
        kept.append(sample)
    return finish_samples(kept, problems, source=source, on_missing=on_missing, one_line=one_line)


def finish_samples(
    kept: Iterable[Sample],
    problems: Sequence[tuple[str, str]],
    *,
    source: str,
    on_missing: str,
    one_line: OneLineMessage | None = None,
) -> SampleSet:
    """Act on the bad images a reader found, as ``on_missing`` says, and build the :class:`SampleSet`.

    Args:
        kept: The samples whose image is usable, in file order.
        problems: ``(path or label, reason)`` for each dropped sample, in file order.
        source: Recorded in the result and in messages.
        on_missing: ``"error"`` raises; ``"skip"`` logs the count at WARNING and records it
            in ``SampleSet.n_skipped``.
        one_line: The one-line wording (:class:`OneLineMessage`), or ``None`` for the detailed one.

    Returns:
        The kept samples.

    Raises:
        MissingImagesError: ``on_missing="error"`` and ``problems`` is not empty.
    """
    check_on_missing(on_missing)
    kept = tuple(kept)
    n_checked = len(kept) + len(problems)
    if problems and on_missing == "error":
        raise MissingImagesError(problems, n_checked=n_checked, source=source, one_line=one_line)
    if problems and one_line is not None:
        logger.warning("skipped %s", one_line.describe(problems, source))
    elif problems:
        logger.warning(
            "skipped %d of %d samples from %s: missing or unreadable image (first: %s)",
            len(problems),
            n_checked,
            source,
            problems[0][0],
        )
    return SampleSet(kept, n_skipped=len(problems), source=source)
