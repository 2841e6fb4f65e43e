"""Atomic writes of vh_lens.core.io: right content, no temporary files left, old file kept on error."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vh_lens.core import io as _io


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_content_parents_and_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b" / "note.md"
    _io.write_text(path, "héllo\nwörld\r\n")
    assert path.read_bytes() == "héllo\nwörld\r\n".encode()  # UTF-8, newlines untouched
    _io.write_text(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert _names(path.parent) == ["note.md"]


def test_write_bytes_and_json(tmp_path):
    _io.write_bytes(tmp_path / "x.bin", b"\x00\x01\xff")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01\xff"
    obj = {"b": [1, 2.5, None], "a": "ü"}
    _io.write_json(tmp_path / "m.json", obj, indent=2, sort_keys=True)
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == obj
    assert _names(tmp_path) == ["m.json", "x.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_files_get_the_umask_permissions_not_owner_only(tmp_path):
    umask = os.umask(0o022)
    try:
        _io.write_text(tmp_path / "t.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_csv_text_and_write_csv(tmp_path):
    rows = [{"layer": 0, "head": 1, "name": "a,b"}, {"layer": 1, "head": 0, "name": 'say "hi"'}]
    text = _io.write_csv(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text(encoding="utf-8") == text
    assert text.splitlines()[0] == "layer,head,name"
    assert "\r" not in text
    assert list(csv.DictReader(io.StringIO(text))) == [
        {"layer": "0", "head": "1", "name": "a,b"},
        {"layer": "1", "head": "0", "name": 'say "hi"'},
    ]
    assert _io.csv_text([{"a": 1, "b": 2}], fieldnames=["b", "a"]) == "b,a\n2,1\n"
    assert _io.csv_text([], fieldnames=["a"]) == "a\n"
    with pytest.raises(ValueError, match="no rows"):
        _io.csv_text([])


def test_save_tensors_roundtrip_with_metadata(tmp_path):
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    tensors = {
        "t": base.t(),  # not contiguous
        "grad": torch.ones(2, requires_grad=True) * 3,  # part of a graph
        "ids": torch.tensor([3, 1, 2]),
    }
    path = tmp_path / "x.safetensors"
    _io.save_tensors(path, tensors, {"format": "test", "count": "3"})
    loaded = _io.load_tensors(path)
    assert sorted(loaded) == ["grad", "ids", "t"]
    assert torch.equal(loaded["t"], base.t()) and loaded["t"].dtype == torch.float64
    assert torch.equal(loaded["grad"], torch.full((2,), 3.0)) and not loaded["grad"].requires_grad
    assert torch.equal(loaded["ids"], torch.tensor([3, 1, 2]))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "test", "count": "3"}
    _io.save_tensors(tmp_path / "plain.safetensors", {"a": torch.zeros(1)})
    assert torch.equal(_io.load_tensors(tmp_path / "plain.safetensors")["a"], torch.zeros(1))
    assert _names(tmp_path) == ["plain.safetensors", "x.safetensors"]


def test_error_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.json"
    _io.write_text(path, "old")
    # a real failure half-way through writing the temporary file
    with pytest.raises(TypeError):
        _io.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["data.json"]
    # the temporary file holds partial content when the error strikes, even a KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt), _io.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".data.json.") and tmp.name.endswith(".tmp")
        tmp.write_text("half of the new cont")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["data.json"]


def test_failed_tensor_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    _io.save_tensors(path, {"a": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_io, "_st_save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _io.save_tensors(path, {"a": torch.zeros(3)})
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["t.safetensors"]


def test_unwritable_values_write_nothing(tmp_path):
    path = tmp_path / "m.json"
    _io.write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        _io.write_json(path, {"bad": object()})
    with pytest.raises(ValueError):
        _io.write_csv(tmp_path / "m.csv", [{"a": 1}], fieldnames=["b"])  # a key outside the columns
    assert json.loads(path.read_text()) == {"ok": 1}
    assert _names(tmp_path) == ["m.json"]


def test_read_json_checks_the_format(tmp_path):
    _io.write_json(tmp_path / "m.json", {"format": "vh_lens.X", "n": 2})
    assert _io.read_json(tmp_path / "m.json") == {"format": "vh_lens.X", "n": 2}
    assert _io.read_json(tmp_path / "m.json", expected_format="vh_lens.X")["n"] == 2
    with pytest.raises(ValueError, match=r"holds no saved Thing \(format='vh_lens.X'\)"):
        _io.read_json(tmp_path / "m.json", expected_format="vh_lens.Y", what="Thing")
    _io.write_json(tmp_path / "l.json", [1, 2])
    with pytest.raises(ValueError, match="format=None"):
        _io.read_json(tmp_path / "l.json", expected_format="vh_lens.X")
    with pytest.raises(FileNotFoundError):
        _io.read_json(tmp_path / "missing.json")


def test_nan_to_none():
    value = {"a": [1.0, math.nan], "b": (2, {"c": math.nan}), "d": "nan", "e": math.inf}
    assert _io.nan_to_none(value) == {"a": [1.0, None], "b": [2, {"c": None}], "d": "nan", "e": math.inf}
    assert json.loads(json.dumps(_io.nan_to_none([math.nan]), allow_nan=False)) == [None]


def test_check_format_version() -> None:
    from vh_lens.core.io import check_format_version

    assert check_format_version({"version": 1}, "m.json", what="X", current=2) == 1
    assert check_format_version({"format": "x"}, "m.json", what="X", current=1) == 0  # unversioned: vh_lens 0.1.0
    assert check_format_version({"format_version": 3}, "m.json", what="X", current=3, key="format_version") == 3
    with pytest.raises(ValueError, match=r"^m\.json: X format version 4 is newer than this vh_lens reads \(up to 3\)"):
        check_format_version({"version": 4}, "m.json", what="X", current=3)
    for bad in (True, -1, 1.0, "1"):
        with pytest.raises(ValueError, match=r"^m\.json: unknown X format version"):
            check_format_version({"version": bad}, "m.json", what="X", current=3)
