"""Defaults that fit the model: ``mask``'s ks and warnings, ``--scores`` of a scan's folder, ``--n-ctx``, probe warnings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import striped_image, tiny_lens
from test_functional import write_cogqa_file

import vh_lens
from vh_lens.cli import main
from vh_lens.commands._inputs import check_context
from vh_lens.commands.mask import PAPER_KS, plan_ks
from vh_lens.commands.probe import (
    few_items_warning,
    unknown_fraction,
    unknown_token_warning,
)
from vh_lens.data import Sample
from vh_lens.visual_heads.masking import MaskingResult
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

# --------------------------------------------------------------------------------------------
# mask: the ks


def test_default_ks_leave_room_for_a_random_control() -> None:
    # the toy model: 6 layers x 8 heads, 16 heads per stage; k below 8 so the draw has a choice
    ks, notes = plan_ks(None, ["early", "mid", "late"], 6, 8, n_seeds=3)
    assert ks == (1, 3, 5, 7)
    assert len(notes) == 1 and "16 heads" in notes[0] and not notes[0].startswith("warning")
    # LLaVA-1.5-7B: 32 x 32, the smallest stage has 10 layers = 320 heads: paper A's ks
    assert plan_ks(None, ["early", "mid", "late"], 32, 32, n_seeds=3) == (PAPER_KS, [])
    # one stage of 101 heads: 50 < 101 - 50, so the paper's ks still fit; 100 heads: 50 is exactly half
    assert plan_ks(None, ["early"], 3, 101, n_seeds=3)[0] == PAPER_KS
    assert plan_ks(None, ["early"], 3, 100, n_seeds=3)[0] == (12, 24, 36, 49)


def test_given_ks_warn_when_capped_or_without_a_control() -> None:
    ks, notes = plan_ks([10, 20, 30, 50], ["early", "mid", "late"], 6, 8, n_seeds=3)
    assert ks == (10, 20, 30, 50)
    assert notes == [
        (
            "warning: k=20, 30, 50 capped at the 16 heads of stages early, mid, late (the same heads as k=16: "
            "identical columns)"
        ),
        (
            "warning: no random control for k=10, 20, 30, 50 in stages early, mid, late: it needs k heads outside the "
            "top k, so k at most 8 of 16 heads"
        ),
    ]
    _, notes = plan_ks([8], ["early"], 6, 8, n_seeds=2)
    assert notes == [("warning: k=8 in stage early: the random control is the only 8 heads outside the top k, the "
                      "same for every seed (std 0)")]  # fmt: skip
    assert plan_ks([3, 7], ["early"], 6, 8, n_seeds=3) == ((3, 7), [])
    assert plan_ks([20], ["early"], 6, 8, n_seeds=0)[1] == [
        "warning: k=20 capped at the 16 heads of stage early (the same heads as k=16: identical columns)"
    ]  # no seeds: no control asked for, none missed


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint (2 layers x 4 heads), a jsonl benchmark and a scan-like output folder."""
    root = tmp_path_factory.mktemp("cli_defaults")
    images = root / "images"
    images.mkdir()
    lines = []
    for i in range(4):
        striped_image((60, 50), i).save(images / f"img{i}.png")
        lines.append({"image": f"img{i}.png", "question": "what color is the dog", "answer": "AB"[i % 2],
                      "choices": ["red", "blue"]})  # fmt: skip
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    detection = torch.arange(8, dtype=torch.float64).reshape(2, 4)
    scores = VisualHeadScores(
        mean={m: detection.clone() for m in METRICS}, variance={m: torch.zeros(2, 4) for m in METRICS}, count=4
    )
    scores.save(root / "scan" / "scores")  # as vh-lens scan --out ROOT/scan writes it
    return {"model": tiny_checkpoint, "data": data, "images": images, "scan": root / "scan", "root": root}


def _mask(files, out, *extra: str) -> list[str]:
    return ["mask", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "jsonl",
            "--images", str(files["images"]), "--scores", str(files["scan"]), "--out", str(out), "--stages", "early", "mid", "--batch-size", "4",
            "--no-progress", *extra]  # fmt: skip


def test_mask_without_ks_on_a_scan_folder_has_its_random_control(files, capsys) -> None:
    out = files["root"] / "mask_default"
    assert main(_mask(files, out)) == 0
    err = capsys.readouterr().err
    assert "--ks not given: using 1 (" in err and "warning" not in err
    result = MaskingResult.load(out)
    assert result.ks == (1,)
    for row in result.rows:  # 4 heads per stage: k=1 leaves 3 to draw from
        assert len(row.random_accs) == 3 and not any(math.isnan(acc) for acc in row.random_accs)
    assert json.loads((out / "inputs.json").read_text())["warnings"] == []


