"""Property-based tests of the box geometry against a pixel rendering through the real processors.

For random image sizes (aspect ratios up to 50:1) and random boxes, for every processor family
(CLIP centre crop, LLaVA pad to square, SigLIP square resize, LLaVA-NeXT tiles, OneVision tiles
with bilinear downsampling, OneVision's several-images path), the box is painted white on a
black image, the Hugging Face image processor runs on both, and a vision patch "sees paint"
when its pixel values differ; LLaVA-NeXT and OneVision patches are put in token order by the
modeling code's own ``pack_image_features`` (which also does OneVision's bilinear
downsampling, so a shrunk cell sees paint when any cell it mixes does).

Processors use nearest resampling, so a processed pixel shows exactly one original pixel:
``floor((j + 0.5) * s)`` along each axis, ``s`` original pixels per processed pixel. Then:

- a cell that sees paint is always in our mask (the sampled point lies inside both the box
  and the cell's box, so they overlap): exact, no tolerance;
- a cell whose box overlaps the box by at least ``s`` original pixels on both axes holds a
  sampled point inside the box, so it must see paint;
- the token count of our layout equals the placeholder expansion of the HF processor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    LlavaImageProcessorPil,
    LlavaNextImageProcessorPil,
    LlavaOnevisionImageProcessorPil,
    SiglipImageProcessorPil,
)
from transformers.image_utils import PILImageResampling

from vh_lens.core.geometry import cell_boxes_llava, cell_boxes_llava_next, cell_boxes_onevision, llava_next_token_count
from vh_lens.core.layout import cell_overlap

PATCH = 14
SIDE = 56
NEAREST = PILImageResampling.NEAREST
SQUARE = {"height": SIDE, "width": SIDE}
FAMILIES = ["clip_crop", "llava_pad", "siglip", "llava_next", "onevision", "onevision_multi"]


@st.composite
def image_and_box(draw):
    """A ``(width, height)`` with aspect ratio up to 50:1 (sides 5..250) and an integer box inside it."""
    long_side = draw(st.integers(20, 250))
    aspect = draw(st.floats(1.0, 50.0))
    short_side = max(5, min(long_side, round(long_side / aspect)))
    size = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    width, height = size
    left = draw(st.integers(0, width - 1))
    right = draw(st.integers(left + 1, width))
    top = draw(st.integers(0, height - 1))
    bottom = draw(st.integers(top + 1, height))
    return size, (left, top, right, bottom)


def _image(size, box=None) -> Image.Image:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if box is not None:
        left, top, right, bottom = box
        pixels[top:bottom, left:right] = 255
    return Image.fromarray(pixels)


def _seen(processor, size, box, nested=False) -> tuple[torch.Tensor, dict]:
    """``[views, rows, cols]`` patches whose pixel values change when the box is painted."""
    wrap = (lambda im: [[im, im]]) if nested else (lambda im: im)
    painted = processor(images=wrap(_image(size, box)), return_tensors="pt")
    blank = processor(images=wrap(_image(size)), return_tensors="pt")
    pv_a, pv_b = painted["pixel_values"], blank["pixel_values"]
    if nested:  # two images in one prompt: views of the first one
        pv_a, pv_b = pv_a[0], pv_b[0]
    diff = (pv_a - pv_b).abs().reshape(-1, *pv_a.shape[-3:]).amax(1)
    v, h, w = diff.shape
    return diff.reshape(v, h // PATCH, PATCH, w // PATCH, PATCH).amax((2, 4)) > 1e-6, dict(painted)


def _scale(boxes: torch.Tensor) -> tuple[float, float]:
    """Original pixels per processed pixel along x and y (from the largest cell)."""
    if boxes.numel() == 0:
        return 1.0, 1.0
    return (
        float((boxes[..., 2] - boxes[..., 0]).max()) / PATCH,
        float((boxes[..., 3] - boxes[..., 1]).max()) / PATCH,
    )


def _must(boxes: torch.Tensor, box) -> torch.Tensor:
    """Cells overlapping the box by at least one sampling step on both axes.

    The step is read from the largest cell; padding clips every cell along the padded axis, so
    the larger of the two axes' steps is used on both (never smaller than the true step).
    """
    left, top, right, bottom = box
    sx = sy = max(_scale(boxes))
    over_x = torch.clamp(boxes[..., 2], max=right) - torch.clamp(boxes[..., 0], min=left)
    over_y = torch.clamp(boxes[..., 3], max=bottom) - torch.clamp(boxes[..., 1], min=top)
    return (over_x >= sx * (1 + 1e-6)) & (over_y >= sy * (1 + 1e-6))


def _tokens(base: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """Our token order as floats: base row-major, then tile rows each closed by a newline (-1)."""
    rows = torch.cat([tiles.float(), torch.full((tiles.shape[0], 1), -1.0)], dim=1)
    return torch.cat([base.float().flatten(), rows.flatten()])


def _assert_sound(seen: torch.Tensor, ours: torch.Tensor, must: torch.Tensor) -> None:
    assert seen.shape == ours.shape == must.shape
    assert not (seen & ~ours).any(), f"cells see paint outside our mask:\n{(seen & ~ours).nonzero().tolist()}"
    assert not (must & ~seen).any(), f"cells deep inside the box see no paint:\n{(must & ~seen).nonzero().tolist()}"


def _processor(family: str):
    if family == "clip_crop":
        return CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size=SQUARE, resample=NEAREST)
    if family == "llava_pad":
        return LlavaImageProcessorPil(size={"shortest_edge": SIDE}, crop_size=SQUARE, do_pad=True, resample=NEAREST)
    if family == "siglip":
        return SiglipImageProcessorPil(size=SQUARE, resample=NEAREST)
    if family == "llava_next":
        hf, _ = tiny_pair("llava_next", "llama")
        pinpoints = hf.config.image_grid_pinpoints
        return LlavaNextImageProcessorPil(
            size={"shortest_edge": SIDE}, crop_size=SQUARE, image_grid_pinpoints=pinpoints, resample=NEAREST
        )
    hf, _ = tiny_pair("llava_onevision", "qwen2", 2)
    # do_pad=False for the several-images path: it pads each image to a square all the same
    return LlavaOnevisionImageProcessorPil(
        size=SQUARE,
        image_grid_pinpoints=hf.config.image_grid_pinpoints,
        resample=NEAREST,
        do_pad=family != "onevision_multi",
    )


@pytest.mark.parametrize("family", FAMILIES)
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_and_box())
def test_mask_is_the_cells_the_painted_box_reaches(family, case):
    size, box = case
    processor = _processor(family)
    width, height = size
    if family in ("clip_crop", "llava_pad", "siglip", "onevision_multi"):
        seen, _ = _seen(processor, size, box, nested=family == "onevision_multi")
        boxes = cell_boxes_llava(size, processor, PATCH, pad_to_square=True if family == "onevision_multi" else None)
        ours = cell_overlap(boxes, box) > 0
        _assert_sound(seen[0], ours, _must(boxes, box))
        return
    kind = "llava_next" if family == "llava_next" else "llava_onevision"
    hf, _ = tiny_pair(kind, "llama" if kind == "llava_next" else "qwen2", None if kind == "llava_next" else 2)
    config = hf.config
    vc = config.vision_config
    seen, enc = _seen(processor, size, box)
    features = [seen.float().reshape(seen.shape[0], -1, 1)]
    sizes = torch.tensor([[height, width]])
    newline = torch.full((1,), -1.0)
    if kind == "llava_next":
        packed, _ = hf.model.pack_image_features(features, sizes, "default", image_newline=newline)
        base, tiles = cell_boxes_llava_next(size, processor, config.image_grid_pinpoints, vc.image_size, PATCH)
        must_base, must_tiles = _must(base, box), _must(tiles, box)
    else:
        packed, _ = hf.model.pack_image_features(
            features, sizes, image_newline=newline, vision_aspect_ratio=config.vision_aspect_ratio
        )
        base, tiles = cell_boxes_onevision(
            size, processor, config.image_grid_pinpoints, vc.image_size, PATCH, config.vision_aspect_ratio
        )
        src_base, src_tiles = cell_boxes_llava_next(size, processor, config.image_grid_pinpoints, vc.image_size, PATCH)
        must_base, must_src = _must(src_base, box), _must(src_tiles, box)
        if tuple(tiles.shape[:2]) != tuple(src_tiles.shape[:2]):  # downsampled: a cell mixing a "must" cell
            must_src = (
                torch.nn.functional.interpolate(must_src.float()[None, None], list(tiles.shape[:2]), mode="bilinear")[
                    0, 0
                ]
                > 0
            )
        must_tiles = must_src
    packed = packed[0].flatten()
    ours = cell_overlap(base, box) > 0, cell_overlap(tiles, box) > 0
    expected_layout = _tokens(torch.zeros(base.shape[:2]), torch.zeros(tiles.shape[:2]))
    assert packed.shape == expected_layout.shape == (llava_next_token_count(base, tiles),)
    assert torch.equal(packed == -1, expected_layout == -1), "newline tokens in other places"
    is_cell = packed != -1
    _assert_sound(packed[is_cell] > 0, _tokens(*ours)[is_cell] == 1, _tokens(must_base, must_tiles)[is_cell] == 1)


@pytest.mark.parametrize("kind", ["llava", "llava_interleave", "llava_next", "llava_onevision"])
@settings(deadline=None, max_examples=15)
@given(case=image_and_box(), n_images=st.integers(1, 2))
def test_token_counts_equal_the_processor_expansion(kind, case, n_images):
    """Through the model: layout per image == the HF processor's expanded placeholders."""
    from conftest import tiny_lens

    size, _ = case
    backbone, kv = {
        "llava": ("llama", None),
        "llava_next": ("llama", None),
        "llava_interleave": ("qwen2", None),
        "llava_onevision": ("qwen2", 2),
    }[kind]
    _, processor = tiny_pair(kind, backbone, kv)
    model = tiny_lens(kind, backbone, kv)
    images = [_image(size, None)] + [_image((40, 30))] * (n_images - 1)
    prompt = "USER: " + " ".join(["<image>"] * n_images) + " how many ? ASSISTANT:"
    enc = processor(images=[images] if kind == "llava_onevision" else images, text=[prompt], return_tensors="pt")
    hf_positions = (enc["input_ids"][0] == model.image_token_id).nonzero().flatten()
    lay = model.prepare(images=[images], prompts=[prompt]).layout[0]
    assert torch.equal(lay.image_positions - lay.n_pad, hf_positions)
    first = lay.images[0]
    cells = sum(g.positions.numel() for g in first.grids)
    assert first.positions.numel() == cells + first.newline_positions.numel()
    # the whole image touches every cell that sees any of it
    whole = lay.region_positions((0, 0, *size), image=0)
    seen_cells = torch.cat(
        [
            g.positions[(g.cell_boxes[..., 2] > g.cell_boxes[..., 0]) & (g.cell_boxes[..., 3] > g.cell_boxes[..., 1])]
            for g in first.grids
        ]
    )
    assert torch.equal(whole, seen_cells.sort().values)
    assert math.isfinite(float(first.grids[0].cell_boxes.sum()))
