"""PointQA readers (LookTwice-QA and ViP-LLaVA's pointQA_twice) and paper A's six settings."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from vh_lens.data._images import MissingImagesError, SampleSet
from vh_lens.data.pointqa import (
    PAPER_A_SETTINGS,
    RECTANGLE_HINT,
    load_looktwice,
    load_vip_pointqa,
    paper_a_settings,
    xywh_to_box,
)
from vh_lens.data.sample import load_rgb
from vh_lens.data.visual_prompt import BoxedImage

GRAY = (90, 120, 150)


def qa(n: int, bbox, point=None, obj="clocks", sup="devices"):
    return {
        "General_question": "How many of these are there?",
        "Obj_question": f"How many {obj} are there?",
        "Super_question": f"How many {sup} are there?",
        "Ans": str(n),
        "BBox": bbox,
        "Point": point,
    }


@pytest.fixture
def looktwice(tmp_path):
    """Three VG images (one .png, one in VG_100K/), four QAs; image 99 is missing."""
    vg = tmp_path / "vg"
    (vg / "VG_100K").mkdir(parents=True)
    Image.new("RGB", (200, 100), GRAY).save(vg / "1.jpg")
    Image.new("RGB", (120, 90), GRAY).save(vg / "2.png")
    Image.new("RGB", (80, 80), GRAY).save(vg / "VG_100K" / "3.jpg")
    data = {
        "1": [
            qa(
                2,
                {"x": 10, "y": 20, "w": 30, "h": 40, "object_id": 7, "names": ["clock"]},
                {"x": 25, "y": 40, "ans": "2"},
            ),
            qa(5, [50, 10, 20, 30], obj="people", sup="beings"),
        ],
        "2": [qa(1, {"X": 0, "Y": 0, "W": 10, "H": 10})],
        "3": [qa(7, {"x": 4, "y": 4, "w": 60, "h": 60})],
    }
    path = tmp_path / "looktwice.json"
    path.write_text(json.dumps(data))
    return path, vg, data


def test_box_conversion_by_hand():
    assert xywh_to_box({"x": 10, "y": 20, "w": 30, "h": 40}) == (10.0, 20.0, 40.0, 60.0)
    assert xywh_to_box([50, 10, 20, 30]) == (50.0, 10.0, 70.0, 40.0)
    with pytest.raises(ValueError, match="x, y, w, h"):
        xywh_to_box({"x": 1, "y": 2, "w": 3})


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("general", "How many of these are there?"),
        ("object", "How many clocks are there?"),
        ("super", "How many devices are there?"),
    ],
)
def test_looktwice_question_types(looktwice, question, expected):
    path, vg, _ = looktwice
    samples = load_looktwice(path, vg, question=question)
    assert isinstance(samples, SampleSet) and len(samples) == 4 and samples.n_skipped == 0
    first = samples[0]
    assert first.question == expected
    assert first.answer == "2"
    assert first.box == (10.0, 20.0, 40.0, 60.0)
    assert first.image == vg / "1.jpg"
    assert first.metadata["question_type"] == question
    assert first.metadata["image_id"] == "1" and first.metadata["sample_id"] == "1/0"
    assert first.metadata["point"] == (25.0, 40.0)
    assert first.metadata["questions"]["object"] == "How many clocks are there?"
    assert first.metadata["dataset"] == "looktwiceqa" and first.metadata["source"] == str(path)
    assert first.metadata["visual_prompt"] is False


def test_looktwice_list_boxes_other_extensions_and_vg_subfolders(looktwice):
    path, vg, _ = looktwice
    samples = load_looktwice(path, vg, question="object")
    assert [s.box for s in samples] == [
        (10.0, 20.0, 40.0, 60.0),
        (50.0, 10.0, 70.0, 40.0),
        (0.0, 0.0, 10.0, 10.0),
        (4.0, 4.0, 64.0, 64.0),
    ]
    assert samples[1].question == "How many people are there?" and samples[1].metadata["point"] is None
    assert samples[2].image == vg / "2.png"
    assert samples[3].image == vg / "VG_100K" / "3.jpg"
    assert [s.load_image().size for s in samples] == [(200, 100), (200, 100), (120, 90), (80, 80)]


def test_looktwice_visual_prompt_draws_red_box_lazily(looktwice):
    path, vg, _ = looktwice
    samples = load_looktwice(path, vg, question="super", visual_prompt=True)
    first = samples[0]
    assert isinstance(first.image, BoxedImage) and first.image.path == vg / "1.jpg"
    assert first.metadata["visual_prompt"] is True and first.box == (10.0, 20.0, 40.0, 60.0)
    image = first.image.load()  # until load_rgb calls .load(), Sample.load_image cannot
    assert image.size == (200, 100)
    assert image.getpixel((10, 30)) == (255, 0, 0)  # left edge of the box, inside it
    assert image.getpixel((39, 59)) == (255, 0, 0)  # bottom-right pixel of the box
    original = load_rgb(first.image.path)  # JPEG: compare with the decoded file
    assert image.getpixel((25, 40)) == original.getpixel((25, 40))  # interior untouched
    assert image.getpixel((40, 30)) == original.getpixel((40, 30))  # just right of the box untouched
    assert original.getpixel((10, 30)) != (255, 0, 0)


def test_looktwice_limit_image_ids_and_suffix(looktwice, tmp_path):
    path, vg, _ = looktwice
    assert [s.metadata["sample_id"] for s in load_looktwice(path, vg, limit=2)] == ["1/0", "1/1"]
    split = tmp_path / "looktwiceqa_test_imgs.json"
    split.write_text(json.dumps(["2", "3"]))
    assert [s.metadata["image_id"] for s in load_looktwice(path, vg, image_ids=split)] == ["2", "3"]
    assert [s.metadata["image_id"] for s in load_looktwice(path, vg, image_ids=[3])] == ["3"]
    hinted = load_looktwice(path, vg, question_suffix=RECTANGLE_HINT, limit=1)
    assert hinted[0].question == "How many of these are there? The exemplary object is within the rectangle."


def test_missing_images_error_lists_count_and_paths(looktwice):
    path, vg, data = looktwice
    data["99"] = [qa(3, [1, 1, 5, 5]), qa(4, [1, 1, 5, 5])]
    data["98"] = [qa(3, [1, 1, 5, 5])]
    path.write_text(json.dumps(data))
    with pytest.raises(MissingImagesError) as info:
        load_looktwice(path, vg)
    message = str(info.value)
    assert "3 of 7 samples" in message
    assert str(vg / "99.jpg") in message and str(vg / "98.jpg") in message
    assert "on_missing='skip'" in message
    assert isinstance(info.value, FileNotFoundError)
    assert [p for p, _ in info.value.problems] == [str(vg / "99.jpg")] * 2 + [str(vg / "98.jpg")]


def test_missing_images_skip_reports_count(looktwice, caplog):
    path, vg, data = looktwice
    data = {"99": [qa(3, [1, 1, 5, 5]), qa(4, [1, 1, 5, 5])], **data}
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="vh_lens.data._images"):
        samples = load_looktwice(path, vg, on_missing="skip")
    assert len(samples) == 4 and samples.n_skipped == 2
    assert "skipped 2 of 6 samples" in caplog.text
    # with skip, the limit counts kept samples: reading goes on past the missing image
    limited = load_looktwice(path, vg, on_missing="skip", limit=1)
    assert len(limited) == 1 and limited.n_skipped == 2
    assert limited[0].metadata["image_id"] == "1"


def test_verify_images_flags_unreadable_files_only_on_request(looktwice):
    path, vg, _ = looktwice
    (vg / "1.jpg").write_bytes(b"not a jpeg at all")
    assert len(load_looktwice(path, vg)) == 4
    with pytest.raises(MissingImagesError, match="unreadable"):
        load_looktwice(path, vg, verify_images=True)
    skipped = load_looktwice(path, vg, verify_images=True, on_missing="skip")
    assert skipped.n_skipped == 2 and len(skipped) == 2


@pytest.mark.parametrize("loader", [load_looktwice, load_vip_pointqa])
@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_bad_question_type_names_allowed_values(looktwice, loader):
    path, vg, _ = looktwice
    with pytest.raises(ValueError, match=r"question must be one of \('general', 'object', 'super'\), got 'obj'"):
        loader(path, vg, question="obj")


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_bad_on_missing_and_limit(looktwice):
    path, vg, _ = looktwice
    with pytest.raises(ValueError, match=r"on_missing must be one of \('error', 'skip'\)"):
        load_looktwice(path, vg, on_missing="ignore")
    with pytest.raises(ValueError, match="limit"):
        load_looktwice(path, vg, limit=-1)


def test_missing_field_and_wrong_format_are_explicit(looktwice, tmp_path):
    path, vg, data = looktwice
    del data["2"][0]["Super_question"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image 2 QA 0: no super question field \(accepted: super_question"):
        load_looktwice(path, vg, question="super")
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ValueError, match="use load_vip_pointqa"):
        load_looktwice(listed, vg)
    with pytest.raises(ValueError, match="use load_looktwice"):
        load_vip_pointqa(path, vg)


@pytest.fixture
def vip(tmp_path):
    root = tmp_path / "LookTwiceQA"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (100, 60), GRAY).save(root / "images" / "11.jpg")
    records = [
        {
            "id": "pointQA_twice-0",
            "image": "images/11.jpg",
            "bboxes": [[10, 5, 50, 45], [0, 0, 2, 2]],
            "answer": "3",
            "general_question": "How many of these are there?",
            "obj_question": "How many cups are there?",
            "super_question": "How many containers are there?",
        },
        {  # casing variant of the keys
            "id": "pointQA_twice-1",
            "image": "images/11.jpg",
            "bboxes": [[1, 2, 30, 40]],
            "answer": 6,
            "General_question": "How many of these are there?",
            "Obj_question": "How many birds are there?",
            "Super_question": "How many animals are there?",
        },
    ]
    path = tmp_path / "pointQA_twice_test.json"
    path.write_text(json.dumps(records))
    return path, root, records


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("general", ["How many of these are there?"] * 2),
        ("object", ["How many cups are there?", "How many birds are there?"]),
        ("super", ["How many containers are there?", "How many animals are there?"]),
    ],
)
def test_vip_pointqa_question_types(vip, question, expected):
    path, root, _ = vip
    samples = load_vip_pointqa(path, root, question=question)
    assert [s.question for s in samples] == expected
    assert [s.answer for s in samples] == ["3", "6"]
    assert [s.box for s in samples] == [(10.0, 5.0, 50.0, 45.0), (1.0, 2.0, 30.0, 40.0)]  # first box, as given
    assert samples[0].image == root / "images" / "11.jpg"
    meta = samples[0].metadata
    assert meta["id"] == meta["sample_id"] == "pointQA_twice-0" and meta["n_boxes"] == 2
    assert meta["image_id"] == "11" and meta["question_type"] == question and meta["dataset"] == "vip-pointqa"


def test_vip_pointqa_visual_and_missing(vip):
    path, root, records = vip
    visual = load_vip_pointqa(path, root, question="object", visual_prompt=True)
    image = visual[0].image.load()
    original = load_rgb(root / "images" / "11.jpg")
    assert image.getpixel((10, 20)) == (255, 0, 0) and image.getpixel((30, 25)) == original.getpixel((30, 25))
    records.append({**records[0], "id": "pointQA_twice-2", "image": "images/missing.jpg"})
    path.write_text(json.dumps(records))
    with pytest.raises(MissingImagesError, match=r"1 of 3 samples.*\n.*missing\.jpg \(missing\)"):
        load_vip_pointqa(path, root)
    skipped = load_vip_pointqa(path, root, on_missing="skip")
    assert len(skipped) == 2 and skipped.n_skipped == 1


def test_paper_a_settings_six_paired_settings(looktwice, vip):
    path, vg, _ = looktwice
    settings = paper_a_settings(path, vg)
    assert tuple(settings) == PAPER_A_SETTINGS
    for qtype in ("general", "object", "super"):
        plain, visual = settings[qtype], settings[f"{qtype}+visual"]
        assert len(plain) == len(visual) == 4
        for p, v in zip(plain, visual):
            assert p.metadata["sample_id"] == v.metadata["sample_id"]
            assert (p.question, p.answer, p.box) == (v.question, v.answer, v.box)
            assert p.metadata["question_type"] == v.metadata["question_type"] == qtype
            assert not isinstance(p.image, BoxedImage) and isinstance(v.image, BoxedImage)
    assert settings["object"][0].question != settings["super"][0].question

    vpath, root, _ = vip
    vip_settings = paper_a_settings(vpath, root, format="vip-pointqa", limit=1)
    assert tuple(vip_settings) == PAPER_A_SETTINGS and all(len(s) == 1 for s in vip_settings.values())


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_paper_a_settings_rejects_bad_arguments(looktwice):
    path, vg, _ = looktwice
    with pytest.raises(ValueError, match=r"format must be one of \('looktwice', 'vip-pointqa'\)"):
        paper_a_settings(path, vg, format="pointqa")
    with pytest.raises(ValueError, match="question"):
        paper_a_settings(path, vg, question="object")


def test_limit_stops_before_parsing_the_next_record(looktwice):
    path, vg, data = looktwice
    del data["1"][1]["Super_question"]
    path.write_text(json.dumps(data))
    assert [s.metadata["sample_id"] for s in load_looktwice(path, vg, question="super", limit=1)] == ["1/0"]
    with pytest.raises(ValueError, match="image 1 QA 1: no super question field"):
        load_looktwice(path, vg, question="super", limit=2)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("BBox", {"x": 1, "y": 2}, r"image 2 QA 0: BBox \{'x': 1, 'y': 2\} is not \{x, y, w, h\}"),
        ("BBox", [1, 2, 0, 5], r"image 2 QA 0: Sample\.box .* is empty"),
        ("General_question", None, r"image 2 QA 0: no general question field"),
        ("Point", "here", r"image 2 QA 0: Point 'here' is not"),
    ],
)
def test_bad_fields_name_the_record(looktwice, field, value, match):
    path, vg, data = looktwice
    data["2"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load_looktwice(path, vg)
