"""Tensors of a checkpoint by name: memory-mapped safetensors files, checked as they are read.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
dtype, shape, byte offsets into the data that follows) and the data. Every header is checked
against the file before anything is mapped or allocated: a broken, truncated or inconsistent
file raises :class:`CheckpointError` naming the file (and tensor), never a raw traceback. Tensors
are zero-copy views of a private memory map; :meth:`TensorSource.release` drops the mapped pages
from the process (the data stays in the page cache), so nothing read lingers in memory. Every
floating-point tensor is checked for NaN and infinity on its first read.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors dtype codes that can be read, and their torch dtypes."""

_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

_LM_PREFIXES = (
    ("model.language_model.", "lm."),
    ("language_model.model.", "lm."),
    ("lm_head.", "head."),
    ("language_model.lm_head.", "head."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("image_newline", "image_newline"),
)


class CheckpointError(ValueError):
    """A checkpoint file is broken, or a tensor in it is missing, misshapen or not finite."""


def normalise_key(key: str) -> str | None:
    """Map a checkpoint key (new or legacy Hugging Face layout) to ``lm.* | head.* | vision side``."""
    for old, new in _LM_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file: ``begin:end`` are absolute byte offsets."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of a safetensors file, with every size and offset checked against the file.

    Raises:
        CheckpointError: the file is truncated, its header is not UTF-8 JSON of the safetensors
            layout, a dtype is not supported, or a tensor's bytes do not fit its shape or the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise CheckpointError(
                f"broken safetensors file {path}: {size} bytes, too short for the 8-byte header length"
            )
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"broken safetensors file {path}: header length {n} bytes exceeds the file ({size} bytes)"
                if n > size - 8
                else f"broken safetensors file {path}: header length {n} bytes exceeds the 100 MB limit"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(
            f"broken safetensors file {path}: header is not UTF-8 ({err.reason} at byte {err.start})"
        ) from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"broken safetensors file {path}: header is not JSON ({err.msg} at char {err.pos})"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"broken safetensors file {path}: header is a JSON {type(header).__name__}, not an object"
        )
    start, entries = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, info, start, size)
    return entries


def _entry(path: Path, name: str, info, start: int, size: int) -> TensorEntry:
    where = f"tensor {name} in {path}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(f"broken safetensors file: {where} lacks dtype, shape or data_offsets: {str(info)[:200]}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{where} has dtype {code!r}, which is not supported (supported: {', '.join(SAFETENSORS_DTYPES)})"
        )
    if not _sizes(shape):
        raise CheckpointError(f"broken safetensors file: {where} has shape {shape!r}, not a list of sizes")
    if not _sizes(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CheckpointError(f"broken safetensors file: {where} has data_offsets {offsets!r}, not [begin, end]")
    dtype = SAFETENSORS_DTYPES[code]
    nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    begin, end = start + offsets[0], start + offsets[1]
    if end - begin != nbytes:
        raise CheckpointError(
            f"broken safetensors file: {where} has {end - begin} bytes of data, but shape {shape} of {code} needs {nbytes}"
        )
    if end > size:
        raise CheckpointError(
            f"broken safetensors file (truncated?): {where} ends at byte {end}, beyond the end of the file ({size} bytes)"
        )
    return TensorEntry(path, dtype, tuple(shape), begin, end)


def _sizes(xs) -> bool:
    """Whether ``xs`` is a JSON list of non-negative integers."""
    return isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)


