"""Tests of ``vh-lens scan`` on a tiny saved checkpoint, and of its no-argument main job."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import striped_image
from PIL import ImageDraw

import vh_lens
import vh_lens.visual_heads.scan as visual_heads
from vh_lens.cli import main
from vh_lens.commands import scan as scan_command
from vh_lens.data import load_jsonl, load_looktwice
from vh_lens.visual_heads.scan import scan_visual_heads
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

N_SAMPLES = 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is faster and the numbers are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(i: int, box: tuple[int, int, int, int]):
    image = striped_image((60 + 8 * i, 48 + 4 * i), seed=i)
    ImageDraw.Draw(image).rectangle(box, fill=(250, 20, 20))
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint):
    """A saved tiny checkpoint, a JSON-lines file and a LookTwice-QA file with generated images and boxes."""
    root = tmp_path_factory.mktemp("scan_cli")
    model_dir = tiny_checkpoint
    images = root / "images"
    images.mkdir()
    lines, looktwice = [], {}
    for i in range(N_SAMPLES):
        box = (4 + 3 * i, 6 + 2 * i, 30 + 3 * i, 28 + 2 * i)
        _image(i, box).save(images / f"img{i}.png")
        _image(i, box).convert("RGB").save(images / f"{100 + i}.jpg", quality=95)
        lines.append({"image": f"img{i}.png", "question": "how many red squares are there ?", "answer": str(i % 3 + 1),
                      "box": list(box)})  # fmt: skip
        looktwice[str(100 + i)] = [{
            "General_question": "how many of these are there?", "Obj_question": "how many squares are there?",
            "Super_question": "how many shapes are there?", "Ans": i % 3 + 1,
            "BBox": {"x": box[0], "y": box[1], "w": box[2] - box[0], "h": box[3] - box[1]},
        }]  # fmt: skip
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    qa = root / "looktwiceqa.json"
    qa.write_text(json.dumps(looktwice))
    return {"model": model_dir, "data": data, "looktwice": qa, "images": images, "root": root}


@pytest.fixture(scope="module")
def lens(files):
    return vh_lens.load_llava(files["model"])


def _args(files, out, *extra: str, data: str = "data", fmt: str = "jsonl") -> list[str]:
    return ["scan", "--model", str(files["model"]), "--data", str(files[data]), "--format", fmt,
            "--images", str(files["images"]), "--out", str(out), "--batch-size", "2", "--no-progress",
            *extra]  # fmt: skip


def _assert_same(a: VisualHeadScores, b: VisualHeadScores, atol: float) -> None:
    assert a.count == b.count
    for m in METRICS:
        torch.testing.assert_close(a.mean[m], b.mean[m], atol=atol, rtol=0, msg=m)
        torch.testing.assert_close(a.variance[m], b.variance[m], atol=atol, rtol=0, msg=m)


def _leftovers(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_scan_writes_scores_csv_and_report_equal_to_direct_scan(files, lens, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(_args(files, out, "--checkpoint-every", "2")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "plotly.min.js", "report.html", "scores"]
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["heads.csv", "metadata.json", "scores.safetensors"]
    saved = VisualHeadScores.load(out / "scores")
    direct = scan_visual_heads(lens, load_jsonl(files["data"], files["images"]), batch_size=2, progress=False)
    _assert_same(saved, direct, atol=1e-12)
    assert float(saved.region_weight.max()) > 0  # the boxes reached the scan
    assert saved.metadata["query"] == "last_prompt" and "note" not in saved.metadata

    rows = list(csv.DictReader((out / "scores" / "heads.csv").read_text().splitlines()))
    assert len(rows) == lens.cfg.n_layers * lens.cfg.n_heads
    row = rows[5]
    layer, head = int(row["layer"]), int(row["head"])
    assert float(row["detection_mean"]) == pytest.approx(float(direct.detection[layer, head]), abs=1e-12)

    report = (out / "report.html").read_text()
    for text in ("Visual-head scan", "<h3>early stage</h3>", "<h3>mid stage</h3>", "region weight per head",
                 "text weight per head", "concentration per head", "vs concentration", "per-layer totals",
                 "over the image"):  # fmt: skip
        assert text in report, text
    captured = capsys.readouterr()
    assert "top heads by detection score over 5 samples" in captured.out
    assert "random-weight" not in captured.out + captured.err
    assert _leftovers(out) == []


def test_looktwice_object_questions_with_visual_prompt(files, lens, tmp_path) -> None:
    out = tmp_path / "out"
    args = _args(files, out, "--question", "object", "--visual-prompt", "--query", "answer_token",
                 data="looktwice", fmt="looktwice")  # fmt: skip
    assert main(args) == 0
    saved = VisualHeadScores.load(out / "scores")
    samples = load_looktwice(files["looktwice"], files["images"], question="object", visual_prompt=True)
    assert samples[0].question == "how many squares are there?"
    direct = scan_visual_heads(lens, samples, batch_size=2, query="answer_token", progress=False)
    _assert_same(saved, direct, atol=1e-12)
    plain = scan_visual_heads(lens, load_looktwice(files["looktwice"], files["images"], question="object"),
                              batch_size=2, query="answer_token", progress=False)  # fmt: skip
    assert not torch.allclose(saved.image_weight, plain.image_weight)  # the drawn box changed the input
    assert saved.metadata["query"] == "answer_token"
    assert "object questions, visual prompt" in saved.metadata["data"]


def _count_scanned(monkeypatch) -> list[int]:
    """Record the size of every batch the scan runs."""
    sizes: list[int] = []
    real = visual_heads.ScanReducer.update

    def counting(self, output, item):
        sizes.append(len(item))
        return real(self, output, item)

    monkeypatch.setattr(visual_heads.ScanReducer, "update", counting)
    return sizes


def test_rerun_after_a_smaller_limit_continues_to_the_uninterrupted_result(files, tmp_path, monkeypatch) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(_args(files, whole, "--checkpoint-every", "2")) == 0
    assert main(_args(files, parts, "--checkpoint-every", "2", "--limit", "3")) == 0
    assert VisualHeadScores.load(parts / "scores").count == 3
    scanned = _count_scanned(monkeypatch)
    assert main(_args(files, parts, "--checkpoint-every", "2")) == 0
    assert scanned == [2]  # only samples 3 and 4 were run again
    _assert_same(VisualHeadScores.load(parts / "scores"), VisualHeadScores.load(whole / "scores"), atol=1e-6)
    # A finished run rerun as it is runs nothing and changes nothing; a smaller --limit is refused.
    assert main(_args(files, parts, "--checkpoint-every", "2")) == 0
    assert scanned == [2]
    _assert_same(VisualHeadScores.load(parts / "scores"), VisualHeadScores.load(whole / "scores"), atol=1e-6)
    assert main(_args(files, parts, "--limit", "2")) == 1


def test_crash_after_a_checkpoint_leaves_no_result_and_the_rerun_finishes(files, lens, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = visual_heads._write_checkpoint
    calls = []

    def write_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        raise RuntimeError("simulated crash after the first checkpoint")

    monkeypatch.setattr(visual_heads, "_write_checkpoint", write_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(_args(files, out, "--checkpoint-every", "2", "--debug"))
    assert calls == [1]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]  # no scores, no report
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["count"] == 2

    monkeypatch.setattr(visual_heads, "_write_checkpoint", real)
    scanned = _count_scanned(monkeypatch)
    assert main(_args(files, out, "--checkpoint-every", "2")) == 0
    assert scanned == [2, 1]  # continued after the two checkpointed samples
    direct = scan_visual_heads(lens, load_jsonl(files["data"], files["images"]), batch_size=2, progress=False)
    _assert_same(VisualHeadScores.load(out / "scores"), direct, atol=1e-6)
    assert _leftovers(out) == []


def test_checkpoint_of_other_settings_is_refused_unless_overwrite(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(_args(files, out, "--limit", "2")) == 0
    capsys.readouterr()
    assert main(_args(files, out, "--limit", "2", "--detection-weight", "region")) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "detection_weight" in err and "--overwrite" in err
    assert VisualHeadScores.load(out / "scores").metadata["detection_weight"] == "image"  # untouched
    assert main(_args(files, out, "--limit", "2", "--detection-weight", "region", "--overwrite")) == 0
    scores = VisualHeadScores.load(out / "scores")
    assert scores.metadata["detection_weight"] == "region" and scores.count == 2


def test_missing_data_file_fails_before_writing(files, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "out"
    args = _args(files, out)
    args[args.index("--data") + 1] = str(files["root"] / "nope.jsonl")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "nope.jsonl does not exist" in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_missing_images_fail_with_one_line_naming_them(files, tmp_path, capsys) -> None:
    data = tmp_path / "ghosts.jsonl"
    lines = [{"image": "img0.png", "question": "how many ?"}, {"image": "ghost.png", "question": "how many ?"}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    args = _args(files, out)
    args[args.index("--data") + 1] = str(data)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "ghost.png" in err and "1 of the 2 images" in err and "\n" not in err
    assert not out.exists()


def test_bad_format_and_missing_options_fail_cleanly(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(_args(files, out, fmt="looktwice")) == 1  # a JSON-lines file read as LookTwice-QA
    assert "not valid JSON" in capsys.readouterr().err
    args = _args(files, out, data="looktwice", fmt="looktwice")
    del args[args.index("--images") : args.index("--images") + 2]
    assert main(args) == 1
    assert "needs --images" in capsys.readouterr().err
    assert main(_args(files, out, "--question", "super")) == 1
    assert "jsonl file carries its own questions" in capsys.readouterr().err
    assert main(["scan", "--data", str(files["data"]), "--out", str(out)]) == 1
    assert "both --model and --data" in capsys.readouterr().err
    assert not out.exists()


def test_demo_without_the_toy_uses_a_random_model_and_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(scan_command, "toy_path", lambda: tmp_path / "no_toy_here")
    out = tmp_path / "demo"
    assert main(["scan", "--n-samples", "6", "--batch-size", "3", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert scan_command.RANDOM_MODEL_NOTE in captured.out and scan_command.RANDOM_MODEL_NOTE in captured.err
    assert scan_command.RANDOM_MODEL_NOTE in (out / "report.html").read_text()
    scores = VisualHeadScores.load(out / "scores")
    assert scores.count == 6 and scores.metadata["note"] == scan_command.RANDOM_MODEL_NOTE
    assert "random-weight tiny LLaVA" in scores.metadata["model"]
    assert float(scores.region_weight.max()) > 0  # generated samples carry boxes


def test_no_arguments_runs_the_main_job_into_vh_lens_report(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(scan_command, "DEFAULT_N_SAMPLES", 6)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    report = tmp_path / "vh_lens_report" / "report.html"
    assert report.is_file()
    scores = VisualHeadScores.load(tmp_path / "vh_lens_report" / "scores")
    assert scores.count == 6
    if scan_command.toy_available():  # the shipped toy model is used as soon as it is installed
        assert scores.metadata["model"].startswith("toy LLaVA") and "note" not in scores.metadata
    else:
        assert scores.metadata["note"] == scan_command.RANDOM_MODEL_NOTE
    assert "top heads by detection score over 6 samples" in capsys.readouterr().out


def test_demo_uses_the_toy_checkpoint_as_soon_as_it_is_there(tmp_path, monkeypatch, capsys) -> None:
    """A checkpoint with the toy's architecture and processor (random weights) stands in for the shipped one."""
    from transformers import LlavaForConditionalGeneration

    from vh_lens.toy import build_toy_processor, toy_config

    folder = tmp_path / "toy_llava"
    processor = build_toy_processor()
    torch.manual_seed(0)
    LlavaForConditionalGeneration(toy_config(processor, n_layers=3, d_model=64, n_heads=4, d_mlp=128)).save_pretrained(
        folder
    )
    processor.save_pretrained(folder)
    monkeypatch.setattr(scan_command, "toy_path", lambda: folder)
    out = tmp_path / "demo"
    assert main(["scan", "--n-samples", "6", "--question", "super", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "random-weight" not in captured.out + captured.err
    scores = VisualHeadScores.load(out / "scores")
    assert scores.metadata["model"] == f"toy LLaVA ({folder})" and "note" not in scores.metadata
    assert (scores.n_layers, scores.n_heads, scores.count) == (3, 4, 6)
    assert scan_command.RANDOM_MODEL_NOTE not in (out / "report.html").read_text()
    # The demo's checkpoint follows the model: with the toy gone, the demo starts afresh on the random model.
    monkeypatch.setattr(scan_command, "toy_path", lambda: tmp_path / "gone")
    assert main(["scan", "--n-samples", "6", "--question", "super", "--out", str(out), "--no-progress"]) == 0
    assert "starting afresh" in capsys.readouterr().err
    assert VisualHeadScores.load(out / "scores").metadata["note"] == scan_command.RANDOM_MODEL_NOTE


@pytest.mark.parametrize("query", ["last_prompt", "answer_token"])
def test_report_attention_rows_match_the_cached_pattern(files, lens, query) -> None:
    """The rows behind the report's attention-over-image figure, against run_with_cache."""
    from vh_lens.reports.scan import head_attention_rows, plot_top_heads_on_image

    sample = load_jsonl(files["data"], files["images"])[1]
    heads = [(1, 3), (0, 2), (1, 0)]
    layout, rows = head_attention_rows(lens, sample, heads, query=query)
    batch = lens.prepare_samples([sample])
    if query == "answer_token":
        token = lens(batch)[0, batch.layout[0].query_position].argmax()
        batch = lens.append_tokens(batch, token.reshape(1, 1))
    q = layout.query_position if query == "last_prompt" else int(layout.answer_positions[0])
    assert q == batch.input_ids.shape[1] - 1  # one unpadded sample: the last position either way
    _, cache = lens.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
    expected = torch.stack([cache["pattern", layer][0, head, q] for layer, head in heads])
    torch.testing.assert_close(rows, expected, atol=0, rtol=0)
    assert rows.sum(-1).sub(1).abs().max() < 1e-5

    scores = VisualHeadScores(mean={m: torch.rand(2, 4, generator=torch.Generator().manual_seed(1)) for m in METRICS},
                              variance={m: torch.zeros(2, 4) for m in METRICS}, count=1)  # fmt: skip
    fig = plot_top_heads_on_image(lens, scores, sample, k=2, query=query)
    assert len(fig.layout.shapes) == 2  # the box, once per panel
    titles = [a.text.split(" ")[0] for a in fig.layout.annotations]
    assert titles == [f"L{layer}H{head}" for layer, head in scores.top_heads(2)]
