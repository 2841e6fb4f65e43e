"""Runs and inputs checked up front: fingerprints, resume refusal, --skip-bad, one-step publishing,
permissions, code in a checkpoint, 16-bit images, one-line errors. (The catalogue of bad inputs is
``tests/commands/test_catalogue.py``.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import striped_image
from PIL import Image
from safetensors.torch import load_file, save_file
from test_catalogue import write_evil_checkpoint

import vh_lens.core.io as io_mod
from vh_lens.cli import main
from vh_lens.commands import scan as scan_command
from vh_lens.core.fingerprint import changed_files, fingerprint_checkpoint, fingerprint_files
from vh_lens.core.io import check_published, publish, recover_publish, write_json
from vh_lens.data import load_rgb
from vh_lens.visual_heads.scores import VisualHeadScores

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(4):
        striped_image((56 + 4 * i, 48), seed=i).save(images / f"img{i}.png")
        rows.append(
            {"image": f"images/img{i}.png", "question": "how many squares?", "answer": "1", "box": [2, 2, 20, 20]}
        )
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "images": images, "data": path, "rows": rows}


def _scan(model, data_file, out, *extra):
    return ["scan", "--model", str(model), "--data", str(data_file), "--format", "jsonl", "--out", str(out),
            "--batch-size", "2", "--no-progress", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Fingerprints


def _checkpoint(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text('{"model_type": "llava"}')
    return folder


def test_sampled_fingerprint_sees_changed_tensors_headers_and_small_files(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(64, 96, generator=g) for i in range(5)}
    a = fingerprint_checkpoint(_checkpoint(tmp_path / "a", tensors))
    assert a == fingerprint_checkpoint(_checkpoint(tmp_path / "b", tensors))  # same content, other folder
    assert changed_files(a, a) == []
    retrained = dict(tensors, **{"layer3.weight": tensors["layer3.weight"] * 1.01})
    assert changed_files(a, fingerprint_checkpoint(_checkpoint(tmp_path / "c", retrained))) == [
        "model.safetensors (content differs)"
    ]
    reshaped = dict(tensors, **{"layer3.weight": tensors["layer3.weight"].reshape(96, 64)})
    assert changed_files(a, fingerprint_checkpoint(_checkpoint(tmp_path / "d", reshaped))) == [
        "model.safetensors (tensor header differs)"
    ]
    folder = _checkpoint(tmp_path / "e", tensors)
    (folder / "config.json").write_text('{"model_type": "llava_next"}')
    (folder / "tokenizer.json").write_text("{}")
    assert changed_files(a, fingerprint_checkpoint(folder)) == ["config.json (size 23 -> 28 bytes)",
                                                                  "tokenizer.json (new file)"]  # fmt: skip


def test_full_fingerprint_sees_what_sampling_misses(tmp_path) -> None:
    """One weight edited in a tensor's interior (not a sampled block): only the full hash sees it."""
    tensors = {"big.weight": torch.zeros(4096, 64)}  # 1 MiB of data
    folder = _checkpoint(tmp_path / "a", tensors)
    before = {m: fingerprint_checkpoint(folder, m) for m in ("sample", "full")}
    edited = tensors["big.weight"].clone()
    edited[1000, 7] = 1.0  # byte offset 256028: inside no sampled 4 KiB block
    _checkpoint(folder, {"big.weight": edited})
    assert changed_files(before["sample"], fingerprint_checkpoint(folder, "sample")) == []
    assert changed_files(before["full"], fingerprint_checkpoint(folder, "full")) == [
        "model.safetensors (content differs)"
    ]


