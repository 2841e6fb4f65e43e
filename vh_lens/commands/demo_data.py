"""``vh-lens demo-data DIR``: the generated shapes samples on disk, in every format the readers accept.

The samples are :func:`vh_lens.data.shapes.shapes` (coloured shapes on an 8 x 8 grid, paper A's
three counting question types plus yes/no and multiple-choice questions; the toy model's task),
written as PNG images and one annotation file per format, so that every command can be tried on
files before real benchmarks are at hand:

``images/ID.png``
    Each sample's image as the toy model was trained on it (the pointer of the "these" and
    multiple-choice questions drawn as a white outline).
``plain/ID.png``
    The counting samples' images with nothing drawn (paper A's plain setting; ``--visual-prompt``
    draws the box in red: the visual setting).
``questions.jsonl``
    Every sample (:func:`vh_lens.data.load_jsonl`: ``--format jsonl``, images relative to the file).
``looktwice.json``
    The counting samples in LookTwice-QA's format, all three question types per record
    (:func:`vh_lens.data.load_looktwice`: ``vh-lens scan --format looktwice --images DIR/plain``;
    also ``vh-lens mask --format pointqa``).
``pointqa_twice.json``
    The same in ViP-LLaVA's ``pointQA_twice`` format (:func:`vh_lens.data.load_vip_pointqa`:
    ``--format vip-pointqa --images DIR``).
``pope_shapes.jsonl``
    The yes/no samples in POPE's format (:func:`vh_lens.data.load_pope`: ``--format pope --images
    DIR/images``).
``cogvision.json``
    Chain-of-subquestion items in CogVision's format (:func:`vh_lens.data.load_cogvision`:
    ``vh-lens probe --data``), from :mod:`vh_lens.data.cogvision_shapes` when that module is
    installed, else a small fallback built here from the counting samples (the file's
    ``README.md`` says which).
``README.md``
    What each file is and a command to run on it.

The folder appears only when everything is written (see ``vh-lens mask``'s ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_N = 120
"""Generated samples (20 of each of the six question kinds)."""
DEFAULT_N_COG = 120
"""Chain-of-subquestion items of ``cogvision.json``."""
FILES = ("questions.jsonl", "looktwice.json", "pointqa_twice.json", "pope_shapes.jsonl", "cogvision.json")


def register(subparsers: Any) -> None:
    """Add ``demo-data`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write the generated shapes samples as images plus one file per data format (to try the commands)",
        description=(
            "Write the generated shapes samples (vh_lens.data.shapes, the toy model's task) into DIR as PNG images "
            "and annotation files in every format the readers accept: questions.jsonl (jsonl), looktwice.json "
            "(looktwice, pointqa), pointqa_twice.json (vip-pointqa), pope_shapes.jsonl (pope), cogvision.json "
            "(vh-lens probe); DIR/README.md lists a command for each."
        ),
    )
    parser.add_argument("out", type=Path, metavar="DIR", help="output folder (created; must not hold files)")
    parser.add_argument("--n-samples", type=int, default=DEFAULT_N, help=f"generated samples (default {DEFAULT_N})")
    parser.add_argument("--n-cog", type=int, default=DEFAULT_N_COG,
                        help=f"chain-of-subquestion items of cogvision.json (default {DEFAULT_N_COG})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens demo-data``; returns the exit code."""
    from vh_lens.commands.mask import staged_output

    for name in ("n_samples", "n_cog"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    with staged_output(args.out, args.overwrite) as tmp:
        counts = write_demo_data(tmp, args.n_samples, seed=args.seed, n_cog=args.n_cog)
    shown = ", ".join(f"{name} ({n})" for name, n in counts.items())
    print(f"wrote {args.out}: {shown}; see {args.out / 'README.md'}", file=sys.stderr)
    return 0


def write_demo_data(folder: Path, n: int, *, seed: int = 0, n_cog: int = DEFAULT_N_COG) -> dict[str, int]:
    """Write the files of the module docstring into ``folder``; returns the records per file."""
    from vh_lens.data.shapes import COUNT_KINDS, shapes

    samples = shapes(n, seed=seed)
    plain = shapes(n, seed=seed, draw_box=False)  # the same scenes, nothing drawn
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "plain").mkdir(exist_ok=True)
    counting = []
    for sample, bare in zip(samples, plain, strict=True):
        sample_id = sample.metadata["id"]
        sample.image.save(folder / "images" / f"{sample_id}.png")
        if sample.metadata["kind"] in COUNT_KINDS:
            bare.image.save(folder / "plain" / f"{sample_id}.png")
            counting.append(sample)
    yes_no = [s for s in samples if s.metadata["kind"] == "exists"]
    _write_lines(folder / "questions.jsonl", [_jsonl_record(s) for s in samples])
    _write_json(folder / "looktwice.json", {s.metadata["id"]: [_looktwice_record(s)] for s in counting})
    _write_json(folder / "pointqa_twice.json", [_vip_record(s) for s in counting])
    _write_lines(folder / "pope_shapes.jsonl", [_pope_record(s) for s in yes_no])
    cog_source = write_cogvision(folder / "cogvision.json", n_cog, seed)
    counts = {"questions.jsonl": len(samples), "looktwice.json": len(counting), "pointqa_twice.json": len(counting),
              "pope_shapes.jsonl": len(yes_no), "cogvision.json": n_cog}  # fmt: skip
    (folder / "README.md").write_text(_readme(counts, cog_source, n, seed), encoding="utf-8")
    return counts


# --------------------------------------------------------------------------------------------
# One record per format


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON holds)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _jsonl_record(sample: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"image": f"images/{sample.metadata['id']}.png", "question": sample.question,
                              "answer": sample.answer}  # fmt: skip
    if sample.choices is not None:
        record["choices"] = list(sample.choices)
    if sample.box is not None:
        record["box"] = list(sample.box)
    record["metadata"] = _plain(dict(sample.metadata))
    return record


def _questions(sample: Any) -> dict[str, str]:
    """The three counting questions about the sample's target class (the pointed shape's class)."""
    from vh_lens.data.shapes import QUESTION_TEMPLATES

    target = sample.metadata["target"]
    return {
        "general": QUESTION_TEMPLATES["count_general"],
        "object": QUESTION_TEMPLATES["count_object"].format(color=target["color"], kind=target["kind"]),
        "super": QUESTION_TEMPLATES["count_super"],
    }


def _looktwice_record(sample: Any) -> dict[str, Any]:
    left, top, right, bottom = sample.box
    q = _questions(sample)
    return {"General_question": q["general"], "Obj_question": q["object"], "Super_question": q["super"],
            "Ans": int(sample.answer), "BBox": {"x": left, "y": top, "w": right - left, "h": bottom - top},
            "Point": {"x": (left + right) / 2, "y": (top + bottom) / 2}, "kind": sample.metadata["kind"]}  # fmt: skip


def _vip_record(sample: Any) -> dict[str, Any]:
    q = _questions(sample)
    return {"id": sample.metadata["id"], "image": f"plain/{sample.metadata['id']}.png", "bboxes": [list(sample.box)],
            "answer": sample.answer, "general_question": q["general"], "obj_question": q["object"],
            "super_question": q["super"]}  # fmt: skip


def _pope_record(sample: Any) -> dict[str, Any]:
    return {"question_id": sample.metadata["id"], "image": f"{sample.metadata['id']}.png", "text": sample.question,
            "label": sample.answer, "category": "shapes"}  # fmt: skip


def _write_lines(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# CogVision-style chains


def write_cogvision(path: Path, n: int, seed: int) -> str:
    """Write ``n`` CogVision-format items at ``path`` (images beside it); returns where they came from.

    HOOK (cog): :mod:`vh_lens.data.cogvision_shapes` (its ``cogvision_shapes`` and
    ``write_cogvision_shapes``) is used when installed; until then :func:`fallback_cog_items`.
    """
    try:
        from vh_lens.data.cogvision_shapes import (
            cogvision_shapes,
            write_cogvision_shapes,
        )
    except ImportError:  # TODO(cog): drop the fallback once vh_lens.data.cogvision_shapes is on main
        _write_json(path, fallback_cog_items(n, seed, path.parent))
        return "fallback"
    write_cogvision_shapes(cogvision_shapes(n, seed=seed), path, images_dir="cogvision_images")
    return "vh_lens.data.cogvision_shapes"


def fallback_cog_items(n: int, seed: int, folder: Path) -> list[dict[str, Any]]:
    """``n`` four-step chains on pointed shapes ("How many shapes like the boxed one are there?"), images in ``folder/images``.

    Q1 the boxed shape's colour (Low-level Visual Reception), Q2 its kind (High-level Visual
    Reception), Q3 the count of that class (Counting), then the decision step.
    """
    from vh_lens.data.shapes import shapes

    items = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for sample in shapes(n, seed=seed + 1, kinds=("count_super",)):
        target = sample.metadata["target"]
        sample_id = f"cog-{sample.metadata['id']}"
        sample.image.save(folder / "images" / f"{sample_id}.png")
        main = "How many shapes like the boxed one are there?"
        items.append({
            "id": sample_id, "image": f"images/{sample_id}.png", "question": main, "answer": sample.answer,
            "generated": [
                {"subquestion": "What color is the shape in the box?", "answer": target["color"],
                 "cognitive_skill": "Low-level Visual Reception"},
                {"subquestion": "What shape is in the box?", "answer": target["kind"],
                 "cognitive_skill": "High-level Visual Reception"},
                {"subquestion": f"How many {target['color']} {target['kind']}s are there?", "answer": sample.answer,
                 "cognitive_skill": "Counting"},
                {"subquestion": "So, how many shapes like the boxed one are there?", "answer": sample.answer,
                 "cognitive_skill": "Decision-making"},
            ],
        })  # fmt: skip
    return items


def _readme(counts: dict[str, int], cog_source: str, n: int, seed: int) -> str:
    cog = ("vh_lens.data.cogvision_shapes" if cog_source != "fallback" else
           "a fallback of vh-lens demo-data (vh_lens.data.cogvision_shapes is not installed): four-step chains on "
           "the pointed shape")  # fmt: skip
    return f"""# vh-lens demo data

{n} samples of vh_lens.data.shapes.shapes(seed={seed}) (the toy model's task), written by `vh-lens demo-data`.

| file | records | reader | try |
|---|---|---|---|
| questions.jsonl | {counts["questions.jsonl"]} | load_jsonl | `vh-lens scan --model toy --data questions.jsonl --format jsonl --out scan` |
| looktwice.json | {counts["looktwice.json"]} | load_looktwice, load_pointqa_counting | `vh-lens scan --model toy --data looktwice.json --format looktwice --images plain --question super --visual-prompt --out scan_lt` |
| pointqa_twice.json | {counts["pointqa_twice.json"]} | load_vip_pointqa | `vh-lens scan --model toy --data pointqa_twice.json --format vip-pointqa --images . --out scan_vip` |
| pope_shapes.jsonl | {counts["pope_shapes.jsonl"]} | load_pope | `vh-lens mask --model toy --data pope_shapes.jsonl --format pope --images images --scores scan --out mask_pope` |
| cogvision.json | {counts["cogvision.json"]} | load_cogvision | `vh-lens probe --model toy --data cogvision.json --out probe` |

images/: every sample's image as the toy was trained on it (the pointer of the "these" and multiple-choice
questions drawn as a white outline). plain/: the counting samples' images with nothing drawn (paper A's plain
setting; --visual-prompt draws the box in red). cogvision.json: {cog}.
"""
