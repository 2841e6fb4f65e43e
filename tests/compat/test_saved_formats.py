"""Results saved by vh_lens 0.1.0 (commit 8c286fd) still load, with the same numbers.

The fixtures in ``v0_1_0/`` were written by ``make_fixtures.py`` run on the old code; its
``expected.json`` holds each result's summary (shape, dtype, sum and SHA-256 of every tensor,
every other field as is) taken from the object before it was saved. Here each is loaded with
today's code and summarised the same way. A file that says it has a newer format version than
this code reads is refused with a one-line error naming the file and the version.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import vh_lens
from vh_lens import patching
from vh_lens.analysis import HeadMeans
from vh_lens.functional_heads import HeadActivations
from vh_lens.visual_heads import METRICS

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "v0_1_0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))["results"]


def _helpers():
    spec = importlib.util.spec_from_file_location("compat_make_fixtures", HERE / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _helpers()

LOADERS = {
    "visual_head_scores": vh_lens.VisualHeadScores.load,
    "masking": vh_lens.MaskingResult.load,
    "head_means": HeadMeans.load,
    "logit_lens": vh_lens.LogitLensResult.load,
    "head_activations": HeadActivations.load,
    "probe_result": vh_lens.ProbeResult.load,
    "function_interventions": vh_lens.FunctionInterventionReport.load,
    "patching": patching.PatchingResult.load,
}

# kind -> (the JSON file that carries the version, the key of the version in it)
VERSIONED = {
    "visual_head_scores": ("metadata.json", "version"),
    "masking": ("masking.json", "version"),
    "head_means": ("metadata.json", "version"),
    "logit_lens": ("metadata.json", "version"),
    "head_activations": ("head_activations.json", "format"),
    "probe_result": ("probe.json", "format"),
    "function_interventions": ("interventions.json", "version"),
    "patching": ("metadata.json", "version"),
}


def test_fixtures_were_written_by_the_old_code_and_are_small() -> None:
    info = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
    assert info["written_by"]["commit"].startswith("8c286fd")
    assert set(EXPECTED) == set(LOADERS) | {"scan_checkpoint", "cli_scan"}
    assert sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file()) < 1_000_000


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_saved_result_loads_with_the_same_numbers(kind: str) -> None:
    loaded = LOADERS[kind](FIXTURES / kind)
    assert fx.summary(loaded) == EXPECTED[kind]


def test_the_summary_sees_a_changed_number(tmp_path: Path) -> None:
    """The comparison above can fail: one changed value in a saved tensor changes the summary."""
    folder = shutil.copytree(FIXTURES / "head_means", tmp_path / "head_means")
    means = HeadMeans.load(folder)
    changed = means.mean.clone()
    changed[0, 0, 0] += 1.0
    HeadMeans(mean=changed, count=means.count, positions=means.positions).save(folder)
    assert fx.summary(HeadMeans.load(folder)) != EXPECTED["head_means"]


def _assert_same_scores(got, want) -> None:
    assert got.count == want.count
    for m in METRICS:
        torch.testing.assert_close(got.mean[m], want.mean[m])
        torch.testing.assert_close(got.variance[m], want.variance[m])
        torch.testing.assert_close(got.per_sample[m], want.per_sample[m])


def test_scan_resumes_from_an_old_checkpoint(tmp_path: Path) -> None:
    """The library checkpoint (written after 4 of 6 samples) continues to the uninterrupted result."""
    ckpt = shutil.copytree(FIXTURES / "scan_checkpoint", tmp_path / "ckpt")
    assert json.loads((ckpt / "checkpoint.json").read_text())["count"] == fx.CKPT_SAMPLES
    resumed = vh_lens.scan_visual_heads(fx.tiny_model(), fx.scan_samples(), batch_size=2, keep_per_sample=True,
                                        progress=False, checkpoint_dir=ckpt, checkpoint_every=2)  # fmt: skip
    _assert_same_scores(resumed, vh_lens.VisualHeadScores.load(FIXTURES / "visual_head_scores"))
    assert fx.summary(resumed.mean) == EXPECTED["scan_checkpoint"]["scores"]["mean"]


def test_cli_scan_folder_loads_and_its_checkpoint_is_read(tmp_path: Path) -> None:
    """The CLI's output: ``scores/`` loads; ``checkpoint/`` (complete, 6 samples) gives those scores back."""
    from vh_lens.data.shapes import COUNT_KINDS, shapes
    from vh_lens.toy import load_toy

    scores = vh_lens.VisualHeadScores.load(FIXTURES / "cli_scan" / "scores")
    assert fx.summary(scores) == EXPECTED["cli_scan"]["scores"]
    ckpt = shutil.copytree(FIXTURES / "cli_scan" / "checkpoint", tmp_path / "checkpoint")

    def no_forward(*args, **kwargs):
        raise AssertionError("a complete checkpoint must not run the model")

    model = load_toy()
    model.run_with_hooks = no_forward
    again = vh_lens.scan_visual_heads(model, shapes(6, seed=0, kinds=COUNT_KINDS), batch_size=3, keep_per_sample=True,
                                      progress=False, checkpoint_dir=ckpt, checkpoint_every=3)  # fmt: skip
    _assert_same_scores(again, scores)


