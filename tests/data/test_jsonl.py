"""The generic JSON-lines reader and the SampleSet container."""

from __future__ import annotations

import json
import pickle

import pytest
from PIL import Image

from vh_lens.data._images import MissingImagesError, SampleSet
from vh_lens.data.jsonl import load_jsonl
from vh_lens.data.sample import Sample


def write_lines(path, records, blank_after=None):
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 24), (1, 2, 3)).save(tmp_path / "imgs" / "a.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.new("RGB", (10, 10)).save(other / "b.jpg")
    return tmp_path, other


def test_fields_paths_and_metadata(files):
    root, other = files
    records = [
        {"image": "imgs/a.png", "question": "How many?", "answer": 3, "box": [1, 2, 20, 22], "split": "val"},
        {
            "image": str(other / "b.jpg"),
            "question": "Which?",
            "choices": ["x", "y", "z"],
            "answer": "B",
            "metadata": {"category": "color"},
        },
        {"question": "What is 2+2?", "answer": "4"},
        {"image": None, "question": "Text only too?"},
    ]
    path = write_lines(root / "q.jsonl", records, blank_after=2)
    samples = load_jsonl(path)
    assert isinstance(samples, SampleSet) and len(samples) == 4 and samples.n_skipped == 0
    a, b, c, d = samples
    assert a.image == root / "imgs" / "a.png" and a.load_image().size == (32, 24)
    assert (a.question, a.answer, a.box, a.choices) == ("How many?", "3", (1.0, 2.0, 20.0, 22.0), None)
    assert a.metadata == {"source": str(path), "line": 1, "split": "val"}
    assert b.image == other / "b.jpg" and b.choices == ("x", "y", "z")
    assert b.metadata == {"source": str(path), "line": 2, "category": "color"}
    assert c.image is None and c.answer == "4" and c.metadata["line"] == 4  # blank line 3 ignored
    assert d.image is None and d.answer is None


def test_images_dir_overrides_the_files_folder(files):
    root, other = files
    path = write_lines(root / "q.jsonl", [{"image": "b.jpg", "question": "q?"}])
    assert load_jsonl(path, images_dir=other)[0].image == other / "b.jpg"
    with pytest.raises(MissingImagesError, match="b.jpg"):
        load_jsonl(path)


def test_missing_images_error_and_skip(files):
    root, _ = files
    records = [
        {"image": "imgs/a.png", "question": "q1?"},
        {"image": "imgs/gone1.png", "question": "q2?"},
        {"question": "text only"},
        {"image": "imgs/gone2.png", "question": "q3?"},
    ]
    path = write_lines(root / "q.jsonl", records)
    with pytest.raises(MissingImagesError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert "2 of 4 samples" in message and "gone1.png (missing)" in message and "gone2.png (missing)" in message
    skipped = load_jsonl(path, on_missing="skip")
    assert [s.question for s in skipped] == ["q1?", "text only"] and skipped.n_skipped == 2
    # "error" with a limit checks only the first `limit` lines
    assert len(load_jsonl(path, limit=1)) == 1
    assert len(load_jsonl(path, on_missing="skip", limit=2)) == 2


def test_error_lists_only_the_first_five_paths(files):
    root, _ = files
    path = write_lines(root / "q.jsonl", [{"image": f"m{i}.png", "question": "q?"} for i in range(8)])
    message = str(pytest.raises(MissingImagesError, load_jsonl, path).value)
    assert "8 of 8 samples" in message and "m4.png" in message and "m5.png" not in message
    assert "and 3 more" in message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"q.jsonl:2: not valid JSON"),
        ("[1, 2]", r"q.jsonl:2: each line must be a JSON object"),
        ('{"answer": "x"}', r"q.jsonl:2: 'question' must be a non-empty string"),
        ('{"question": "q?", "box": [1, 2, 3]}', r"q.jsonl:2: 'box' must be \[left, top, right, bottom\]"),
        ('{"question": "q?", "box": [5, 5, 1, 9]}', r"q.jsonl:2: Sample.box .* is empty"),
        ('{"question": "q?", "choices": "AB"}', r"q.jsonl:2: 'choices' must be a list"),
        ('{"question": "q?", "metadata": 3}', r"q.jsonl:2: 'metadata' must be an object"),
        ('{"question": "q?", "image": 5}', r"q.jsonl:2: 'image' must be a path string or null"),
    ],
)
def test_bad_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "fine?"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_bad_on_missing(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [{"question": "q?"}])
    with pytest.raises(ValueError, match=r"on_missing must be one of \('error', 'skip'\), got 'drop'"):
        load_jsonl(path, on_missing="drop")


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_sample_set_sequence_protocol():
    samples = tuple(Sample(None, f"q{i}?", str(i)) for i in range(4))
    s = SampleSet(list(samples), n_skipped=2, source="src")
    assert isinstance(s.samples, tuple) and len(s) == 4 and list(s) == list(samples)
    assert s[0] is samples[0] and s[-1] is samples[-1]
    head = s[:2]
    assert isinstance(head, SampleSet) and list(head) == list(samples[:2])
    assert (head.n_skipped, head.source) == (2, "src")
    assert samples[1] in s and s.index(samples[2]) == 2
    assert repr(s) == "SampleSet(4 samples, n_skipped=2, source='src')"
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(AttributeError):
        s.n_skipped = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="not Sample"):
        SampleSet(("q?",))
    with pytest.raises(ValueError, match="n_skipped"):
        SampleSet((), n_skipped=-1)
