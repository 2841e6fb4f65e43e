"""``vh-lens demo-data`` (every file read back by its reader), ``--model toy``, ``--version``, ``python -m vh_lens``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vh_lens.cli import build_parser, main, version
from vh_lens.data import (
    load_cogvision,
    load_jsonl,
    load_looktwice,
    load_pointqa_counting,
    load_pope,
    load_vip_pointqa,
)
from vh_lens.data.shapes import COUNT_KINDS, shapes
from vh_lens.toy import TOY_PATH

N = 12  # two samples of each of the six kinds


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo-data", str(out), "--n-samples", str(N), "--n-cog", "6", "--seed", "3"]) == 0
    return out


def _pixels(image) -> np.ndarray:
    from vh_lens.data import load_rgb

    return np.asarray(load_rgb(image) if not hasattr(image, "convert") else image.convert("RGB"))


def test_demo_data_writes_every_format(demo) -> None:
    assert sorted(p.name for p in demo.iterdir()) == sorted([
        "README.md", "cogvision.json", "images", "looktwice.json", "plain", "pointqa_twice.json",
        "pope_shapes.jsonl", "questions.jsonl", "cogvision_images",
    ])  # fmt: skip
    assert "vh_lens.data.cogvision_shapes" in (demo / "README.md").read_text()
    assert not [p for p in demo.parent.iterdir() if p.name.startswith(".")]  # published in one step
    readme = (demo / "README.md").read_text()
    for name in ("questions.jsonl", "looktwice.json", "pointqa_twice.json", "pope_shapes.jsonl", "cogvision.json"):
        assert f"| {name} |" in readme


def test_jsonl_reads_back_the_generated_samples(demo) -> None:
    generated = shapes(N, seed=3)
    read = load_jsonl(demo / "questions.jsonl", verify_images=True)
    assert len(read) == N
    for want, got in zip(generated, read, strict=True):
        assert (got.question, got.answer, got.choices, got.box) == (want.question, want.answer, want.choices,
                                                                      None if want.box is None else tuple(map(float, want.box)))  # fmt: skip
        assert got.metadata["kind"] == want.metadata["kind"] and got.metadata["count"] == want.metadata["count"]
        assert np.array_equal(_pixels(got.image), _pixels(want.image))  # PNG is lossless


def test_looktwice_vip_and_pointqa_read_back_all_question_types(demo) -> None:
    counting = [s for s in shapes(N, seed=3) if s.metadata["kind"] in COUNT_KINDS]
    plain = {s.metadata["id"]: s for s in shapes(N, seed=3, draw_box=False)}
    for question in ("general", "object", "super"):
        looktwice = load_looktwice(demo / "looktwice.json", demo / "plain", question, verify_images=True)
        vip = load_vip_pointqa(demo / "pointqa_twice.json", demo, question, verify_images=True)
        assert len(looktwice) == len(vip) == len(counting) == 6
        for want, a, b in zip(counting, looktwice, vip, strict=True):
            assert a.answer == b.answer == want.answer
            assert a.box == b.box == tuple(map(float, want.box))
            assert a.question == b.question
            target = want.metadata["target"]
            if question == "object":
                assert a.question == f"How many {target['color']} {target['kind']}s are there?"
            # the plain setting: the scene without any outline drawn
            assert np.array_equal(_pixels(a.image), _pixels(plain[want.metadata["id"]].image))
        if question == "super":  # the drawn pointer is what separates images/ from plain/
            boxed = next(s for s in counting if s.metadata["kind"] == "count_super")
            assert not np.array_equal(_pixels(boxed.image), _pixels(plain[boxed.metadata["id"]].image))
    counted = load_pointqa_counting(demo / "looktwice.json", demo / "plain", question="object")
    assert [s.answer for s in counted] == [s.answer for s in counting]


def test_pope_and_cogvision_read_back(demo) -> None:
    yes_no = [s for s in shapes(N, seed=3) if s.metadata["kind"] == "exists"]
    pope = load_pope(demo / "pope_shapes.jsonl", demo / "images")
    assert [(s.question, s.answer) for s in pope] == [(s.question, s.answer) for s in yes_no]
    assert all(s.metadata["task"] == "yes_no" for s in pope)
    items = load_cogvision(demo / "cogvision.json", verify_images=True)
    assert len(items) == 6 and all(item.image is not None and len(item.subquestions) >= 2 for item in items)
    assert all(Path(item.image).is_file() for item in items)


def test_demo_data_refuses_a_non_empty_folder_and_bad_counts(demo, capsys) -> None:
    assert main(["demo-data", str(demo), "--n-samples", "6"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo-data", str(demo.parent / "other"), "--n-samples", "0"]) == 1
    assert "--n-samples must be at least 1" in capsys.readouterr().err
    assert not (demo.parent / "other").exists()


@pytest.mark.parametrize("command", ["scan", "mask", "lens", "probe", "patch"])
def test_model_toy_names_the_shipped_checkpoint(command) -> None:
    rest = {"scan": [], "patch": [], "mask": ["--data", "d", "--format", "jsonl", "--scores", "s", "--out", "o"],
            "lens": ["--data", "d", "--format", "jsonl", "--out", "o"], "probe": ["--data", "d", "--out", "o"]}  # fmt: skip
    if command in ("scan", "patch"):
        rest = {"scan": ["--out", "o"], "patch": ["--out", "o"]}
    args = build_parser().parse_args([command, "--model", "toy", *rest[command]])
    assert args.model == Path(TOY_PATH)
    args = build_parser().parse_args([command, "--model", "./toy", *rest[command]])
    assert args.model == Path("toy") and args.model != Path(TOY_PATH)  # a folder called toy stays a folder


def test_question_format_is_refused(tmp_path, capsys) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "how many?", "answer": "1"}\n')
    code = main(["lens", "--model", "toy", "--data", str(data), "--format", "jsonl", "--out", str(tmp_path / "o"),
                 "--question-format", "toy"])  # fmt: skip
    assert code == 1
    assert "--question-format was removed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vh-lens {version()}"
    assert version() != "unknown"


def test_python_dash_m_runs_the_cli() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "vh_lens", "--version"], capture_output=True, text=True, env=env,
                          cwd=root, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vh-lens {version()}"
    done = subprocess.run([sys.executable, "-m", "vh_lens", "demo-data", "--help"], capture_output=True, text=True,
                          env=env, cwd=root, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and "questions.jsonl" in done.stdout


def test_scan_with_model_toy_alone_is_the_demo_on_the_toy() -> None:
    from vh_lens.commands.scan import is_demo

    args = build_parser().parse_args(["scan", "--model", "toy", "--out", "o"])
    assert is_demo(args) and args.model is None
    args = build_parser().parse_args(["scan", "--model", "toy", "--data", "d.jsonl", "--format", "jsonl", "--out", "o"])
    assert not is_demo(args) and args.model == Path(TOY_PATH)
