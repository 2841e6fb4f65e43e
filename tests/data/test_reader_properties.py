"""Property tests of the data readers: random, mostly malformed records either read or give a
``ValueError`` naming the file and the record (line, index or id); never another exception type.

Each reader gets records built from its own field names with values of any JSON type (NaN and
infinities included), so the malformed cases are near misses of the real format.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vh_lens.data import (
    load_cogvision,
    load_jsonl,
    load_looktwice,
    load_mmbench,
    load_pointqa_counting,
    load_pope,
    load_qbench,
    load_seed_bench,
    load_vip_pointqa,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -1.0, 0.0, 3.5]),
    st.text(max_size=8),
    st.sampled_from(["img.png", "A", "yes", "no", "1", "", "nan", "Retrieval"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
boxes = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 100), st.text(max_size=2)),
                 min_size=0, max_size=6)  # fmt: skip


def records(keys: list[str], extra: st.SearchStrategy = values) -> st.SearchStrategy:
    """Dicts over ``keys`` (each present or not) with values of any type, or not dicts at all."""
    field = st.one_of(extra, boxes, values)
    return st.one_of(
        st.fixed_dictionaries({}, optional={k: field for k in keys}),
        values,
    )


def _image(folder: Path) -> None:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "img.png")


def _check(call, path: Path) -> None:
    """``call()`` reads, or raises a ValueError naming ``path`` (and the record, where one is at fault)."""
    try:
        call()
    except ValueError as err:
        message = str(err)
        assert path.name in message, message  # the file, and the record where one is at fault
    except FileNotFoundError:  # MissingImagesError: a record names an image that is not there
        pass


def _write_lines(path: Path, items: list) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


@SETTINGS
@given(items=st.lists(records(["image", "question", "answer", "box", "choices", "metadata"]), min_size=1, max_size=5))
def test_jsonl(items, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("jsonl")
    _image(folder)
    path = folder / "q.jsonl"
    _write_lines(path, items)
    _check(lambda: load_jsonl(path, on_missing="skip"), path)


@SETTINGS
@given(items=st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_jsonl_lines_that_are_not_json(items, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "q.jsonl"
    path.write_text("\n".join(items) + "\n", encoding="utf-8")
    _check(lambda: load_jsonl(path, on_missing="skip"), path)


_LOOKTWICE_KEYS = ["General_question", "Obj_question", "Super_question", "Ans", "BBox", "Point"]


@SETTINGS
@given(data=st.one_of(st.dictionaries(st.sampled_from(["img", "1", "2"]),
                                      st.one_of(st.lists(records(_LOOKTWICE_KEYS), max_size=3), values), max_size=3),
                      values))  # fmt: skip
def test_looktwice_and_pointqa_counting(data, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("looktwice")
    _image(folder)
    path = folder / "looktwice.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check(lambda: load_looktwice(path, folder, "general", on_missing="skip"), path)
    _check(lambda: load_pointqa_counting(path, folder, on_missing="skip"), path)


@SETTINGS
@given(data=st.one_of(st.lists(records(["id", "image", "bboxes", "answer", "general_question", "obj_question",
                                        "super_question"]), max_size=4), values))  # fmt: skip
def test_vip_pointqa(data, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("vip")
    _image(folder)
    path = folder / "pointQA_twice.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check(lambda: load_vip_pointqa(path, folder, "general", on_missing="skip"), path)


@SETTINGS
@given(items=st.lists(records(["question_id", "image", "text", "label", "category"]), min_size=1, max_size=4))
def test_pope(items, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("pope")
    _image(folder)
    path = folder / "coco_pope_random.json"
    _write_lines(path, items)
    _check(lambda: load_pope(path, folder, on_missing="skip"), path)


@SETTINGS
@given(data=st.one_of(
    st.fixed_dictionaries({"questions": st.lists(records(["question", "choice_a", "choice_b", "choice_c", "choice_d",
                                                          "answer", "data_id", "data_type", "question_id",
                                                          "question_type_id"]), max_size=4)}),
    values))  # fmt: skip
def test_seed_bench(data, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("seed")
    _image(folder)
    path = folder / "SEED-Bench.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check(lambda: load_seed_bench(path, folder, on_missing="skip"), path)


@SETTINGS
@given(data=st.one_of(st.lists(records(["img_path", "question", "candidates", "correct_ans", "type", "concern"]),
                               max_size=4), values))  # fmt: skip
def test_qbench(data, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("qbench")
    _image(folder)
    path = folder / "llvisionqa_dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    _check(lambda: load_qbench(path, folder, on_missing="skip"), path)


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


_CELLS = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\t\r\n\x00", blacklist_categories=["Cs"]),
                           max_size=6), st.sampled_from(["", "nan", "A", "B", "1", "x" * 3, _png_b64()]))  # fmt: skip


@SETTINGS
@given(header=st.lists(st.sampled_from(["index", "question", "hint", "answer", "image", "A", "B", "C", "category"]),
                       min_size=1, max_size=7, unique=True),
       rows=st.lists(st.lists(_CELLS, min_size=0, max_size=8), min_size=1, max_size=4))  # fmt: skip
def test_mmbench_tsv(header, rows, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("mmbench") / "mmbench_dev.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    _check(lambda: load_mmbench(path, on_missing="skip"), path)


_SUB = st.fixed_dictionaries({}, optional={k: st.one_of(values, st.text(max_size=5)) for k in
                                           ["subquestion", "answer", "cognitive_skill"]})  # fmt: skip


@SETTINGS
@given(items=st.lists(st.one_of(st.fixed_dictionaries({}, optional={"id": values, "image": values, "question": values,
                                                                    "answer": values,
                                                                    "generated": st.one_of(st.lists(_SUB, max_size=3),
                                                                                           values)}),
                                values), min_size=0, max_size=4),
       as_lines=st.booleans())  # fmt: skip
def test_cogvision(items, as_lines, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("cog")
    _image(folder)
    path = folder / ("cog.jsonl" if as_lines else "cog.json")
    if as_lines:
        _write_lines(path, items)
    else:
        path.write_text(json.dumps(items), encoding="utf-8")
    _check(lambda: load_cogvision(path, on_missing="skip"), path)


@pytest.mark.parametrize("box", [[math.nan, 0, 5, 5], [0, 0, math.inf, 5], [0, -math.inf, 5, 5]])
def test_non_finite_boxes_are_refused_with_the_line(box, tmp_path) -> None:
    path = tmp_path / "q.jsonl"
    _write_lines(path, [{"question": "q?", "box": [0, 0, 4, 4]}, {"question": "q?", "box": box}])
    with pytest.raises(ValueError, match=r"q.jsonl:2: .*not finite"):
        load_jsonl(path)
