"""Benchmark readers (vh_lens.data.benchmarks) on small fixture files built in tmp_path."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vh_lens.data._images import MissingImagesError, SampleSet
from vh_lens.data.benchmarks import (
    load_mmbench,
    load_pointqa_counting,
    load_pope,
    load_qbench,
    load_seed_bench,
)
from vh_lens.data.pointqa import load_looktwice
from vh_lens.data.sample import Sample
from vh_lens.evaluation.answers import candidate_strings, format_question, gold_index, is_correct

# ------------------------------------------------------------------------------ fixtures


def _png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (255, 0, 0)) -> str:
    return base64.b64encode(_png_bytes(size, color)).decode("ascii")


def _save_images(folder: Path, names: Sequence[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (10 + i, 8), (0, 10 * i, 0)).save(folder / name)
    return folder


MMBENCH_HEADER = [
    "index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"
]  # fmt: skip


def _write_tsv(path: Path, rows: list[dict[str, str]], header: Sequence[str] = MMBENCH_HEADER) -> Path:
    # pandas' to_csv(sep="\t") quoting: minimal, double quotes; MMBench files are written that way.
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})
    return path


def _mmbench_rows() -> list[dict[str, str]]:
    return [
        {
            "index": "0",
            "question": "Which colour is the square?",
            "hint": 'A picture.\nIt has "one" square.',
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": "",
            "answer": "A",
            "category": "color",
            "image": _b64((8, 6), (255, 0, 0)),
            "l2-category": "attribute",
            "split": "dev",
        },
        {
            "index": "1",
            "question": "Is the image empty?",
            "hint": "nan",
            "A": "yes",
            "B": "no",
            "C": "nan",
            "D": "",
            "answer": "B",
            "category": "other",
            "image": _b64((5, 5), (0, 0, 255)),
            "l2-category": "misc",
            "split": "dev",
        },
        {
            "index": "2",
            "question": "Test question without answer",
            "hint": "",
            "A": "x",
            "B": "y",
            "C": "z",
            "D": "w",
            "answer": "",
            "category": "other",
            "image": "0",  # VLMEvalKit style: the image of row index 0
            "l2-category": "misc",
            "split": "test",
        },
    ]


# ------------------------------------------------------------------------------ MMBench


def test_mmbench_reads_rows(tmp_path: Path) -> None:
    samples = load_mmbench(_write_tsv(tmp_path / "mmbench_dev.tsv", _mmbench_rows()))
    assert len(samples) == 3
    first, second, third = samples
    assert first.question == 'A picture.\nIt has "one" square.\nWhich colour is the square?'
    assert first.choices == ("red", "green", "blue")
    assert first.answer == "A"
    assert first.metadata["option_letters"] == ("A", "B", "C")
    assert first.metadata["benchmark"] == "mmbench"
    assert first.metadata["task"] == "multiple_choice"
    assert first.metadata["id"] == 0
    assert first.metadata["category"] == "color"
    assert first.metadata["l2-category"] == "attribute"
    assert first.metadata["split"] == "dev"
    image = first.load_image()
    assert image is not None and image.size == (8, 6) and image.getpixel((3, 3)) == (255, 0, 0)
    # "nan" hint and "nan" option count as empty, like LLaVA's is_none.
    assert second.question == "Is the image empty?"
    assert second.metadata["hint"] is None
    assert second.choices == ("yes", "no")
    assert second.answer == "B"
    assert second.load_image().getpixel((0, 0)) == (0, 0, 255)  # type: ignore[union-attr]
    # Test split: no answer; image given by reference to row 0.
    assert third.answer is None
    assert third.question == "Test question without answer"
    assert third.choices == ("x", "y", "z", "w")
    assert third.load_image().size == (8, 6)  # type: ignore[union-attr]


def test_mmbench_prompt_matches_llava(tmp_path: Path) -> None:
    sample = load_mmbench(_write_tsv(tmp_path / "m.tsv", _mmbench_rows()), limit=1)[0]
    assert format_question(sample) == (
        'A picture.\nIt has "one" square.\nWhich colour is the square?\nA. red\nB. green\nC. blue\n'
        "Answer with the option's letter from the given choices directly."
    )
    assert candidate_strings(sample) == ["A", "B", "C"]
    assert gold_index(sample) == 0
    assert is_correct("A", sample) and not is_correct("B", sample)


def test_mmbench_limit_stops_early(tmp_path: Path) -> None:
    rows = _mmbench_rows()
    rows[2]["image"] = ""  # would be a missing image, but is never read
    samples = load_mmbench(_write_tsv(tmp_path / "m.tsv", rows), limit=2)
    assert [s.metadata["index"] for s in samples] == [0, 1]
    assert list(load_mmbench(_write_tsv(tmp_path / "m.tsv", rows), limit=0)) == []


def test_mmbench_option_gap_is_relettered(tmp_path: Path) -> None:
    rows = _mmbench_rows()[:1]
    rows[0].update({"A": "cat", "B": "", "C": "dog", "D": "fish", "answer": "D"})
    sample = load_mmbench(_write_tsv(tmp_path / "m.tsv", rows))[0]
    assert sample.choices == ("cat", "dog", "fish")
    assert sample.answer == "C"
    assert sample.metadata["option_letters"] == ("A", "C", "D")


def test_mmbench_large_image_field(tmp_path: Path) -> None:
    # A noisy image whose base64 exceeds csv's default 128 KiB field limit.
    noise = Image.frombytes("RGB", (200, 200), bytes(range(256)) * (200 * 200 * 3 // 256) + bytes(200 * 200 * 3 % 256))
    buffer = io.BytesIO()
    noise.save(buffer, format="BMP")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    assert len(encoded) > 131072
    rows = _mmbench_rows()[:1]
    rows[0]["image"] = encoded
    limit_before = csv.field_size_limit()
    sample = load_mmbench(_write_tsv(tmp_path / "m.tsv", rows))[0]
    assert sample.load_image().size == (200, 200)  # type: ignore[union-attr]
    assert csv.field_size_limit() == limit_before  # the process-wide limit is restored


def test_mmbench_missing_images(tmp_path: Path) -> None:
    rows = _mmbench_rows()
    rows[0]["image"] = ""
    rows[1]["image"] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    rows[2]["image"] = "7"  # reference to an unknown row
    path = _write_tsv(tmp_path / "m.tsv", rows)
    with pytest.raises(FileNotFoundError, match=r"m\.tsv: 3 images empty or undecodable: index 0, index 1, index 2"):
        load_mmbench(path)
    rows[1]["image"] = _b64()
    path = _write_tsv(tmp_path / "m.tsv", rows)
    assert [s.metadata["index"] for s in load_mmbench(path, on_missing="skip")] == [1]


def test_mmbench_skip_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _mmbench_rows()
    rows[1]["image"] = ""
    with caplog.at_level(logging.WARNING, logger="vh_lens.data.benchmarks"):
        samples = load_mmbench(_write_tsv(tmp_path / "m.tsv", rows), on_missing="skip")
    assert len(samples) == 2
    assert "1 images empty or undecodable: index 1" in caplog.text


@pytest.mark.parametrize("drop", ["question", "image", "index", "B"])
def test_mmbench_missing_column(tmp_path: Path, drop: str) -> None:
    header = [c for c in MMBENCH_HEADER if c != drop]
    path = _write_tsv(tmp_path / "m.tsv", _mmbench_rows(), header=header)
    with pytest.raises(ValueError, match=rf"m\.tsv: missing column\(s\) \['{drop}'\]"):
        load_mmbench(path)


def test_mmbench_without_optional_columns(tmp_path: Path) -> None:
    header = ["index", "question", "A", "B", "image"]
    sample = load_mmbench(_write_tsv(tmp_path / "m.tsv", _mmbench_rows()[:1], header=header))[0]
    assert sample.question == "Which colour is the square?"
    assert sample.answer is None
    assert sample.choices == ("red", "green")


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"answer": "D"}, r"line 2 \(index 0\): answer 'D' names no non-empty option"),
        ({"B": "", "C": "", "D": ""}, "fewer than two non-empty options"),
        ({"question": "  "}, r"line 2 \(index 0\): empty question"),
    ],
)
def test_mmbench_bad_rows(tmp_path: Path, update: dict[str, str], match: str) -> None:
    rows = _mmbench_rows()[:1]
    rows[0].update(update)
    with pytest.raises(ValueError, match=match):
        load_mmbench(_write_tsv(tmp_path / "m.tsv", rows))


def test_mmbench_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MMBench TSV file not found: .*nope.tsv"):
        load_mmbench(tmp_path / "nope.tsv")


# ------------------------------------------------------------------------------ POPE


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


POPE_RECORDS = [
    {
        "question_id": 1,
        "image": "COCO_val2014_000000000001.jpg",
        "text": "Is there a dog in the image?",
        "label": "yes",
    },
    {"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a cat in the image?", "label": "No"},
    {
        "question_id": 3,
        "image": "COCO_val2014_000000000001.jpg",
        "text": "Is there a car in the image?\nAnswer the question using a single word or phrase.",
        "label": "no",
    },
]


def test_pope_reads_lines(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "val2014", ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"])
    samples = load_pope(_write_jsonl(tmp_path / "coco_pope_adversarial.json", POPE_RECORDS), images)
    assert [s.answer for s in samples] == ["yes", "no", "no"]
    assert samples[0].image == images / "COCO_val2014_000000000001.jpg"
    assert samples[0].load_image().size == (10, 8)  # type: ignore[union-attr]
    assert samples[2].question == "Is there a car in the image?"  # LLaVA's suffix removed
    meta = samples[1].metadata
    assert meta["benchmark"] == "pope" and meta["task"] == "yes_no"
    assert meta["question_id"] == 2 and meta["id"] == 2
    assert meta["category"] == "adversarial"
    expected = "Is there a car in the image?\nAnswer the question using a single word or phrase."
    assert format_question(samples[2]) == expected
    assert candidate_strings(samples[0]) == ["Yes", "No"]
    assert is_correct("Yes, there is a dog.", samples[0])
    assert is_correct("No.", samples[1])
    assert not is_correct("There is a cat.", samples[1])


def test_pope_category_sources(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"])
    records = [dict(POPE_RECORDS[0], category="popular"), dict(POPE_RECORDS[1])]
    path = _write_jsonl(tmp_path / "questions.jsonl", records)
    assert [s.metadata["category"] for s in load_pope(path, images)] == ["popular", None]
    assert [s.metadata["category"] for s in load_pope(path, images, category="random")] == ["random", "random"]


def test_pope_json_array_and_no_label(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000001.jpg"])
    record = {k: v for k, v in POPE_RECORDS[0].items() if k != "label"}
    path = tmp_path / "pope.json"
    path.write_text(json.dumps([record, record]), encoding="utf-8")
    samples = load_pope(path, images, limit=1)
    assert len(samples) == 1 and samples[0].answer is None
    assert samples[0].metadata["task"] == "yes_no"
    assert candidate_strings(samples[0]) == ["Yes", "No"]


def test_pope_missing_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000002.jpg"])
    path = _write_jsonl(tmp_path / "coco_pope_random.json", POPE_RECORDS)
    message = r"coco_pope_random\.json: 2 image files missing under .*img: COCO_val2014_000000000001\.jpg, COCO_v"
    with pytest.raises(FileNotFoundError, match=message):
        load_pope(path, images)
    with caplog.at_level(logging.WARNING, logger="vh_lens.data.benchmarks"):
        samples = load_pope(path, images, on_missing="skip")
    assert [s.metadata["question_id"] for s in samples] == [2]
    assert "skipped" in caplog.text and "2 image files missing" in caplog.text


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_pope_errors(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000001.jpg"])
    with pytest.raises(FileNotFoundError, match="POPE annotation file not found"):
        load_pope(tmp_path / "absent.json", images)
    good = _write_jsonl(tmp_path / "p.json", POPE_RECORDS[:1])
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        load_pope(good, tmp_path / "no_images")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps(POPE_RECORDS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json line 2: not valid JSON"):
        load_pope(bad_json, images)
    bad_label = _write_jsonl(tmp_path / "l.json", [dict(POPE_RECORDS[0], label="maybe")])
    with pytest.raises(ValueError, match=r"l\.json line 1: label 'maybe' is not yes or no"):
        load_pope(bad_label, images)
    no_text = _write_jsonl(tmp_path / "t.json", [{k: v for k, v in POPE_RECORDS[0].items() if k != "text"}])
    with pytest.raises(ValueError, match=r"t\.json line 1: missing field 'text'"):
        load_pope(no_text, images)
    with pytest.raises(ValueError, match="on_missing"):
        load_pope(good, images, on_missing="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        load_pope(good, images, limit=-1)


# ------------------------------------------------------------------------------ SEED-Bench


def _seed_question(
    qid: str, data_id: str, *, data_type: str = "image", type_id: int = 5, answer: str = "B"
) -> dict[str, Any]:
    return {
        "answer": answer,
        "choice_a": "One",
        "choice_b": "Two",
        "choice_c": "Three",
        "choice_d": "Four",
        "data_id": data_id,
        "data_type": data_type,
        "question": "How many towels are in the image?",
        "question_id": qid,
        "question_type_id": type_id,
    }


def _write_seed(path: Path, questions: list[dict[str, Any]]) -> Path:
    data = {"questions": questions, "question_type": {"Scene Understanding": 1, "Instance Counting": 5}}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_seed_bench_reads_image_questions(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "SEED-Bench-image", ["1454426_2591111986.jpg", "b.png"])
    questions = [
        _seed_question("101669", "1454426_2591111986.jpg"),
        _seed_question("v1", "video.mp4", data_type="video", type_id=10),
        _seed_question("101670", "1454426_2591111986", type_id=1, answer="D"),  # data_id without extension
        _seed_question("101671", "b", answer="a"),
    ]
    samples = load_seed_bench(_write_seed(tmp_path / "SEED-Bench.json", questions), images)
    assert [s.metadata["question_id"] for s in samples] == ["101669", "101670", "101671"]
    first = samples[0]
    assert first.choices == ("One", "Two", "Three", "Four")
    assert first.answer == "B"
    assert first.image == images / "1454426_2591111986.jpg"
    assert first.metadata["question_type"] == "Instance Counting"
    assert first.metadata["benchmark"] == "seed_bench"
    assert samples[1].image == images / "1454426_2591111986.jpg"
    assert samples[1].answer == "D" and samples[1].metadata["question_type"] == "Scene Understanding"
    assert samples[2].image == images / "b.png" and samples[2].answer == "A"
    assert format_question(first).startswith("How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four\n")
    assert is_correct("B", first) and is_correct("Two", first)


def test_seed_bench_filters_and_limit(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["a.jpg"])
    questions = [_seed_question(str(i), "a.jpg", type_id=1 + i % 2) for i in range(6)]
    path = _write_seed(tmp_path / "s.json", questions)
    assert [s.metadata["question_id"] for s in load_seed_bench(path, images, question_type_ids=[2])] == ["1", "3", "5"]
    limited = load_seed_bench(path, images, question_type_ids={2}, limit=2)
    assert [s.metadata["question_id"] for s in limited] == ["1", "3"]
    # A bare list of questions, as SEED-Bench's eval.py also accepts.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(questions), encoding="utf-8")
    assert len(load_seed_bench(bare, images)) == 6


def test_seed_bench_errors(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["a.jpg"])
    wrong_top = tmp_path / "w.json"
    wrong_top.write_text(json.dumps({"items": []}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"w\.json: expected a 'questions' list"):
        load_seed_bench(wrong_top, images)
    bad_answer = _write_seed(tmp_path / "b.json", [_seed_question("9", "a.jpg", answer="F")])
    with pytest.raises(ValueError, match=r"b\.json question 0: answer 'F' is not a letter among the 4 options"):
        load_seed_bench(bad_answer, images)
    missing = _write_seed(tmp_path / "m.json", [_seed_question("9", "zz.jpg"), _seed_question("10", "yy")])
    with pytest.raises(FileNotFoundError, match="2 image files missing under .*: zz.jpg, yy"):
        load_seed_bench(missing, images)
    assert list(load_seed_bench(missing, images, on_missing="skip")) == []
    not_json = tmp_path / "n.json"
    not_json.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"n\.json: not valid JSON"):
        load_seed_bench(not_json, images)


# ------------------------------------------------------------------------------ Q-Bench


QBENCH_ITEMS = [
    {
        "img_path": "00079.jpg",
        "question": "How is the lighting of this image?",
        "candidates": ["Dim", "Bright", "Normal"],
        "correct_ans": "Normal",
        "type": "What",
        "concern": "Other",
    },
    {
        "img_path": "00080.png",
        "question": "Is this image clear?",
        "candidates": ["Yes", "No"],
        "correct_ans": "No",
        "type": "Yes-or-No",
        "concern": "Distortion",
    },
]


def test_qbench_reads_items(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "images_llvisionqa", ["00079.jpg", "00080.png"])
    path = tmp_path / "llvisionqa_dev.json"
    path.write_text(json.dumps(QBENCH_ITEMS), encoding="utf-8")
    first, second = load_qbench(path, images)
    assert first.choices == ("Dim", "Bright", "Normal") and first.answer == "C"
    assert first.metadata["type"] == "What" and first.metadata["concern"] == "Other"
    assert first.metadata["benchmark"] == "qbench" and first.metadata["correct_ans"] == "Normal"
    assert second.choices == ("Yes", "No") and second.answer == "B"
    assert candidate_strings(second) == ["A", "B"]
    assert is_correct("B", second) and is_correct("No", second)
    assert second.image == images / "00080.png"


def test_qbench_test_split_and_errors(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["00079.jpg"])
    no_answer = tmp_path / "test.json"
    item = {k: v for k, v in QBENCH_ITEMS[0].items() if k != "correct_ans"}
    no_answer.write_text(json.dumps([item]), encoding="utf-8")
    assert load_qbench(no_answer, images)[0].answer is None
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([dict(QBENCH_ITEMS[0], correct_ans="Dark")]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"wrong\.json item 0: correct_ans 'Dark' matches 0 of the candidates"):
        load_qbench(wrong, images)
    few = tmp_path / "few.json"
    few.write_text(json.dumps([dict(QBENCH_ITEMS[0], candidates=["Dim"])]), encoding="utf-8")
    with pytest.raises(ValueError, match="'candidates' must be a list of at least two"):
        load_qbench(few, images)
    not_list = tmp_path / "obj.json"
    not_list.write_text(json.dumps({"a": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_qbench(not_list, images)
    both = tmp_path / "both.json"
    both.write_text(json.dumps(QBENCH_ITEMS), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="1 image files missing under .*: 00080.png"):
        load_qbench(both, images)


# ------------------------------------------------------------------------------ PointQA counting


def _looktwice() -> dict[str, list[dict[str, Any]]]:
    def entry(obj: str, ans: Any, bbox: Any) -> dict[str, Any]:
        return {
            "Obj_question": f"How many {obj}s are there?",
            "Super_question": "How many animals are there?",
            "General_question": "How many objects are there?",
            "Ans": ans,
            "BBox": bbox,
            "Point": [5, 6],
        }

    return {
        "100": [entry("dog", 3, {"x": 1, "y": 2, "w": 10, "h": 20}), entry("cat", "1", [0, 0, 4, 4])],
        "200": [entry("bird", 7, [2.5, 3, 5, 6])] + [entry("cow", 1 + i % 7, [0, 0, 2, 2]) for i in range(12)],
    }


def _write_looktwice(tmp_path: Path, data: dict[str, Any] | None = None) -> tuple[Path, Path]:
    path = tmp_path / "lookTwiceQA_test.json"
    path.write_text(json.dumps(_looktwice() if data is None else data), encoding="utf-8")
    return path, _save_images(tmp_path / "vg", ["100.jpg", "200.jpg"])


def test_pointqa_counting_open(tmp_path: Path) -> None:
    path, images = _write_looktwice(tmp_path)
    samples = load_pointqa_counting(path, images)
    assert len(samples) == 15
    first, second, third = samples[:3]
    assert first.question == "How many dogs are there?"
    assert first.answer == "3" and first.choices is None
    assert first.box == (1.0, 2.0, 11.0, 22.0)
    assert first.image == images / "100.jpg"
    meta = first.metadata
    assert meta["task"] == "count" and meta["count"] == 3 and meta["answer_range"] == (1, 7)
    assert meta["image_id"] == "100" and meta["entry"] == 0 and meta["id"] == "100_0"
    assert meta["questions"]["super"] == "How many animals are there?"
    assert meta["point"] == [5, 6]
    assert second.answer == "1" and second.box == (0.0, 0.0, 4.0, 4.0)
    assert third.box == (2.5, 3.0, 7.5, 9.0)
    assert candidate_strings(first) == ["1", "2", "3", "4", "5", "6", "7"]
    assert gold_index(first) == 2
    assert is_correct("There are three dogs.", first) and not is_correct("4", first)
    assert format_question(first) == "How many dogs are there?"


@pytest.mark.parametrize(
    ("question", "text"),
    [
        ("object", "How many dogs are there?"),
        ("super", "How many animals are there?"),
        ("general", "How many objects are there?"),
    ],
)
def test_pointqa_question_types(tmp_path: Path, question: str, text: str) -> None:
    path, images = _write_looktwice(tmp_path)
    sample = load_pointqa_counting(path, images, question=question, limit=1)[0]  # type: ignore[arg-type]
    assert sample.question == text
    assert sample.metadata["question_type"] == question


def _mc_signature(samples: Sequence[Sample]) -> list[tuple[tuple[str, ...] | None, str | None]]:
    return [(s.choices, s.answer) for s in samples]


def test_pointqa_as_choices(tmp_path: Path) -> None:
    path, images = _write_looktwice(tmp_path)
    samples = load_pointqa_counting(path, images, as_choices=True)
    for sample in samples:
        assert sample.choices is not None and len(sample.choices) == 4
        assert len(set(sample.choices)) == 4
        assert all(c in {"1", "2", "3", "4", "5", "6", "7"} for c in sample.choices)
        count = sample.metadata["count"]
        assert sample.choices["ABCD".index(sample.answer or "")] == str(count)
        assert sample.metadata["task"] == "multiple_choice"
        assert candidate_strings(sample) == ["A", "B", "C", "D"]
        assert is_correct(sample.answer or "", sample)
        assert is_correct(f"There are {count}.", sample)
    # Deterministic, independent of limit; another seed changes some draws.
    again = load_pointqa_counting(path, images, as_choices=True)
    assert _mc_signature(again) == _mc_signature(samples)
    assert _mc_signature(load_pointqa_counting(path, images, as_choices=True, limit=3)) == _mc_signature(samples[:3])
    other = load_pointqa_counting(path, images, as_choices=True, seed=1)
    assert _mc_signature(other) != _mc_signature(samples)
    # Gold letters are spread over positions, not always first.
    assert len({s.answer for s in samples}) > 1
    two = load_pointqa_counting(path, images, as_choices=True, n_choices=2, limit=2)
    assert all(s.choices is not None and len(s.choices) == 2 for s in two)
    seven = load_pointqa_counting(path, images, as_choices=True, n_choices=7, limit=1)[0]
    assert sorted(seven.choices or ()) == [str(i) for i in range(1, 8)]


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_pointqa_errors(tmp_path: Path) -> None:
    path, images = _write_looktwice(tmp_path)
    with pytest.raises(ValueError, match="question must be one of"):
        load_pointqa_counting(path, images, question="objects")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_choices"):
        load_pointqa_counting(path, images, as_choices=True, n_choices=8)
    data = _looktwice()
    data["100"][0]["Ans"] = 9
    bad_count, _ = _write_looktwice(tmp_path, data)
    assert load_pointqa_counting(bad_count, images, limit=1)[0].answer == "9"
    with pytest.raises(ValueError, match="image 100 entry 0: count 9 is outside 1..7"):
        load_pointqa_counting(bad_count, images, as_choices=True)
    data = _looktwice()
    del data["100"][1]["Obj_question"]
    no_question, _ = _write_looktwice(tmp_path, data)
    with pytest.raises(ValueError, match="image 100 entry 1: missing field 'Obj_question'"):
        load_pointqa_counting(no_question, images)
    data = _looktwice()
    data["100"][0]["BBox"] = {"x": 1, "y": 2}
    bad_box, _ = _write_looktwice(tmp_path, data)
    with pytest.raises(ValueError, match="image 100 entry 0: BBox .* is not"):
        load_pointqa_counting(bad_box, images)
    data = _looktwice()
    data["100"][0]["BBox"] = [1, 2, 0, 5]
    empty_box, _ = _write_looktwice(tmp_path, data)
    with pytest.raises(ValueError, match="image 100 entry 0: Sample.box .* is empty"):
        load_pointqa_counting(empty_box, images)
    data = _looktwice()
    data["300"] = data.pop("200")
    missing, _ = _write_looktwice(tmp_path, data)
    with pytest.raises(FileNotFoundError, match="13 image files missing under .*vg: 300.jpg, 300.jpg"):
        load_pointqa_counting(missing, images)
    assert len(load_pointqa_counting(missing, images, on_missing="skip")) == 2
    not_map = tmp_path / "list.json"
    not_map.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object mapping image ids"):
        load_pointqa_counting(not_map, images)


# ------------------------------------------------------------------------------ shared image handling


def test_readers_return_sample_sets_and_raise_missing_images_error(tmp_path: Path) -> None:
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000002.jpg"])
    path = _write_jsonl(tmp_path / "coco_pope_random.json", POPE_RECORDS)
    with pytest.raises(MissingImagesError) as info:
        load_pope(path, images)
    assert [p for p, _ in info.value.problems] == [str(images / "COCO_val2014_000000000001.jpg")] * 2
    assert info.value.n_checked == 3
    skipped = load_pope(path, images, on_missing="skip")
    assert isinstance(skipped, SampleSet)
    assert skipped.n_skipped == 2 and skipped.source == str(path) and len(skipped) == 1
    rows = _mmbench_rows()
    rows[1]["image"] = ""
    tsv = _write_tsv(tmp_path / "m.tsv", rows)
    with pytest.raises(MissingImagesError) as mm_info:
        load_mmbench(tsv)
    assert mm_info.value.problems == (("index 1", "empty or undecodable"),)
    mm = load_mmbench(tsv, on_missing="skip")
    assert isinstance(mm, SampleSet) and mm.n_skipped == 1 and [s.metadata["index"] for s in mm] == [0, 2]


def test_limit_counts_kept_samples_with_error_too(tmp_path: Path) -> None:
    # Records: 1 (image missing), 2 (present), 3 (image missing). With limit=1 reading goes on past
    # record 1 until record 2 is kept, and stops there: record 3 is never read.
    images = _save_images(tmp_path / "img", ["COCO_val2014_000000000002.jpg"])
    path = _write_jsonl(tmp_path / "coco_pope_random.json", POPE_RECORDS)
    with pytest.raises(FileNotFoundError, match=r"1 image files missing under .*: COCO_val2014_000000000001\.jpg \("):
        load_pope(path, images, limit=1)
    limited = load_pope(path, images, limit=1, on_missing="skip")
    assert [s.metadata["question_id"] for s in limited] == [2] and limited.n_skipped == 1


def test_pointqa_counting_reads_what_load_looktwice_reads(tmp_path: Path) -> None:
    data = _looktwice()
    data["100"][0]["Ans"] = "3.0"
    path, images = _write_looktwice(tmp_path, data)
    (images / "VG_100K").mkdir()
    (images / "200.jpg").rename(images / "VG_100K" / "200.jpg")  # found in the VG subfolder, as by load_looktwice
    counting = load_pointqa_counting(path, images)
    looktwice = load_looktwice(path, images, question="object")
    assert len(counting) == len(looktwice) == 15
    for c, lt in zip(counting, looktwice):
        assert (c.question, c.answer, c.box, c.image) == (lt.question, lt.answer.split(".")[0], lt.box, lt.image)
        assert c.metadata["sample_id"] == lt.metadata["sample_id"]
    assert counting[0].metadata["count"] == 3
    assert counting[2].image == images / "VG_100K" / "200.jpg"


def test_pointqa_counting_limit_stops_before_the_next_record(tmp_path: Path) -> None:
    data = _looktwice()
    del data["100"][1]["Obj_question"]  # a bad record right after the limit is never parsed
    path, images = _write_looktwice(tmp_path, data)
    assert [s.metadata["id"] for s in load_pointqa_counting(path, images, limit=1)] == ["100_0"]
    with pytest.raises(ValueError, match="image 100 entry 1: missing field 'Obj_question'"):
        load_pointqa_counting(path, images, limit=2)
