"""Atomic file writes (private): a reader sees the old file or the complete new one, never a part.

Every writer goes through :func:`atomic_path`: the new content goes to a temporary file beside
the target (same folder, so the same file system), is flushed to disk, and is renamed over the
target with ``os.replace``. On any error, ``KeyboardInterrupt`` included, the temporary file is
removed and the target is left as it was. Temporary files are named ``.{name}.{random}.tmp``
and get the permissions a plain ``open(path, "w")`` would (the umask's), not ``mkstemp``'s
owner-only ``0o600``.

Example:
    >>> from vh_lens.core import io as _io  # doctest: +SKIP
    >>> _io.write_json("run/metadata.json", {"format": "x"}, indent=2)  # doctest: +SKIP
    >>> _io.save_tensors("run/t.safetensors", {"mean": torch.zeros(3)}, {"format": "x"})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load as _st_load
from safetensors.torch import save_file as _st_save_file
from torch import Tensor

PathLike = str | os.PathLike[str]


def _reserve(path: Path) -> Path:
    """Create an empty, unused ``.{name}.{random}.tmp`` beside ``path`` (mode ``0o666 & ~umask``)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")  # pragma: no cover


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    For writers that open the file themselves (``np.save``, ``numpy`` memmaps, ``save_file``).
    The parent folders of ``path`` are created. The temporary file exists (empty) when yielded.

    Example:
        >>> with atomic_path("out/acts.npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(path)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) recreate the file owner-only
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # cleaning up must not hide the original error
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 encoded, newlines as given."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs)`` and a final newline to ``path`` atomically.

    Args:
        path: the file.
        obj: a JSON-serialisable object.
        **dumps_kwargs: passed to :func:`json.dumps` (``indent``, ``sort_keys``, ...).

    Raises:
        TypeError: ``obj`` is not JSON-serialisable (nothing is written).
    """
    write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def nan_to_none(value: Any) -> Any:
    """``value`` with every float NaN, at any depth of dicts, lists and tuples, as ``None``.

    ``json.dumps`` writes NaN as the bare word ``NaN``, which is not JSON; ``None`` becomes
    ``null``. Tuples become lists (as JSON has them anyway).

    Example:
        >>> nan_to_none({"a": [1.0, float("nan")], "b": (2, float("nan"))})
        {'a': [1.0, None], 'b': [2, None]}
    """
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def csv_text(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text: a header, then one line per row, ``"\\n"`` line ends.

    Args:
        rows: the rows (dicts).
        fieldnames: the columns, in order (default: the first row's keys).

    Raises:
        ValueError: no rows and no ``fieldnames``, or a row with a key outside ``fieldnames``.
    """
    if fieldnames is None:
        if not rows:
            raise ValueError("csv_text: no rows and no fieldnames")
        fieldnames = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """Write :func:`csv_text` of ``rows`` to ``path`` atomically; returns the text."""
    text = csv_text(rows, fieldnames)
    write_text(path, text)
    return text


def save_tensors(path: PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Save ``tensors`` (detached, moved to CPU, made contiguous) as safetensors, atomically.

    Args:
        path: the ``.safetensors`` file.
        tensors: name -> tensor. Tensors must not share memory (safetensors refuses that;
            ``clone()`` them first).
        metadata: string -> string header metadata (e.g. ``{"format": ...}``).
    """
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        _st_save_file(cpu, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file, read whole into memory (the file is not kept open)."""
    return _st_load(Path(path).read_bytes())


def read_json(
    path: PathLike,
    *,
    expected_format: str | None = None,
    what: str | None = None,
    version: int | None = None,
    version_key: str = "version",
) -> Any:
    """The JSON value in ``path``; with ``expected_format``, check its ``"format"`` field.

    Args:
        path: the file.
        expected_format: the value the object's ``"format"`` field must have, or ``None``.
        what: the saved type's name for the error message (default ``expected_format``).
        version: the newest format version the caller reads; the file's ``version_key`` field
            is checked with :func:`check_format_version` (``None``: not checked).
        version_key: the field holding the format version.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the ``"format"`` field is not ``expected_format``, the format version is
            newer than ``version`` or unknown, or the file's folder is part of an unfinished
            :func:`publish`.
    """
    path = Path(path)
    check_published(path.parent)
    info = json.loads(path.read_text(encoding="utf-8"))
    if expected_format is not None:
        found = info.get("format") if isinstance(info, dict) else None
        if found != expected_format:
            raise ValueError(f"{path.parent} holds no saved {what or expected_format} (format={found!r})")
    if version is not None:
        check_format_version(info, path, what=what or expected_format or "result", current=version, key=version_key)
    return info


def check_format_version(info: Any, path: PathLike, *, what: str, current: int, key: str = "version") -> int:
    """The format version of a saved file's JSON ``info``; refuse one newer than ``current``.

    Every saved result names its format version (``info[key]``, an int from 1); a reader knows
    the versions up to ``current``. A file without the field is from before versions were
    written (vh_lens 0.1.0) and reads as version 0.

    Args:
        info: the file's JSON value (a dict).
        path: the file, for the message.
        what: the saved type's name, for the message.
        current: the newest version the caller reads.
        key: the field holding the version.

    Returns:
        The version (0 when the field is missing).

    Raises:
        ValueError: the version is newer than ``current`` or not a non-negative int (one line,
            naming the file and the version).

    Example:
        >>> check_format_version({"version": 1}, "m.json", what="MaskingResult", current=1)
        1
    """
    found = info.get(key) if isinstance(info, dict) else None
    if found is None:
        return 0
    if isinstance(found, bool) or not isinstance(found, int) or found < 0:
        raise ValueError(
            f"{path}: unknown {what} format version {found!r} (this vh_lens reads versions up to {current})"
        )
    if found > current:
        raise ValueError(
            f"{path}: {what} format version {found} is newer than this vh_lens reads (up to {current}); upgrade vh_lens"
        )
    return found


# --------------------------------------------------------------------------------------------
# Folders of results: made with the umask's permissions, published in one step


def make_temp_dir(parent: PathLike, prefix: str, suffix: str) -> Path:
    """Create a new, empty folder ``{prefix}{random}{suffix}`` in ``parent`` (created if needed).

    Unlike :func:`tempfile.mkdtemp` (owner-only ``0o700``) the folder gets the permissions a
    plain ``mkdir`` gives (``0o777 & ~umask``), so what is renamed out of it into place is
    readable as the user's other files are.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a temporary folder in {parent}")  # pragma: no cover


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def publish(moves: Sequence[tuple[PathLike, PathLike]], journal: PathLike) -> None:
    """Move each complete ``source`` over its ``target`` as one step: all the new ones or none.

    Each ``source`` (a file or folder, complete when this is called) replaces its ``target``;
    previous targets go into a trash folder beside ``journal`` and are deleted at the end. The
    journal (a JSON file naming the moves) is written first: if the process is killed between
    the renames, :func:`recover_publish` on the journal (run by the next run) finishes them, so
    the targets end up all new. On an exception (``KeyboardInterrupt`` included) the renames
    done so far are undone: the targets are all old again. Sources and targets must lie on one
    file system (siblings of ``journal``'s folder, in practice).

    Args:
        moves: ``(source, target)`` pairs.
        journal: the journal file (must not exist).
    """
    journal = Path(journal)
    pairs = [(Path(s), Path(t)) for s, t in moves]
    trash = make_temp_dir(journal.parent, f".{journal.name}.", ".old")
    put_away: list[tuple[Path, Path]] = []
    moved: list[tuple[Path, Path]] = []
    try:
        write_json(journal, {"moves": [[str(s), str(t)] for s, t in pairs], "trash": str(trash)})
        for i, (_, target) in enumerate(pairs):
            if target.exists() or target.is_symlink():
                os.replace(target, trash / str(i))
                put_away.append((trash / str(i), target))
        for source, target in pairs:
            os.replace(source, target)
            moved.append((source, target))
    except BaseException:
        with contextlib.suppress(OSError):  # undo: the previous result comes back whole
            for source, target in reversed(moved):
                os.replace(target, source)
            for kept, target in put_away:
                os.replace(kept, target)
            journal.unlink(missing_ok=True)
        _remove(trash)
        raise
    journal.unlink()
    _remove(trash)


def check_published(path: PathLike) -> None:
    """Refuse to read ``path`` while a :func:`publish` that moves something onto it is unfinished.

    A run killed between the renames of :func:`publish` leaves its journal (a hidden json file
    beside the targets) until the next run finishes the moves; until then the targets may come
    from two runs, so a reader must not take them. Result loaders call this first.

    Raises:
        ValueError: a journal in ``path``'s folder names ``path`` (or a folder holding it) as a target.
    """
    path = Path(path).absolute()
    for journal in path.parent.glob(".*.json"):  # journals are hidden json files naming moves and a trash
        try:
            info = json.loads(journal.read_text(encoding="utf-8"))
            moves = info["moves"] if isinstance(info, dict) and "trash" in info else []
        except (OSError, ValueError, KeyError):
            moves = []
        if any(Path(target).absolute() == path for _, target in moves):
            raise ValueError(
                f"{path} is from an unfinished publish (a run was killed while moving its results into place, "
                f"journal {journal}): rerun the command to finish it, or remove the folder"
            )


def recover_publish(journal: PathLike) -> bool:
    """Finish a :func:`publish` that a killed process left half done (no-op without ``journal``).

    Returns:
        Whether there was a journal to act on.
    """
    journal = Path(journal)
    if not journal.is_file():
        return False
    info = json.loads(journal.read_text(encoding="utf-8"))
    trash = Path(info["trash"])
    trash.mkdir(exist_ok=True)
    for i, (source, target) in enumerate(info["moves"]):
        source, target = Path(source), Path(target)
        if source.exists():
            if target.exists() or target.is_symlink():
                os.replace(target, trash / f"stale-{i}")
            os.replace(source, target)
    journal.unlink()
    _remove(trash)
    return True


def remove_stale(folder: PathLike, patterns: Sequence[str]) -> list[Path]:
    """Delete the entries of ``folder`` matching any glob of ``patterns`` (temporary leftovers).

    Returns:
        The entries removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    for path in gone:
        _remove(path)
    return gone