def test_mask_warns_once_per_problem_and_records_it(files, capsys) -> None:
    out = files["root"] / "mask_big"
    assert main(_mask(files, out, "--ks", "3", "--seeds", "0")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [("vh-lens mask: warning: no random control for k=3 in stages early, mid: it needs k heads outside "
                    "the top k, so k at most 2 of 4 heads")]  # fmt: skip
    assert json.loads((out / "inputs.json").read_text())["warnings"] == [err[0].removeprefix("vh-lens mask: ")]
    assert all(row.random_accs == () for row in MaskingResult.load(out).rows)


def test_scores_folder_without_scores_names_both_places(files, capsys) -> None:
    empty = files["root"] / "empty_scan"
    empty.mkdir()
    assert main(_mask(files, files["root"] / "never", "--scores", str(empty))) == 1
    err = capsys.readouterr().err
    assert f"no saved VisualHeadScores in {empty} or {empty / 'scores'}" in err


# --------------------------------------------------------------------------------------------
# --n-ctx


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["scan", "mask", "lens", "probe", "patch"])
def test_n_ctx_reaches_load_llava(files, command, capsys) -> None:
    cog = write_cogqa_file(files["root"] / f"cog_{command}.json", n_items=4)
    base = ["--model", str(files["model"]), "--out", str(files["root"] / f"nctx_{command}"), "--n-ctx", "77"]
    data = ["--data", str(files["data"]), "--format", "jsonl", "--images", str(files["images"])]
    argv = {"scan": [*base, *data], "mask": [*base, *data, "--scores", str(files["scan"])], "lens": [*base, *data],
            "probe": [*base, "--data", str(cog)], "patch": [*base, *data]}[command]  # fmt: skip
    seen = {}

    def fake_load(source, **kwargs):
        seen.update(kwargs)
        raise _Stop("stopped after load_llava")

    with mock.patch.object(vh_lens, "load_llava", fake_load):
        assert main([command, *argv]) == 1
    assert "stopped after load_llava" in capsys.readouterr().err
    assert seen["n_ctx"] == 77


def test_too_long_prompts_are_refused_before_the_run(files, capsys) -> None:
    out = files["root"] / "short_ctx"
    argv = ["lens", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "jsonl", "--images",
            str(files["images"]), "--out", str(out), "--n-ctx", "12", "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{files['data']}:1: needs " in err and "more than the model's context of 12" in err
    assert "would fit them all" in err and not out.exists()
    assert main(["lens", "--model", str(files["model"]), "--data", str(files["data"]), "--format", "jsonl",
                 "--out", str(out), "--n-ctx", "0"]) == 1  # fmt: skip
    assert "--n-ctx must be at least 1" in capsys.readouterr().err


def test_demo_scan_checks_the_context_before_writing(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["scan", "--n-samples", "3", "--n-ctx", "20", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "positions, more than the model's context of 20: --n-ctx" in err
    assert not (out / "scores").exists()


def test_check_context_boundary_and_generated_tokens() -> None:
    lens = tiny_lens()
    samples = [Sample(striped_image(), "what color is the dog", "red", metadata={"id": "short"}),
               Sample(striped_image(), "what color is the dog in the red box", "red", metadata={"id": "long"})]  # fmt: skip
    longest = max(int(lens.prepare_samples([s]).input_ids.shape[1]) for s in samples)
    old = lens.cfg.n_ctx
    try:
        lens.cfg.n_ctx = longest
        check_context(lens, samples)  # fits exactly
        check_context(lens, samples, exhaustive=False)
        with pytest.raises(ValueError, match=rf"data item long \(#1\) needs {longest + 1} positions \({longest} prompt "
                                             rf"positions \+ 1 generated\), more than the model's context of "
                                             rf"{longest}: --n-ctx {longest + 1} would fit it"):  # fmt: skip
            check_context(lens, samples, extra_tokens=1)
    finally:
        lens.cfg.n_ctx = old


# --------------------------------------------------------------------------------------------
# probe warnings


def test_unknown_token_fraction_and_warning() -> None:
    lens = tiny_lens()
    known = [Sample(None, "what color is the dog", "red")]
    unknown = [Sample(None, "zyzzyva quokka xylophone", "red")]
    assert unknown_fraction(lens, known) == 0.0
    assert unknown_fraction(lens, unknown) > 0.5
    assert unknown_token_warning(lens, known) is None
    assert "of the prompts' text tokens are" in unknown_token_warning(lens, unknown)


def test_few_items_warning_names_the_functions() -> None:
    result = SimpleNamespace(functions=("Retrieval", "Inference"), config={"test_counts": [25, 1]})
    assert few_items_warning(result) == ("fewer than 20 held-out subquestions for Inference (1): their scores rest "
                                         "on too few items to call any head functional")  # fmt: skip
    assert few_items_warning(SimpleNamespace(functions=("A",), config={"test_counts": [20]})) is None


def test_the_toy_runs_on_one_thread(files, capsys) -> None:
    seen = []

    def fake_load(source, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Stop("stopped after load_llava")

    data = ["--data", str(files["data"]), "--format", "jsonl", "--images", str(files["images"])]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with mock.patch.object(vh_lens, "load_llava", fake_load):
            for model in ("toy", str(files["model"])):
                assert main(["lens", "--model", model, *data, "--out", str(files["root"] / "threads")]) == 1
        assert seen == [1, 2] and torch.get_num_threads() == 2  # restored after the command
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