# --- format versions ------------------------------------------------------------------------


def _with_field(tmp_path: Path, kind: str, value) -> tuple[Path, Path]:
    """A copy of fixture ``kind`` whose version field is ``value`` (removed when ``...``)."""
    folder = shutil.copytree(FIXTURES / kind, tmp_path / kind)
    name, key = VERSIONED[kind]
    info = json.loads((folder / name).read_text(encoding="utf-8"))
    if value is ...:
        del info[key]
    else:
        info[key] = value
    (folder / name).write_text(json.dumps(info), encoding="utf-8")
    return folder, folder / name


@pytest.mark.parametrize("kind", sorted(VERSIONED))
def test_every_saved_result_names_its_format_version(kind: str) -> None:
    name, key = VERSIONED[kind]
    assert json.loads((FIXTURES / kind / name).read_text(encoding="utf-8"))[key] == 1


@pytest.mark.parametrize("kind", sorted(VERSIONED))
def test_a_newer_format_version_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    folder, path = _with_field(tmp_path, kind, 2)
    with pytest.raises(ValueError, match=r"format version 2 is newer than this vh_lens reads \(up to 1\)") as err:
        LOADERS[kind](folder)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", sorted(VERSIONED))
def test_an_unknown_format_version_is_refused(tmp_path: Path, kind: str) -> None:
    folder, path = _with_field(tmp_path, kind, "2.0")
    with pytest.raises(ValueError, match=r"unknown .* format version '2\.0'") as err:
        LOADERS[kind](folder)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", sorted(VERSIONED))
def test_an_unversioned_file_still_reads(tmp_path: Path, kind: str) -> None:
    folder, _ = _with_field(tmp_path, kind, ...)
    assert fx.summary(LOADERS[kind](folder)) == EXPECTED[kind]


def test_the_checkpoint_now_carries_a_version_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    old = json.loads((FIXTURES / "scan_checkpoint" / "checkpoint.json").read_text(encoding="utf-8"))
    assert "format_version" not in old  # vh_lens 0.1.0 wrote none; it still resumes (test above)
    model, samples = fx.tiny_model(), fx.scan_samples(2)
    vh_lens.scan_visual_heads(model, samples, batch_size=2, progress=False, checkpoint_dir=tmp_path / "new")
    info = json.loads((tmp_path / "new" / "checkpoint.json").read_text(encoding="utf-8"))
    assert (info["format"], info["format_version"]) == (old["format"], 1)
    info["format_version"] = 7
    (tmp_path / "new" / "checkpoint.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ValueError, match=r"checkpoint.json: visual-head scan checkpoint format version 7 is newer"):
        vh_lens.scan_visual_heads(model, samples, batch_size=2, progress=False, checkpoint_dir=tmp_path / "new")
