"""Shared by the data readers: the loaded-sample container and the image-file checks.

Readers build their samples lazily (one generator per file) and hand them to
:func:`collect_samples`, which checks that each image file exists (and, on request, that
it opens), either raises one :class:`MissingImagesError` listing the bad files or drops
those samples, and returns a :class:`SampleSet` recording how many were dropped. No image
is decoded here beyond PIL's header check with ``verify_images=True``, so loading a
benchmark of thousands of samples keeps memory bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from PIL import Image

from vh_lens.data.sample import Sample

logger = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]
ON_MISSING: tuple[str, ...] = ("error", "skip")

_N_LISTED = 5
"""How many bad paths an error message lists."""


class MissingImagesError(FileNotFoundError):
    """Some samples' image files are missing or unreadable.

    Attributes:
        problems: ``(path, reason)`` for every bad file found, in reading order.
        n_checked: How many samples were checked.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], n_checked: int, source: str) -> None:
        self.problems = tuple(problems)
        self.n_checked = n_checked
        listed = "\n".join(f"  {path} ({reason})" for path, reason in self.problems[:_N_LISTED])
        more = len(self.problems) - _N_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.problems)} of {n_checked} samples from {source} have a missing or unreadable "
            f"image:\n{listed}{tail}\nPass on_missing='skip' to drop those samples."
        )


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

    samples: tuple[Sample, ...]
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


def collect_samples(
    candidates: Iterable[tuple[Sample, Path | None]],
    *,
    source: str,
    on_missing: str,
    verify_images: bool = False,
    limit: int | None = None,
) -> SampleSet:
    """Check each candidate's image file and build the :class:`SampleSet`.

    Args:
        candidates: ``(sample, image_path)`` pairs, ``image_path`` ``None`` for text-only
            samples (not checked). Consumed lazily: reading stops once ``limit`` is reached.
        source: Recorded in the result and in messages.
        on_missing: ``"error"``: raise one :class:`MissingImagesError` listing every bad file
            among the samples read; ``"skip"``: drop those samples, log their count at WARNING
            and record it in ``SampleSet.n_skipped``.
        verify_images: Also check that each file opens with PIL (slower).
        limit: Keep at most this many samples. With ``"skip"``, reading continues past dropped
            samples until ``limit`` samples are kept; with ``"error"``, exactly the first
            ``limit`` samples are read and checked.

    Returns:
        The kept samples.

    Raises:
        MissingImagesError: ``on_missing="error"`` and some image is missing or unreadable.
    """
    check_on_missing(on_missing)
    check_limit(limit)
    kept: list[Sample] = []
    problems: list[tuple[str, str]] = []
    verdicts: dict[Path, str | None] = {}  # many samples share one image: check each file once
    for sample, path in candidates:
        n_read = len(kept) if on_missing == "skip" else len(kept) + len(problems)
        if limit is not None and n_read >= limit:
            break
        if path is not None:
            if path not in verdicts:
                verdicts[path] = image_problem(path, verify_images)
            reason = verdicts[path]
            if reason is not None:
                problems.append((str(path), reason))
                continue
        kept.append(sample)
    if problems and on_missing == "error":
        raise MissingImagesError(problems, n_checked=len(kept) + len(problems), source=source)
    if problems:
        logger.warning(
            "skipped %d of %d samples from %s: missing or unreadable image (first: %s)",
            len(problems),
            len(kept) + len(problems),
            source,
            problems[0][0],
        )
    return SampleSet(tuple(kept), n_skipped=len(problems), source=source)