def test_fingerprint_files_hashes_whole_files(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("abc")
    fp = fingerprint_files([path, path])
    assert fp == {str(path): {"size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}
    with pytest.raises(FileNotFoundError):
        fingerprint_files([tmp_path / "nope"])


# --------------------------------------------------------------------------------------------
# Resume refusal and what the runs record


def test_changed_weights_refuse_the_resume_and_overwrite_starts_afresh(data, tiny_checkpoint, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    out = tmp_path / "out"
    import vh_lens.visual_heads.scan as visual_heads

    write = visual_heads._write_checkpoint

    def write_then_interrupt(*args, **kwargs):
        write(*args, **kwargs)
        raise KeyboardInterrupt

    visual_heads._write_checkpoint = write_then_interrupt
    try:
        assert main(_scan(model, data["data"], out, "--checkpoint-every", "2")) == 130
    finally:
        visual_heads._write_checkpoint = write
    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main(_scan(model, data["data"], out)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.safetensors (content differs)" in err and "--overwrite" in err
    assert not (out / "scores").exists()

    assert main(_scan(model, data["data"], out, "--overwrite")) == 0
    fresh = tmp_path / "fresh"
    assert main(_scan(model, data["data"], fresh)) == 0
    a, b = VisualHeadScores.load(out / "scores"), VisualHeadScores.load(fresh / "scores")
    assert a.count == b.count == 4
    for metric in a.mean:
        torch.testing.assert_close(a.mean[metric], b.mean[metric], atol=1e-6, rtol=0)
    inputs = json.loads((out / "scores" / "metadata.json").read_text())
    text = json.dumps(inputs)
    assert "model.safetensors" in text and "sample_sha256" in text and str(data["data"]) in text


@pytest.mark.parametrize("command", ["mask", "lens"])
def test_mask_and_lens_record_fingerprints_and_skipped_items(command, data, tiny_checkpoint, tmp_path, capsys) -> None:
    rows = [*data["rows"], {**data["rows"][0], "box": [0, 0, 10, 999]}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [command, "--model", str(tiny_checkpoint), "--data", str(path), "--format", "jsonl", "--images",
            str(data["root"]), "--out", str(tmp_path / "out"), "--no-progress", "--batch-size", "4"]  # fmt: skip
    if command == "mask":
        scores = tmp_path / "scores"
        assert main(_scan(tiny_checkpoint, data["data"], tmp_path / "scan")) == 0
        shutil.copytree(tmp_path / "scan" / "scores", scores)
        argv += ["--scores", str(scores), "--ks", "1", "--seeds", "0"]
    assert main(argv) == 1
    assert "q.jsonl:5: box" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--skip-bad"]) == 0
    assert "left out 1 of 5 bad items" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "inputs.json").read_text())
    assert record["n_skipped_bad"] == 1 and record["skipped_bad"][0][0].endswith("q.jsonl:5")
    assert "model.safetensors" in record["inputs"]["model"]["files"]
    assert record["inputs"]["images"]["n_files"] == 4


def test_scan_skip_bad_leaves_out_bad_items_and_says_how_many(data, tiny_checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rows = [*data["rows"][:2], {**data["rows"][0], "image": str(tmp_path / "broken.png")}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_scan(tiny_checkpoint, path, tmp_path / "out", "--images", str(data["root"]), "--skip-bad")) == 0
    assert "left out 1 of 3 bad items" in capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "scores" / "metadata.json").read_text())
    assert VisualHeadScores.load(tmp_path / "out" / "scores").count == 2
    assert "n_skipped_bad" in json.dumps(meta) and "q.jsonl:3" in json.dumps(meta)


# --------------------------------------------------------------------------------------------
# Publishing in one step


def _result(folder: Path, tag: str) -> None:
    (folder / "scores").mkdir(parents=True)
    (folder / "scores" / "s.txt").write_text(tag)
    (folder / "report.html").write_text(tag)


def _state(out: Path) -> tuple[str | None, str | None]:
    read = lambda p: p.read_text() if p.is_file() else None  # noqa: E731
    return read(out / "scores" / "s.txt"), read(out / "report.html")


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_a_failure_mid_publish_leaves_the_old_result_whole(tmp_path, monkeypatch, fail_at) -> None:
    out = tmp_path / "out"
    _result(out, "old")
    new = tmp_path / "new"
    _result(new, "new")
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == fail_at:
            raise OSError("simulated failure")
        real(a, b)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        publish([(new / "scores", out / "scores"), (new / "report.html", out / "report.html")], out / ".j.json")
    monkeypatch.setattr(io_mod.os, "replace", real)
    assert _state(out) == ("old", "old")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "scores"]


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_a_kill_mid_publish_is_finished_by_the_next_run(tmp_path, kill_at) -> None:
    """The process dies (os._exit) at the kill_at-th rename; recovery leaves the new result whole."""
    out = tmp_path / "out"
    _result(out, "old")
    new = tmp_path / "new"
    _result(new, "new")
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import vh_lens.core.io as io_mod
        real, calls = os.replace, []
        def replace(a, b):
            calls.append(1)
            if len(calls) == {kill_at}:
                os._exit(9)
            real(a, b)
        io_mod.os.replace = replace
        io_mod.publish([({str(new / "scores")!r}, {str(out / "scores")!r}),
                        ({str(new / "report.html")!r}, {str(out / "report.html")!r})], {str(out / ".j.json")!r})
    """)
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    if kill_at == 1:  # killed while writing the journal: nothing was moved, the old result stands
        assert not recover_publish(out / ".j.json")
        assert _state(out) == ("old", "old")
        return
    for target in ("scores", "report.html"):  # until recovered, readers refuse the half-published pair
        with pytest.raises(ValueError, match="unfinished publish"):
            check_published(out / target)
    assert recover_publish(out / ".j.json")
    check_published(out / "scores")
    assert _state(out) == ("new", "new")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "scores"]


def test_scan_removes_stale_temporary_folders_and_results_get_umask_permissions(
    data, tiny_checkpoint, tmp_path
) -> None:
    out = tmp_path / "out"
    (out / ".scan-dead.partial" / "scores").mkdir(parents=True)
    (out / ".scan-dead.old").mkdir()
    old = os.umask(0o022)
    try:
        assert main(_scan(tiny_checkpoint, data["data"], out)) == 0
        mask_out = tmp_path / "lens"
        (tmp_path / ".lens.dead.partial").mkdir()
        assert main(["lens", "--model", str(tiny_checkpoint), "--data", str(data["data"]), "--format", "jsonl",
                     "--out", str(mask_out), "--no-progress"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "plotly.min.js", "report.html", "scores"]
    assert not (tmp_path / ".lens.dead.partial").exists()
    for path in [out / "scores", out / "report.html", *(out / "scores").iterdir(), mask_out, *mask_out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


# --------------------------------------------------------------------------------------------
# Code in a checkpoint, images, errors


@pytest.mark.parametrize("stdin", ["closed", "yes"])
def test_checkpoint_code_never_runs_and_nothing_prompts(tiny_checkpoint, tmp_path, stdin) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    marker = write_evil_checkpoint(folder, "processor_config.json")
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import vh_lens; vh_lens.load_llava({str(folder)!r})"
    feed = {"input": "y\ny\ny\n"} if stdin == "yes" else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, **feed)  # fmt: skip
    assert proc.returncode != 0
    assert (
        "RemoteCodeError" in proc.stderr and "processor_config.json asks for the checkpoint's own code" in proc.stderr
    )
    assert "custom code" not in proc.stdout + proc.stderr  # no Hugging Face prompt
    assert not marker.exists()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)  # 0, 1, 128, 255
    np.testing.assert_array_equal(np.asarray(load_rgb(path))[..., 0], expected)
    np.testing.assert_array_equal(np.asarray(load_rgb(Image.fromarray(values.astype(np.int32), "I")))[..., 1], expected)
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(np.asarray(load_rgb(array)), array)  # a uint8 HWC array is taken exactly


def test_any_error_is_one_line_and_debug_shows_the_traceback(data, tmp_path, monkeypatch, capsys) -> None:
    def boom(args):
        raise RuntimeError("deep failure\nsecond line")

    monkeypatch.setattr(scan_command, "load_data_samples", boom)
    monkeypatch.setattr(scan_command, "check_arguments", lambda args, demo: None)
    argv = _scan(tmp_path, data["data"], tmp_path / "out")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vh-lens scan: error: RuntimeError: deep failure; second line (--debug shows the traceback)"]
    with pytest.raises(RuntimeError, match="deep failure"):
        main([*argv, "--debug"])


def test_result_loaders_refuse_a_half_published_folder(tmp_path) -> None:
    """The journal of a killed publish makes VisualHeadScores.load and read_json-based loaders refuse."""
    from vh_lens.visual_heads.masking import MaskingResult
    from vh_lens.visual_heads.scores import VisualHeadScores

    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    write_json(
        out / ".scan-publish.json", {"moves": [[str(tmp_path / "x"), str(out / "scores")]], "trash": str(out / ".t")}
    )
    with pytest.raises(ValueError, match="unfinished publish"):
        VisualHeadScores.load(out / "scores")
    (out / "masking.json").write_text("{}")
    write_json(
        tmp_path / ".mask.publish.json", {"moves": [[str(tmp_path / "y"), str(out)]], "trash": str(tmp_path / ".t")}
    )
    with pytest.raises(ValueError, match="unfinished publish"):
        MaskingResult.load(out)
