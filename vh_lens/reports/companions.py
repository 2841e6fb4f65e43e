"""What a scan's report can be given beside its own scores: the other scan of a plain vs
visual-prompt pair (``vh-lens scan --compare``) and a logit-lens result (``--lens``).

:func:`prompt_pair` orders two scans as ``(plain, visual_prompt)`` and refuses two scans that
are not such a pair; :func:`check_prompt_pair` makes the same check before a scan runs (from
what the scan will record), so that ``vh-lens scan --compare`` is refused before anything is
written. :func:`load_companions` reads the folders the options name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

__all__ = ["check_companions", "check_lens", "check_prompt_pair", "load_companions", "prompt_pair"]


def _scores_folder(path: Path) -> Path:
    for folder in (path, path / "scores"):
        if (folder / "metadata.json").is_file():
            return folder
    raise FileNotFoundError(f"no saved VisualHeadScores in {path} or {path / 'scores'}")


def _has_visual_prompt(scores: VisualHeadScores) -> bool:
    flag = scores.metadata.get("visual_prompt")
    if isinstance(flag, bool):  # recorded by vh-lens scan
        return flag
    data = str(scores.metadata.get("data", ""))
    return "visual prompt" in data or "box drawn" in data


def _data_digests(scores: VisualHeadScores) -> list[str] | None:
    """The SHA-256 of the data files a scan read (``metadata["inputs"]["data"]``), or ``None``."""
    inputs = scores.metadata.get("inputs")
    data = inputs.get("data") if isinstance(inputs, Mapping) else None
    if not isinstance(data, Mapping):
        return None
    return sorted(str(v.get("sha256")) for v in data.values() if isinstance(v, Mapping))


def prompt_pair(
    scores: VisualHeadScores, other: VisualHeadScores | str | os.PathLike[str]
) -> tuple[VisualHeadScores, VisualHeadScores]:
    """``(plain, visual_prompt)`` of two scans of one model and data, for :func:`write_scan_report`.

    Which scan drew the box is read from the scores' metadata as ``vh-lens scan`` writes it
    (``"visual_prompt"``; else ``"data"`` naming ``"visual prompt"``, or ``"box drawn"`` for
    the demo).

    Args:
        scores: one scan.
        other: the other scan, or the folder it was saved to (a ``vh-lens scan --out`` folder
            or its ``scores/`` folder).

    Raises:
        FileNotFoundError: ``other`` is a folder without saved scores.
        ValueError: the scans differ in shape, model, data file (content), question type or
            number of samples, or not exactly one of them has the visual prompt.
    """
    if not isinstance(other, VisualHeadScores):
        other = VisualHeadScores.load(_scores_folder(Path(other)))
    if (scores.n_layers, scores.n_heads) != (other.n_layers, other.n_heads):
        raise ValueError(
            f"the scans differ in shape: {scores.n_layers}x{scores.n_heads} vs {other.n_layers}x{other.n_heads}"
        )
    models = (scores.metadata.get("model"), other.metadata.get("model"))
    if None not in models and models[0] != models[1]:
        raise ValueError(f"the scans are of different models: {models[0]} and {models[1]}")
    digests = (_data_digests(scores), _data_digests(other))
    if None not in digests and digests[0] != digests[1]:
        raise ValueError("the scans read different data files (their SHA-256 differ): scan one file with and without "
                         "--visual-prompt")  # fmt: skip
    questions = (scores.metadata.get("question"), other.metadata.get("question"))
    if None not in questions and questions[0] != questions[1]:
        raise ValueError(f"the scans ask different question types: {questions[0]} and {questions[1]}")
    if scores.count != other.count:
        raise ValueError(f"the scans have different numbers of samples: {scores.count} and {other.count}")
    flags = (_has_visual_prompt(scores), _has_visual_prompt(other))
    if flags[0] == flags[1]:
        which = "both" if flags[0] else "neither"
        raise ValueError(
            f"{which} of the scans has the visual prompt (metadata 'visual_prompt' or 'data'); need one plain, one visual"
        )
    return (other, scores) if flags[0] else (scores, other)


def check_prompt_pair(
    other: VisualHeadScores, *, n_layers: int, n_heads: int, count: int, metadata: Mapping[str, Any]
) -> None:
    """Refuse, before a scan runs, a ``--compare`` scan that :func:`prompt_pair` would refuse after it.

    The scan to come is stood in for by empty scores of its shape, sample count and metadata.

    Raises:
        ValueError: as :func:`prompt_pair`.
    """
    zeros = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in METRICS}
    prompt_pair(VisualHeadScores(zeros, dict(zeros), count, metadata=dict(metadata)), other)


def check_lens(lens: Any, n_layers: int) -> None:
    """Refuse a logit-lens result of a model with another number of layers than the scan's.

    Raises:
        ValueError: the layer counts differ.
    """
    if int(lens.n_layers) != int(n_layers):
        raise ValueError(f"the logit-lens result has {lens.n_layers} layers, the scanned model {n_layers}")


def load_companions(
    compare: str | os.PathLike[str] | None = None, lens: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """``{"compare": VisualHeadScores, "lens": LogitLensResult}`` (those named) from their output folders.

    Args:
        compare: a ``vh-lens scan --out`` folder or its ``scores/``.
        lens: a ``vh-lens lens --out`` folder or its ``lens/``.

    Raises:
        FileNotFoundError: a folder holds no such result (one line naming the option).
        ValueError: what is there cannot be read.
    """
    out: dict[str, Any] = {}
    if compare is not None:
        try:
            out["compare"] = VisualHeadScores.load(_scores_folder(Path(compare)))
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"--compare {compare}: {err}") from None
    if lens is not None:
        from vh_lens.analysis.logit_lens import LogitLensResult

        path = Path(lens)
        folder = path / "lens" if (path / "lens" / "metadata.json").is_file() else path
        try:
            out["lens"] = LogitLensResult.load(folder)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise type(err)(f"--lens {lens}: no saved logit-lens result in {path} or {path / 'lens'} ({err})") from None
    return out


def check_companions(
    companions: Mapping[str, Any], *, n_layers: int, n_heads: int, count: int, metadata: Mapping[str, Any]
) -> None:
    """Refuse, before a scan runs, companions its report could not use (:func:`check_prompt_pair`, :func:`check_lens`).

    Raises:
        ValueError: one line, starting with the option (``--compare: ...``, ``--lens: ...``).
    """
    if "compare" in companions:
        try:
            check_prompt_pair(companions["compare"], n_layers=n_layers, n_heads=n_heads, count=count, metadata=metadata)
        except ValueError as err:
            raise ValueError(f"--compare: {err}") from None
    if "lens" in companions:
        try:
            check_lens(companions["lens"], n_layers)
        except ValueError as err:
            raise ValueError(f"--lens: {err}") from None
