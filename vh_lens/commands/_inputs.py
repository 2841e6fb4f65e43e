"""Shared by the commands: checking every sample of a run before anything is written, and
fingerprinting what a run reads.

:func:`screen_samples` prepares each sample alone, exactly as the run will (the model's own
processor, chat template and token geometry), and collects every problem: an image that is
missing or does not decode, a box that is not finite or lies outside its image, a prompt longer
than the model's context, an image the token geometry cannot place. All bad items are reported
at once (the first :data:`N_LISTED` by file and line, or item, then a count), or, with
``--skip-bad``, dropped with a count the command prints and records. This costs one extra
preprocessing pass (processor and vision tower, no language model) per sample.

:func:`input_fingerprint` is what a run records of its inputs (:mod:`vh_lens.core.fingerprint`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

N_LISTED = 10
"""How many bad items an error message names."""


class BadInputError(ValueError):
    """Some items of a run's data cannot be used; ``problems`` lists ``(where, why)`` for each."""

    def __init__(self, problems: Sequence[tuple[str, str]], n_items: int, source: str) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(f"{where}: {why}" for where, why in self.problems[:N_LISTED])
        more = len(self.problems) - N_LISTED
        tail = f"; ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.problems)} of {n_items} items of {source} cannot be used: {shown}{tail} "
            "(pass --skip-bad to leave them out)"
        )


@dataclass(frozen=True)
class Screened:
    """The samples a run keeps, and what it left out.

    Attributes:
        samples: the usable samples, in order.
        skipped: ``(where, why)`` of each item left out (``--skip-bad``).
    """

    samples: list[Any]
    skipped: tuple[tuple[str, str], ...] = ()

    def record(self) -> dict[str, Any]:
        """What a run's metadata records about the left-out items."""
        return {"n_skipped_bad": len(self.skipped), "skipped_bad": [list(p) for p in self.skipped[:100]]}


def sample_where(sample: Any, index: int) -> str:
    """Where ``sample`` came from: ``file:line``, ``file item ID``, or ``item INDEX``."""
    meta = getattr(sample, "metadata", None) or {}
    source = meta.get("source")
    if source is not None and meta.get("line") is not None:
        return f"{source}:{meta['line']}"
    for key in ("sample_id", "id", "question_id", "index"):
        if meta.get(key) is not None:
            return f"{source or 'data'} item {meta[key]!s} (#{index})"
    return f"{source} item #{index}" if source is not None else f"item #{index}"


def sample_problem(
    model: Any,
    sample: Any,
    *,
    format_question: Callable[[Any], str] | None = None,
    with_answers: bool = False,
    extra_tokens: int = 0,
) -> str | None:
    """Why ``sample`` cannot be run on ``model``, or ``None`` if it can (see the module doc)."""
    import torch

    from vh_lens.core.layout import check_box

    try:
        with torch.inference_mode():
            batch = model.prepare_samples([sample], with_answers=with_answers, format_question=format_question)
        layout = batch.layout[0]
        if sample.box is not None:
            if layout.image_size is None:
                return "has a box but no image"
            check_box(sample.box, layout.image_size)
        n = int(batch.input_ids.shape[1]) + extra_tokens
        n_ctx = int(model.cfg.n_ctx)
        if n > n_ctx:
            return f"needs {n} positions, more than the model's context of {n_ctx}"
    except torch.OutOfMemoryError:
        raise
    except (ValueError, OSError, RuntimeError, SyntaxError, TypeError, KeyError, IndexError) as err:
        return f"{type(err).__name__}: {err}" if not isinstance(err, (ValueError, OSError)) else str(err)
    return None


