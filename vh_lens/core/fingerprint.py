"""Content fingerprints of a run's inputs: the checkpoint folder, the data file, the images.

A run records what it read, so that a resumed run can refuse to mix two models or two data sets
that were swapped under the same paths (``vh-lens scan`` compares them before continuing from its
checkpoint), and so that saved results say which files they came from.

- :func:`fingerprint_checkpoint` fingerprints every file of a checkpoint folder. In
  ``mode="sample"`` (the default) a ``.safetensors`` file is fingerprinted by its size, its whole
  header (the names, dtypes, shapes and offsets of every tensor, and the metadata) and a SHA-256
  of sampled bytes: the first, middle and last 4 KiB of every tensor's data plus 64 blocks of
  4 KiB evenly spaced over the file. That reads about 1 MiB per thousand tensors, whatever the
  file's size. Every other file (config, tokenizer, processor files) is hashed whole.
  ``mode="full"`` hashes every file whole (SHA-256 of all bytes).
- :func:`fingerprint_files` hashes a list of files whole (data files and images are small).
- :func:`changed_files` compares two fingerprints and says which files differ, in words.

What a sampled fingerprint can miss: a change that keeps the file size and the header and
touches only bytes that are not sampled, i.e. the interior of a tensor away from its first,
middle and last 4 KiB and away from the evenly spaced blocks (for example a few weights edited
in place, or a tensor changed only in part). Any re-training, fine-tuning, re-quantisation, a
different dtype or shape, or a tensor replaced whole is caught. Use ``mode="full"`` when that
matters (it reads every byte: seconds per GiB).

Example:
    >>> fp = fingerprint_checkpoint("/models/llava-1.5-7b-hf")          # doctest: +SKIP
    >>> changed_files(fp, fingerprint_checkpoint("/models/llava-1.5-7b-hf"))  # doctest: +SKIP
    []
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

__all__ = ["changed_files", "fingerprint_checkpoint", "fingerprint_files", "MODES"]

MODES = ("sample", "full")
_BLOCK = 4096
_SPACED_BLOCKS = 64
_CHUNK = 8 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sampled_safetensors(path: Path, size: int) -> dict[str, Any]:
    """Size, header hash and sampled-bytes hash of a safetensors file (see the module doc)."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (n_header,) = struct.unpack("<Q", raw)
        if n_header > size - 8:
            raise ValueError(f"{path} is not a safetensors file (header length {n_header} > file size {size})")
        header_bytes = f.read(n_header)
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a safetensors file (header is not JSON: {err})") from err
        if not isinstance(header, dict):
            raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
        data_start = 8 + n_header
        offsets: set[int] = set()
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            begin, end = (int(v) for v in info.get("data_offsets", (0, 0)))
            if end <= begin:
                continue
            for at in (begin, (begin + end) // 2, end - _BLOCK):
                offsets.add(data_start + max(begin, min(at, end - _BLOCK)))
        span = max(size - _BLOCK, 0)
        offsets.update(span * i // (_SPACED_BLOCKS - 1) for i in range(_SPACED_BLOCKS))
        h = hashlib.sha256()
        for at in sorted(offsets):
            f.seek(at)
            h.update(at.to_bytes(8, "little"))
            h.update(f.read(_BLOCK))
    return {
        "size": size,
        "header_sha256": hashlib.sha256(header_bytes).hexdigest(),
        "sample_sha256": h.hexdigest(),
    }


def fingerprint_checkpoint(
    folder: str | os.PathLike[str], mode: Literal["sample", "full"] = "sample"
) -> dict[str, Any]:
    """A fingerprint of every file of a checkpoint folder (top level; hidden files left out).

    Args:
        folder: the checkpoint folder.
        mode: ``"sample"`` (default): safetensors files by size, header and sampled bytes
            (cheap; see the module doc for what it can miss), other files hashed whole;
            ``"full"``: every file hashed whole.

    Returns:
        ``{"mode": mode, "files": {file name: {"size": ..., "sha256": ...} or
        {"size": ..., "header_sha256": ..., "sample_sha256": ...}}}`` (JSON-serialisable).

    Raises:
        ValueError: bad ``mode``, or a ``.safetensors`` file whose header cannot be read.
        FileNotFoundError: ``folder`` is not a folder.

    Example:
        >>> fingerprint_checkpoint("/models/llava-1.5-7b-hf")["files"]["config.json"]  # doctest: +SKIP
        {'size': 1196, 'sha256': '...'}
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist or is not a folder")
    files: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        size = path.stat().st_size
        if mode == "sample" and path.suffix == ".safetensors":
            files[path.name] = _sampled_safetensors(path, size)
        else:
            files[path.name] = {"size": size, "sha256": _sha256_file(path)}
    return {"mode": mode, "files": files}


def fingerprint_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Size and SHA-256 of each file (hashed whole), keyed by the path as given, in sorted order.

    Args:
        paths: the files (duplicates are fingerprinted once).

    Returns:
        ``{path: {"size": ..., "sha256": ...}}``.

    Raises:
        FileNotFoundError: a path is not a file.

    Example:
        >>> fingerprint_files(["questions.jsonl"])  # doctest: +SKIP
        {'questions.jsonl': {'size': 812, 'sha256': '...'}}
    """
    out: dict[str, Any] = {}
    for name in sorted({str(p) for p in paths}):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"cannot fingerprint {path}: not a file")
        out[name] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    return out


def _files_of(fingerprint: Mapping[str, Any]) -> Mapping[str, Any]:
    files = fingerprint.get("files") if "files" in fingerprint and "mode" in fingerprint else fingerprint
    return files if isinstance(files, Mapping) else {}


def changed_files(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The differences between two fingerprints, one phrase per file (empty: the same inputs).

    Works on the result of :func:`fingerprint_checkpoint` (compared per file; a change of mode
    is reported as such) or of :func:`fingerprint_files`.

    Example:
        >>> changed_files({"a": {"size": 1, "sha256": "x"}}, {"a": {"size": 2, "sha256": "y"}})
        ['a (size 1 -> 2 bytes)']
    """
    if saved.get("mode", None) != now.get("mode", None):
        return [f"fingerprint mode {saved.get('mode')!r} -> {now.get('mode')!r}"]
    old, new = _files_of(saved), _files_of(now)
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"{name} (new file)")
        elif b is None:
            out.append(f"{name} (removed)")
        elif a.get("size") != b.get("size"):
            out.append(f"{name} (size {a.get('size')} -> {b.get('size')} bytes)")
        elif a.get("header_sha256", None) != b.get("header_sha256", None):
            out.append(f"{name} (tensor header differs)")
        else:
            out.append(f"{name} (content differs)")
    return out
