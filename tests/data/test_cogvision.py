"""CogVision / CogQA reader: exact counts on the published CogQA files, formats, prompts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vh_lens.data._images import MissingImagesError
from vh_lens.data.cogvision import (
    COGQA_FUNCTIONS,
    CogItem,
    SubQuestion,
    format_chain_prompt,
    load_cogvision,
    main_question_samples,
    subquestion_samples,
)

COGQA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cogqa"
TEST_FILE = COGQA_DIR / "cogqa_balanced_cot_test_data.json"
TRAIN_FILE = COGQA_DIR / "cogqa_balanced_cot_train_data.json"
needs_cogqa = pytest.mark.skipif(not TEST_FILE.is_file(), reason="CogQA files not available here")

# Two items in CogQA's published schema (the first is the test file's first item, shortened).
COGQA_SNIPPET = [
    {
        "question": "Lee mows one lawn and charges $33. Last week he mowed 16 lawns. How much did he earn?",
        "answer": "33 * 16 = $528.\n",
        "generated": [
            {
                "subquestion": "How much does Lee charge for mowing one lawn?",
                "answer": "$33",
                "cognitive_skill": "Retrieval",
            },
            {"subquestion": "How many lawns did Lee mow last week?", "answer": 16, "cognitive_skill": "Retrieval"},
            {
                "subquestion": "What is the total amount Lee earned?",
                "answer": 528.5,
                "cognitive_skill": "Math Calculation",
            },
        ],
    },
    {
        "question": "Is the statement factual?",
        "answer": "No.",
        "generated": [
            {"subquestion": "What is the statement?", "answer": "Palladium coins.", "cognitive_skill": "Retrieval"},
            {"subquestion": "Is it factual?", "answer": "No", "cognitive_skill": "Logical Reasoning"},
        ],
    },
]


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@needs_cogqa
@pytest.mark.parametrize(
    ("path", "n_items", "n_subs"), [(TEST_FILE, 148, 713), (TRAIN_FILE, 572, 2689)], ids=["test", "train"]
)
def test_real_cogqa_counts(path: Path, n_items: int, n_subs: int) -> None:
    items = load_cogvision(path)
    assert len(items) == n_items
    assert sum(len(it.subquestions) for it in items) == n_subs
    assert len(subquestion_samples(items)) == n_subs
    assert len(main_question_samples(items)) == n_items
    assert all(it.image is None for it in items)
    # The raw JSON agrees (an independent count).
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert [len(r["generated"]) for r in raw] == [len(it.subquestions) for it in items]


@needs_cogqa
def test_real_cogqa_labels() -> None:
    test_counts = Counter(s.function for it in load_cogvision(TEST_FILE) for s in it.subquestions)
    assert test_counts == {
        "Math Calculation": 201,
        "Retrieval": 175,
        "Knowledge Recall": 103,
        "Logical Reasoning": 68,
        "Inference": 68,
        "Semantic Understanding": 50,
        "Syntactic Understanding": 24,
        "Decision-making": 24,
    }
    train_items = load_cogvision(TRAIN_FILE)
    train_counts = Counter(s.function for it in train_items for s in it.subquestions)
    assert set(COGQA_FUNCTIONS) <= set(train_counts)
    extra = {k: v for k, v in train_counts.items() if k not in COGQA_FUNCTIONS}
    assert extra == {"Induction": 3, "Self-Evaluation": 1, "Task Comprehension": 1, "Lexical Knowledge": 1}
    assert len(subquestion_samples(train_items, functions=COGQA_FUNCTIONS)) == 2689 - 6


@needs_cogqa
def test_real_cogqa_numeric_answers_become_text() -> None:
    items = load_cogvision(TEST_FILE)
    assert items[7].subquestions[1] == SubQuestion("What is the value of 6^4?", "1296", "Math Calculation")
    assert items[120].subquestions[2].answer == "196.25"


def test_snippet_items_and_ids(tmp_path: Path) -> None:
    items = load_cogvision(_write(tmp_path / "cogqa.json", COGQA_SNIPPET))
    assert [it.item_id for it in items] == ["cogqa:0", "cogqa:1"]
    assert items[0].answer == "33 * 16 = $528."
    assert items[0].functions == ("Retrieval", "Retrieval", "Math Calculation")
    assert [s.answer for s in items[0].subquestions] == ["$33", "16", "528.5"]
    assert items[0].metadata == {}


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_chain_prompt_format(tmp_path: Path) -> None:
    items = load_cogvision(_write(tmp_path / "cogqa.json", COGQA_SNIPPET))
    samples = subquestion_samples(items)
    assert len(samples) == 5
    third = samples[2]
    assert third.question == (
        "Main question: Lee mows one lawn and charges $33. Last week he mowed 16 lawns. How much did he earn?\n"
        "Q1: How much does Lee charge for mowing one lawn?\n"
        "A1: $33\n"
        "Q2: How many lawns did Lee mow last week?\n"
        "A2: 16\n"
        "Q3: What is the total amount Lee earned?"
    )
    assert third.answer == "528.5"
    assert third.image is None
    assert third.metadata == {
        "group": 0,
        "item_id": "cogqa:0",
        "sub_index": 2,
        "n_subquestions": 3,
        "function": "Math Calculation",
        "subquestion": "What is the total amount Lee earned?",
        "main_question": items[0].question,
        "main_answer": "33 * 16 = $528.",
    }
    assert samples[0].question.endswith("\nQ1: How much does Lee charge for mowing one lawn?")
    assert [s.metadata["group"] for s in samples] == [0, 0, 0, 1, 1]
    bare = subquestion_samples(items, context="none")
    assert [s.question for s in bare] == [s.metadata["subquestion"] for s in samples]
    no_main = subquestion_samples(items, include_main_question=False)
    assert (
        no_main[1].question
        == "Q1: How much does Lee charge for mowing one lawn?\nA1: $33\nQ2: How many lawns did Lee mow last week?"
    )
    assert format_chain_prompt("Why?") == "Q1: Why?"
    with pytest.raises(ValueError, match="context"):
        subquestion_samples(items, context="cot")  # type: ignore[arg-type]


def test_function_filter_keeps_full_chain_context(tmp_path: Path) -> None:
    items = load_cogvision(_write(tmp_path / "cogqa.json", COGQA_SNIPPET))
    math = subquestion_samples(items, functions=["Math Calculation"])
    assert len(math) == 1
    assert "A2: 16" in math[0].question and math[0].metadata["sub_index"] == 2


def test_main_question_samples(tmp_path: Path) -> None:
    items = load_cogvision(_write(tmp_path / "cogqa.json", COGQA_SNIPPET))
    mains = main_question_samples(items)
    assert [m.question for m in mains] == [it.question for it in items]
    assert mains[1].answer == "No."
    assert mains[1].metadata == {"group": 1, "item_id": "cogqa:1", "functions": ("Retrieval", "Logical Reasoning")}


def _cogvision_records() -> list[dict]:
    return [
        {
            "id": "cv-1",
            "image_path": "imgs/a.png",
            "main_question": "How many red shapes?",
            "main_answer": "2",
            "subquestions": [
                {
                    "question": "Which shapes are red?",
                    "answer": "circle, square",
                    "function": "Low-level Visual Reception",
                },
                {"question": "How many is that?", "answer": "2", "function": "Math Reasoning"},
            ],
            "source": "synthetic",
        },
        {
            "id": "cv-2",
            "image": "imgs/missing.png",
            "question": "Is it day?",
            "answer": "yes",
            "generated": [
                {"subquestion": "Is the sky bright?", "answer": "yes", "cognitive_skill": "High-level Visual Reception"}
            ],
        },
    ]


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_cogvision_images_alternate_keys_and_missing(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 6), "red").save(tmp_path / "imgs" / "a.png")
    path = _write(tmp_path / "cogvision.json", _cogvision_records())
    with pytest.raises(MissingImagesError, match="missing.png") as err:
        load_cogvision(path)
    assert err.value.problems == ((str(tmp_path / "imgs" / "missing.png"), "missing"),) and err.value.n_checked == 2
    items = load_cogvision(path, on_missing="skip")
    assert len(items) == 1
    item = items[0]
    assert item.item_id == "cv-1" and item.answer == "2" and item.question == "How many red shapes?"
    assert Path(item.image) == tmp_path / "imgs" / "a.png"
    assert item.metadata == {"source": "synthetic"}
    assert item.subquestions[0] == SubQuestion("Which shapes are red?", "circle, square", "Low-level Visual Reception")
    samples = subquestion_samples(items)
    assert samples[1].image == item.image and samples[1].load_image().size == (8, 6)
    assert samples[1].question.startswith(
        "Main question: How many red shapes?\nQ1: Which shapes are red?\nA1: circle, square\nQ2:"
    )
    # images_dir: relative paths resolve there instead of next to the file.
    other = tmp_path / "elsewhere"
    (other / "imgs").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(other / "imgs" / "a.png")
    Image.new("RGB", (4, 4)).save(other / "imgs" / "missing.png")
    moved = load_cogvision(path, images_dir=other)
    assert [Path(it.image) for it in moved] == [other / "imgs" / "a.png", other / "imgs" / "missing.png"]
    with pytest.raises(ValueError, match="on_missing"):
        load_cogvision(path, on_missing="ignore")  # type: ignore[arg-type]
    (other / "imgs" / "missing.png").write_bytes(b"not a png")
    assert len(load_cogvision(path, images_dir=other)) == 2
    assert len(load_cogvision(path, images_dir=other, verify_images=True, on_missing="skip")) == 1


def test_jsonl_and_data_wrapper(tmp_path: Path) -> None:
    lines = tmp_path / "items.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in COGQA_SNIPPET) + "\n", encoding="utf-8")
    wrapped = _write(tmp_path / "wrapped.json", {"data": COGQA_SNIPPET})
    assert load_cogvision(lines)[1].subquestions == load_cogvision(wrapped)[1].subquestions
    assert len(load_cogvision(lines)) == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"answer": "x", "generated": [{"subquestion": "q", "answer": "a", "cognitive_skill": "Retrieval"}]},
            "main question",
        ),
        ({"question": "q", "generated": []}, "chain"),
        ({"question": "q", "generated": [{"subquestion": "q", "answer": "a"}]}, "function"),
        (
            {"question": "q", "generated": [{"subquestion": "q", "answer": "", "cognitive_skill": "Retrieval"}]},
            "answer",
        ),
        ({"question": "q", "generated": ["not an object"]}, "expected an object"),
    ],
)
def test_malformed_entries_raise(tmp_path: Path, record: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_cogvision(_write(tmp_path / "bad.json", [record]))


def test_dataclass_validation() -> None:
    with pytest.raises(ValueError, match="function"):
        SubQuestion("q", "a", " ")
    with pytest.raises(ValueError, match="no subquestions"):
        CogItem(image=None, question="q", answer=None, subquestions=(), item_id="x")
    item = CogItem(image=None, question="q", answer=None, subquestions=[SubQuestion("q", "a", "f")], item_id="x")
    assert isinstance(item.subquestions, tuple)
    with pytest.raises(FileNotFoundError):
        load_cogvision("/nonexistent/cogvision.json")