class _MappedFile:
    """A private memory map of one file (never written), as a flat uint8 tensor."""

    def __init__(self, path: Path, drop_cache: bool = False):
        self.drop_cache = drop_cache
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable view: no torch warning
        self.path = path
        self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        self._read: list[tuple[int, int]] = []

    def tensor(self, entry: TensorEntry) -> torch.Tensor:
        self._read.append((entry.begin, entry.end))
        raw = self.bytes[entry.begin : entry.end]
        if entry.begin % raw.new_empty(0, dtype=entry.dtype).element_size():
            raw = raw.clone()  # misaligned for its dtype: a copy is aligned
        return raw.view(entry.dtype).reshape(entry.shape)

    def release(self) -> None:
        """Drop the pages of the tensors read so far from this process, and from the page cache
        too when ``drop_cache``."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        fd = os.open(self.path, os.O_RDONLY) if self.drop_cache and hasattr(os, "posix_fadvise") else None
        for begin, end in self._read:
            start = begin // mmap.PAGESIZE * mmap.PAGESIZE
            if end > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
                if fd is not None:
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        if fd is not None:
            os.close(fd)
        self._read.clear()


class TensorSource:
    """Read tensors by normalised name (``lm.*``, ``head.*``, vision side) from a checkpoint.

    Args:
        getter: original name -> tensor.
        names: normalised name -> original name.
        describe: original name -> where it is (for messages), e.g. ``"in model.safetensors"``.
        check_finite: raise :class:`CheckpointError` on the first read of a floating-point tensor
            holding NaN or infinity.
        release: drops what reading has mapped into memory (see :meth:`release`).
        shape: original name -> shape without reading the data (default: read it).
        searched: where tensors were looked for (for messages).
    """

    def __init__(
        self,
        getter: Callable[[str], torch.Tensor],
        names: dict[str, str],
        *,
        describe: Callable[[str], str] = lambda name: "",
        check_finite: bool = True,
        release: Callable[[], None] = lambda: None,
        shape: Callable[[str], tuple[int, ...]] | None = None,
        searched: str = "",
    ):
        self._get = getter
        self._describe = describe
        self._release = release
        self._shape = shape or (lambda name: tuple(getter(name).shape))
        self._checked: set[str] = set()
        self.check_finite = check_finite
        self.searched = searched
        self.names = names  # normalised -> original

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (normalised name): a view of the checkpoint's data, never to be written."""
        if key not in self.names:
            raise CheckpointError(
                f"checkpoint has no tensor {_original_name(key, self.names.values())} (searched {self.searched or 'the model'})"
            )
        name = self.names[key]
        tensor = self._get(name)
        if self.check_finite and name not in self._checked:
            _check_finite(tensor, f"checkpoint tensor {name}{self._describe(name)}")
            self._checked.add(name)
        return tensor

    def prefixed(self, prefix: str) -> Iterator[str]:
        return (k for k in self.names if k.startswith(prefix))

    def release(self) -> None:
        """Drop the memory-mapped pages read so far (tensors already handed out stay valid)."""
        self._release()

    def check_shapes(self, expected: dict[str, tuple[int, ...]], optional: set[str] = frozenset()) -> None:
        """Every ``expected`` tensor (normalised name -> shape) is present with that shape.

        Raises:
            CheckpointError: naming the first missing tensor (and the files searched) or the
                first tensor of the wrong shape (expected and found shapes).
        """
        missing = [k for k in expected if k not in self.names and k not in optional]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CheckpointError(
                f"checkpoint has no tensor {_original_name(missing[0], self.names.values())}{more} (searched {self.searched or 'the model'})"
            )
        for key, shape in expected.items():
            if key in self.names:
                found = self._shape(self.names[key])
                if tuple(found) != tuple(shape):
                    name = self.names[key]
                    raise CheckpointError(
                        f"checkpoint tensor {name}{self._describe(name)} has shape {list(found)}, expected {list(shape)}"
                    )

    @classmethod
    def from_module(cls, model: nn.Module, *, check_finite: bool = True) -> TensorSource:
        state = dict(model.state_dict(keep_vars=False))
        names = {n: k for k in state if (n := normalise_key(k)) is not None}
        return cls(
            state.__getitem__,
            names,
            describe=lambda name: " of the in-memory model",
            check_finite=check_finite,
            searched=f"the in-memory {type(model).__name__}",
        )

    @classmethod
    def from_folder(cls, folder: Path, *, check_finite: bool = True) -> TensorSource:
        """The tensors of a checkpoint folder's ``model.safetensors`` or sharded safetensors files.

        Raises:
            FileNotFoundError: no safetensors weights in the folder.
            CheckpointError: a broken file, an index naming a missing shard or a tensor that its
                shard does not hold.
        """
        files, claimed = _weight_files(folder)
        entries: dict[str, TensorEntry] = {}
        for path in files:
            for name, entry in read_safetensors_header(path).items():
                if name in entries:
                    raise CheckpointError(
                        f"tensor {name} is in both {entries[name].path.name} and {path.name} in {folder}"
                    )
                entries[name] = entry
        for name, file in claimed.items():
            if name not in entries or entries[name].path.name != file:
                where = f"is in {entries[name].path.name}" if name in entries else "is in no shard"
                raise CheckpointError(
                    f"model.safetensors.index.json in {folder} puts tensor {name} in {file}, but it {where}"
                )
        maps: dict[Path, _MappedFile] = {}
        # Where the page cache cannot hold the files beside the loaded model, the kernel would
        # reclaim it under pressure while the model's pages are first written (measured at 7B on a
        # 23 GiB machine: twice the kernel time); dropping each tensor's pages once read is cheaper.
        drop_cache = _available_memory() < 2 * sum(p.stat().st_size for p in files)

        def getter(name: str) -> torch.Tensor:
            entry = entries[name]
            if entry.path not in maps:
                maps[entry.path] = _MappedFile(entry.path, drop_cache)
            return maps[entry.path].tensor(entry)

        def release() -> None:
            for mapped in maps.values():
                mapped.release()

        source = cls(
            getter,
            {n: k for k in entries if (n := normalise_key(k)) is not None},
            describe=lambda name: f" in {entries[name].path.name}",
            check_finite=check_finite,
            release=release,
            shape=lambda name: entries[name].shape,  # from the header: nothing mapped
            searched=", ".join(p.name for p in files) + f" in {folder}",
        )
        return source


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The safetensors files of a folder, and the index's tensor -> file map (empty when unsharded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"broken index {index}: not JSON with a weight_map of tensor -> file name") from None
        files = [folder / f for f in sorted(set(weight_map.values()))]
        for path in files:
            if not path.is_file():
                n = sum(1 for v in weight_map.values() if v == path.name)
                raise CheckpointError(
                    f"{index.name} in {folder} names shard {path.name} ({n} tensors), which is not in the folder"
                )
        return files, weight_map
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], {}
    raise FileNotFoundError(f"no safetensors weights (model.safetensors or model.safetensors.index.json) in {folder}")


def _available_memory() -> int:
    """Bytes of memory available without swapping (Linux ``MemAvailable``; unknown: unlimited)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _original_name(key: str, names) -> str:
    """A normalised name in the Hugging Face layout (new or legacy) that the checkpoint ``names`` use."""
    names, first = list(names), None
    for old, new in _LM_PREFIXES:
        if key.startswith(new):
            name = old + key[len(new) :]
            first = first or name
            if any(n.startswith(old) for n in names):
                return name
    return first or key


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`CheckpointError` when a floating-point ``tensor`` holds NaN or infinity."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)  # propagates NaN; one pass, no allocation
    if torch.isfinite(low) and torch.isfinite(high):
        return
    flat = tensor.reshape(-1)
    nan = sum(int(torch.isnan(c).sum()) for c in flat.split(1 << 24))
    inf = sum(int(torch.isinf(c).sum()) for c in flat.split(1 << 24))
    counts = " and ".join(f"{n} {kind} values" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
    raise CheckpointError(f"{what} holds {counts}")