def screen_samples(
    model: Any,
    samples: Sequence[Any],
    *,
    skip_bad: bool,
    source: str,
    command: str,
    format_question: Callable[[Any], str] | None = None,
    with_answers: bool = False,
    extra_tokens: int = 0,
) -> Screened:
    """Check every sample (:func:`sample_problem`); refuse them all at once, or drop the bad ones.

    Raises:
        BadInputError: some sample is bad and ``skip_bad`` is false, or every sample is bad.
    """
    kept, problems = [], []
    for i, sample in enumerate(samples):
        why = sample_problem(
            model, sample, format_question=format_question, with_answers=with_answers, extra_tokens=extra_tokens
        )
        if why is None:
            kept.append(sample)
        else:
            problems.append((sample_where(sample, i), why))
    if problems and (not skip_bad or not kept):
        raise BadInputError(problems, len(samples), source)
    if problems:
        print(
            f"vh-lens {command}: left out {len(problems)} of {len(samples)} bad items (--skip-bad); first: "
            f"{problems[0][0]}: {problems[0][1]}",
            file=sys.stderr,
        )
    return Screened(kept, tuple(problems))


def image_paths(samples: Iterable[Any]) -> list[Path]:
    """The image files ``samples`` read (paths, and the sources of drawn-box images)."""
    paths: set[Path] = set()
    for sample in samples:
        image = getattr(sample, "image", None)
        for _ in range(4):  # a BoxedImage wraps its source (which may be another wrapper)
            if isinstance(image, (str, os.PathLike)):
                paths.add(Path(image))
                break
            image = getattr(image, "source", None)
            if image is None:
                break
    return sorted(paths)


def input_fingerprint(
    model_dir: Path | None, data: Path | None, samples: Iterable[Any], mode: str = "sample"
) -> dict[str, Any]:
    """What a run read: fingerprints of the checkpoint, the data file and the image files.

    Returns:
        ``{"model": fingerprint_checkpoint(...) or None, "data": ..., "images": ...}`` with
        :mod:`vh_lens.core.fingerprint`'s fingerprints (``mode`` for the checkpoint's).
    """
    from vh_lens.core.fingerprint import fingerprint_checkpoint, fingerprint_files

    return {
        "model": None if model_dir is None else fingerprint_checkpoint(model_dir, mode),  # type: ignore[arg-type]
        "data": None if data is None else fingerprint_files([data]),
        "images": fingerprint_files(p for p in image_paths(samples) if p.is_file()),
    }


def changed_inputs(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Which inputs differ between two :func:`input_fingerprint` results, one phrase per file.

    Images are compared where both runs read them (a run with a larger ``--limit`` reads more).
    """
    from vh_lens.core.fingerprint import changed_files

    out = []
    for part, label in (("model", "checkpoint file"), ("data", "data file"), ("images", "image")):
        a, b = saved.get(part), now.get(part)
        if part == "images" and a is not None and b is not None:  # a larger --limit reads more images
            a, b = ({k: v for k, v in d.items() if k in a and k in b} for d in (a, b))
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{part} {'now' if a is None else 'no longer'} fingerprinted")
            continue
        out += [f"{label} {change}" for change in changed_files(a, b)]
    return out


def add_input_arguments(parser: Any) -> None:
    """``--skip-bad`` and ``--fingerprint``, shared by the commands that read data."""
    parser.add_argument(
        "--skip-bad", action="store_true",
        help="leave out items whose image, box or prompt cannot be used (their count is printed and recorded) "
        "instead of refusing the run",
    )  # fmt: skip
    parser.add_argument(
        "--fingerprint", choices=("sample", "full"), default="sample",
        help="how the checkpoint's weights are fingerprinted in the run's record: sizes, headers and sampled bytes "
        "(default, cheap) or every byte hashed",
    )  # fmt: skip


def summary_fingerprint(inputs: dict[str, Any]) -> dict[str, Any]:
    """:func:`input_fingerprint` with the images folded into one count and digest (for result metadata)."""
    import hashlib
    import json

    images = inputs.get("images") or {}
    digest = hashlib.sha256(json.dumps(images, sort_keys=True).encode("utf-8")).hexdigest()
    return {**inputs, "images": {"n_files": len(images), "sha256_of_list": digest}}


def check_data_file(path: Path, what: str = "data file") -> None:
    """Raise a clear error unless ``path`` is a file (a folder is not "missing").

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is a folder or another non-file.
    """
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the file itself (e.g. {path}/questions.jsonl)")
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
