"""Broken checkpoint files give one clear CheckpointError naming the file (and tensor)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_pair

import vh_lens
from vh_lens.core.tensor_source import CheckpointError, read_safetensors_header

# save_pretrained writes the legacy layout: messages name tensors as the file does
DOWN = "language_model.model.layers.1.mlp.down_proj.weight"
PATCH = "vision_tower.embeddings.patch_embedding.weight"


@pytest.fixture(scope="module")
def saved(tiny_checkpoint):
    """The session's tiny saved checkpoint (conftest); tests corrupt copies of it."""
    assert (tiny_checkpoint / "model.safetensors").is_file()
    return tiny_checkpoint


@pytest.fixture
def ckpt(saved, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    return folder


def _split(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path, header, data):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def _load(folder, **kw):
    return vh_lens.load_llava(folder, **kw)


def test_absurd_header_length(ckpt):
    path = ckpt / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes((2**62).to_bytes(8, "little") + raw[8:])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: header length 4611686018427387904 bytes exceeds the file"
    ):
        _load(ckpt)


def test_file_shorter_than_header_length_field(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 2 bytes, too short"):
        _load(ckpt)


def test_header_not_json(ckpt):
    path = ckpt / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    path.write_bytes(raw[:8] + b"{not json" + raw[17 : 8 + n] + raw[8 + n :])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: header is not JSON"):
        _load(ckpt)


def test_header_not_utf8(ckpt):
    path = ckpt / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"\xff\xfe" + raw[10:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: header is not UTF-8"):
        _load(ckpt)


def test_truncated_file_data_beyond_end(ckpt):
    path = ckpt / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(
        CheckpointError,
        match=r"truncated\?\): tensor .* in .*model\.safetensors ends at byte \d+, beyond the end of the file",
    ):
        _load(ckpt)


def test_offsets_do_not_fit_shape(ckpt):
    path = ckpt / "model.safetensors"
    header, data = _split(path)
    begin, end = header[DOWN]["data_offsets"]
    header[DOWN]["data_offsets"] = [begin, end - 4]
    _write(path, header, data)
    with pytest.raises(CheckpointError, match=rf"tensor {DOWN} in .* has {end - 4 - begin} bytes of data, but shape"):
        _load(ckpt)


def test_unsupported_dtype(ckpt):
    path = ckpt / "model.safetensors"
    header, data = _split(path)
    header[DOWN]["dtype"] = "F8_E4M3"
    _write(path, header, data)
    with pytest.raises(
        CheckpointError, match=rf"tensor {DOWN} in .*model\.safetensors has dtype 'F8_E4M3', which is not supported"
    ):
        _load(ckpt)


def test_missing_tensor_names_it_and_the_files(ckpt):
    path = ckpt / "model.safetensors"
    header, data = _split(path)
    del header[DOWN]  # its bytes stay, unreferenced
    _write(path, header, data)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint has no tensor {DOWN} \(searched model\.safetensors in .*model\)"
    ):
        _load(ckpt)


def test_wrong_shape_names_expected_and_found(ckpt):
    path = ckpt / "model.safetensors"
    header, data = _split(path)
    rows, cols = header[DOWN]["shape"]
    header[DOWN]["shape"] = [cols, rows]  # same bytes, transposed shape
    _write(path, header, data)
    with pytest.raises(
        CheckpointError,
        match=rf"tensor {DOWN} in model\.safetensors has shape \[{cols}, {rows}\], expected \[{rows}, {cols}\]",
    ):
        _load(ckpt)


def test_index_names_missing_shard(ckpt):
    header, _ = _split(ckpt / "model.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in header if k != "__metadata__"}
    weight_map[DOWN] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(
        CheckpointError,
        match=r"names shard model-00002-of-00002\.safetensors \(1 tensors\), which is not in the folder",
    ):
        _load(ckpt)


def test_index_not_json(ckpt):
    (ckpt / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"broken index .*model\.safetensors\.index\.json"):
        _load(ckpt)


def _poke(folder, name, values, positions):
    """Overwrite elements of a float32 tensor in the file (header intact)."""
    path = folder / "model.safetensors"
    entry = read_safetensors_header(path)[name]
    assert entry.dtype == torch.float32
    raw = bytearray(path.read_bytes())
    for pos, value in zip(positions, values):
        at = entry.begin + 4 * pos
        raw[at : at + 4] = torch.tensor([value], dtype=torch.float32).view(torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(raw))


def test_nan_weights_are_named_with_their_count(ckpt):
    _poke(ckpt, DOWN, [float("nan")] * 12, range(0, 120, 10))
    with pytest.raises(CheckpointError, match=rf"^checkpoint tensor {DOWN} in model\.safetensors holds 12 NaN values$"):
        _load(ckpt)


def test_infinite_weights_on_the_vision_side(ckpt):
    _poke(ckpt, PATCH, [float("inf"), float("-inf"), float("nan")], [0, 7, 9])
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint tensor {PATCH} in model\.safetensors holds 1 NaN values and 2 infinite values",
    ):
        _load(ckpt)


def test_corrupted_bytes_with_intact_header(ckpt):
    path = ckpt / "model.safetensors"
    entry = read_safetensors_header(path)[DOWN]
    raw = bytearray(path.read_bytes())
    raw[entry.begin : entry.begin + 64] = b"\xff" * 64  # 0xffffffff is a float32 NaN
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"checkpoint tensor {DOWN} in model\.safetensors holds 16 NaN values"):
        _load(ckpt)


def test_check_finite_false_skips_the_check(ckpt):
    _poke(ckpt, DOWN, [float("nan")], [3])
    lens = _load(ckpt, check_finite=False, fold_ln=False, center_unembed=False, fold_value_biases=False)
    assert torch.isnan(lens.lm.blocks[1].mlp.W_out).sum() == 1


def test_in_memory_model_with_nan_is_refused():
    hf, processor = tiny_pair("llava", "llama")
    bad = type(hf)(hf.config)
    bad.load_state_dict(hf.state_dict())
    with torch.no_grad():
        bad.model.multi_modal_projector.linear_1.weight[0, 0] = float("nan")
    with pytest.raises(
        CheckpointError, match=r"multi_modal_projector\.linear_1\.weight of the in-memory model holds 1 NaN values"
    ):
        vh_lens.load_llava(bad, processor=processor)


def test_checkpoint_error_is_exported_and_a_value_error():
    assert vh_lens.CheckpointError is CheckpointError
    assert issubclass(CheckpointError, ValueError)
