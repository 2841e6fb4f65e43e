"""Data: the sample type and readers of local benchmark files."""

from vh_lens.data._images import MissingImagesError, SampleSet
from vh_lens.data.benchmarks import load_mmbench, load_pointqa_counting, load_pope, load_qbench, load_seed_bench
from vh_lens.data.cogvision import (
    COGQA_FUNCTIONS,
    CogItem,
    SubQuestion,
    format_chain_prompt,
    load_cogvision,
    main_question_samples,
    subquestion_samples,
)
from vh_lens.data.cogvision_shapes import cogvision_shapes, write_cogvision_shapes
from vh_lens.data.jsonl import load_jsonl
from vh_lens.data.pointqa import (
    PAPER_A_SETTINGS,
    QUESTION_TYPES,
    RECTANGLE_HINT,
    load_looktwice,
    load_vip_pointqa,
    paper_a_settings,
    xywh_to_box,
)
from vh_lens.data.sample import Box, Sample, load_rgb
from vh_lens.data.visual_prompt import BoxedImage, draw_box, with_visual_prompt

__all__ = [
    "COGQA_FUNCTIONS",
    "CogItem",
    "SubQuestion",
    "format_chain_prompt",
    "load_cogvision",
    "main_question_samples",
    "subquestion_samples",
    "cogvision_shapes",
    "write_cogvision_shapes",
    "PAPER_A_SETTINGS",
    "QUESTION_TYPES",
    "RECTANGLE_HINT",
    "Box",
    "BoxedImage",
    "MissingImagesError",
    "Sample",
    "SampleSet",
    "draw_box",
    "load_jsonl",
    "load_mmbench",
    "load_pointqa_counting",
    "load_pope",
    "load_qbench",
    "load_seed_bench",
    "load_looktwice",
    "load_rgb",
    "load_vip_pointqa",
    "paper_a_settings",
    "with_visual_prompt",
    "xywh_to_box",
]
