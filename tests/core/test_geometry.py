"""Tests for vh_lens.core.geometry against the real (PIL backend) Hugging Face image processors.

The independent checks are by pixels, on ``pixel_values`` from the processors (LLaVA-NeXT
patches put in token order by the modeling code's own ``pack_image_features``):

- A bright square drawn on a black image changes exactly the patches whose mapped-back boxes
  overlap it. Bicubic resizing blurs the square's edge, so a cell is only asserted "changed"
  when it overlaps the square by several processed pixels and "unchanged" when it lies beyond
  the filter's reach; squares aligned to the cell grid leave no cell in between (exact check).
- An image whose pixels carry their own coordinates, with same-size (exact to the pixel, so
  every rounding of crop and pad offsets shows) or nearest resizing: each patch shows the
  pixels of its box.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextModel,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import PILImageResampling
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from vh_lens.core.geometry import _processed_size, cell_boxes_llava, cell_boxes_llava_next, llava_next_token_count
from vh_lens.core.layout import cell_overlap

PATCH = 14
VISION = 56  # 4 x 4 patches per view
PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]  # [height, width]


# ----------------------------------------------------------------------------- helpers


def _clip(size: int = 56, crop: int = 56, **kwargs) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop}, **kwargs)


def _llava_pad(size: int = 56, **kwargs) -> LlavaImageProcessorPil:
    return LlavaImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_pad=True, **kwargs
    )


def _next(vision: int = VISION, pinpoints: list[list[int]] = PINPOINTS, **kwargs) -> LlavaNextImageProcessorPil:
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": vision},
        crop_size={"height": vision, "width": vision},
        image_grid_pinpoints=pinpoints,
        **kwargs,
    )


def _image(size: tuple[int, int], square: tuple[int, int, int, int] | None = None) -> Image.Image:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if square is not None:
        left, top, right, bottom = square
        pixels[top:bottom, left:right] = 255
    return Image.fromarray(pixels)


def _views(processor, image: Image.Image) -> torch.Tensor:
    """``[views, 3, H, W]`` pixel values of one image."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    return pixel_values.reshape(-1, *pixel_values.shape[-3:])


def _changed(processor, size: tuple[int, int], square: tuple[int, int, int, int]) -> torch.Tensor:
    """``[views, rows, cols]`` which vision patches differ between the squared and a black image."""
    diff = (_views(processor, _image(size, square)) - _views(processor, _image(size))).abs().amax(1)
    v, h, w = diff.shape
    return diff.reshape(v, h // PATCH, PATCH, w // PATCH, PATCH).amax((2, 4)) > 1e-3


def _coordinate_extents(processor, size: tuple[int, int]) -> torch.Tensor:
    """``[views, rows, cols, 4]`` extent of the original pixels each patch shows, read from pixels.

    Each original pixel carries its own coordinates (red = x + 1, green = y + 1, blue = 255),
    so with no blur (same-size or nearest resizing) every processed pixel tells which original
    pixel it shows; padding has another blue. Per patch: ``(min x, min y, max x + 1, max y + 1)``
    over the pixels it shows, ``(inf, inf, -inf, -inf)`` when it shows only padding.
    """
    width, height = size
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([xs + 1, ys + 1, np.full_like(xs, 255)], axis=-1).astype(np.uint8)
    pv = _views(processor, Image.fromarray(pixels)).double()
    mean = torch.tensor(processor.image_mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float64).view(1, 3, 1, 1)
    values = torch.round((pv * std + mean) * 255)
    valid = values[:, 2] == 255
    v, h, w = valid.shape
    coords = (values[:, :2] - 1).reshape(v, 2, h // PATCH, PATCH, w // PATCH, PATCH)
    valid = valid.reshape(v, 1, h // PATCH, PATCH, w // PATCH, PATCH)
    lo = torch.where(valid, coords, math.inf).amin((3, 5))
    hi = torch.where(valid, coords, -math.inf).amax((3, 5)) + 1
    return torch.cat([lo, hi], dim=1).permute(0, 2, 3, 1)


def _assert_extents(boxes: torch.Tensor, extents: torch.Tensor, exact: bool) -> None:
    """Mapped-back boxes against pixel-read extents.

    ``exact``: the patch shows exactly the pixels inside its box. Otherwise (nearest
    resizing) it shows a sample of them: each within one pixel of the box.
    """
    boxes, extents = boxes.double(), extents.double()
    empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
    shows_nothing = torch.isinf(extents).all(-1)
    assert (shows_nothing[empty]).all(), "a zero-area cell shows image pixels"
    if exact:
        assert torch.equal(shows_nothing, empty)
        torch.testing.assert_close(extents[~empty], boxes[~empty])
    else:
        seen = ~shows_nothing
        assert (extents[seen][:, :2] >= boxes[seen][:, :2] - 1).all()
        assert (extents[seen][:, 2:] <= boxes[seen][:, 2:] + 1).all()


def _scale(boxes: torch.Tensor) -> tuple[float, float]:
    """Original pixels per processed pixel, along x and y (from the largest cell)."""
    return (
        float((boxes[..., 2] - boxes[..., 0]).max()) / PATCH,
        float((boxes[..., 3] - boxes[..., 1]).max()) / PATCH,
    )


def _reach(scale: float) -> float:
    # PIL bicubic: support 2 input pixels, stretched by the downscale factor; +1 for rounding.
    return 3 * max(1.0, scale)


def _expect(boxes: torch.Tensor, square: tuple[float, ...], scale: tuple[float, float]):
    """``(must, must_not)`` boolean masks over cells: surely changed / surely unchanged."""
    left, top, right, bottom = square
    over_x = torch.clamp(boxes[..., 2], max=right) - torch.clamp(boxes[..., 0], min=left)
    over_y = torch.clamp(boxes[..., 3], max=bottom) - torch.clamp(boxes[..., 1], min=top)
    sx, sy = scale
    must = (over_x >= 3 * sx) & (over_y >= 3 * sy)
    must_not = (over_x < -_reach(sx)) | (over_y < -_reach(sy))
    return must, must_not


def _aligned_square(boxes: torch.Tensor, rows: slice, cols: slice) -> tuple[int, int, int, int]:
    """Integer square inside the union of a block of cells, kept out of the neighbours' reach."""
    sx, sy = _scale(boxes)
    block = boxes[rows, cols]
    mx, my = _reach(sx) + 0.5, _reach(sy) + 0.5
    return (
        math.ceil(float(block[..., 0].min()) + mx),
        math.ceil(float(block[..., 1].min()) + my),
        math.floor(float(block[..., 2].max()) - mx),
        math.floor(float(block[..., 3].max()) - my),
    )


def _assert_consistent(changed: torch.Tensor, must: torch.Tensor, must_not: torch.Tensor) -> None:
    assert changed.shape == must.shape
    assert changed[must].all(), f"cells that see the square did not change:\n{must & ~changed}"
    assert not changed[must_not].any(), f"cells that cannot see the square changed:\n{must_not & changed}"


def _assert_tiling(boxes: torch.Tensor, visible: tuple[float, float, float, float]) -> None:
    """Positive-area cells cover ``visible`` exactly, without overlap."""
    flat = boxes.reshape(-1, 4).double()
    area = (flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])
    assert (area >= 0).all()
    a, b = flat[:, None], flat[None, :]
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = ix * iy
    inter.fill_diagonal_(0)
    assert inter.max() < 1e-6
    left, top, right, bottom = visible
    assert area.sum().item() == pytest.approx((right - left) * (bottom - top), rel=1e-6)
    pos = flat[area > 0]
    assert pos[:, 0].min() == pytest.approx(left) and pos[:, 2].max() == pytest.approx(right)
    assert pos[:, 1].min() == pytest.approx(top) and pos[:, 3].max() == pytest.approx(bottom)
    # A box over the whole visible area touches every cell that sees anything, and no other.
    touched = cell_overlap(boxes, visible) > 0
    assert torch.equal(touched, (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]))


@pytest.fixture(scope="module")
def next_model() -> LlavaNextModel:
    """A tiny LLaVA-NeXT whose ``pack_image_features`` is the reference for token order."""
    vision = CLIPVisionConfig(
        image_size=VISION,
        patch_size=PATCH,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=8,
    )
    text = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_grid_pinpoints=PINPOINTS, image_token_index=1
    )
    return LlavaNextModel(config).eval()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<image>": 1, "what": 2, "is": 3, "here": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<image>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _packed(model: LlavaNextModel, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-patch ``values`` ``[views, g, g, *d]`` in HF's token order (``[tokens, *d]``), newlines -1."""
    width, height = size
    d = values.shape[3:].numel()
    features = [values.float().reshape(values.shape[0], -1, d)]
    packed, lens = model.pack_image_features(
        features, torch.tensor([[height, width]]), "default", image_newline=torch.full((d,), -1.0)
    )
    assert int(lens[0]) == packed[0].shape[0]
    return packed[0].reshape(-1, *values.shape[3:])


def _token_codes(base: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """Our token order: base row-major, then tile rows each closed by a newline (-1)."""
    rows = torch.cat([tiles.float(), torch.full((tiles.shape[0], 1), -1.0)], dim=1)
    return torch.cat([base.float().flatten(), rows.flatten()])


# ----------------------------------------------------------------------------- LLaVA-1.5


def test_center_crop_hand_computed() -> None:
    # 120x60 -> resize shortest edge 28 -> 56x28 -> crop 28 at x = 14: original x 30..90.
    boxes = cell_boxes_llava((120, 60), _clip(28, 28), PATCH)
    expected = torch.tensor(
        [[[30, 0, 60, 30], [60, 0, 90, 30]], [[30, 30, 60, 60], [60, 30, 90, 60]]], dtype=torch.float32
    )
    torch.testing.assert_close(boxes, expected)
    _assert_tiling(boxes, (30, 0, 90, 60))


def test_pad_to_square_hand_computed() -> None:
    # 100x40 padded to 100x100 (30 rows above), 56px, 4x4 cells of 25 padded pixels.
    boxes = cell_boxes_llava((100, 40), _llava_pad(56), PATCH)
    assert boxes.shape == (4, 4, 4)
    torch.testing.assert_close(boxes[:, 0, 1], torch.tensor([0.0, 0.0, 20.0, 40.0]))
    torch.testing.assert_close(boxes[:, 0, 3], torch.tensor([0.0, 20.0, 40.0, 40.0]))
    torch.testing.assert_close(boxes[0, :, 0], torch.tensor([0.0, 25.0, 50.0, 75.0]))
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    assert (area[0] == 0).all() and (area[3] == 0).all() and (area[1:3] > 0).all()
    _assert_tiling(boxes, (0, 0, 100, 40))


@pytest.mark.parametrize(
    ("processor", "size"),
    [
        (_clip(), (97, 61)),
        (_clip(), (50, 110)),
        (_clip(28, 42), (100, 50)),  # crop larger than the resized height: centre_crop pads
        (_clip(56, 28), (45, 45)),
        (CLIPImageProcessorPil(size={"height": 42, "width": 56}, do_center_crop=False), (80, 60)),
        (_llava_pad(), (100, 40)),
        (_llava_pad(), (41, 107)),
        (_llava_pad(), (64, 64)),
    ],
)
def test_llava_shapes_match_processor(processor, size) -> None:
    pixel_values = _views(processor, _image(size))
    assert _processed_size(size, processor) == tuple(pixel_values.shape[-2:])
    boxes = cell_boxes_llava(size, processor, PATCH)
    assert boxes.shape == (pixel_values.shape[-2] // PATCH, pixel_values.shape[-1] // PATCH, 4)
    width, height = size
    assert (boxes[..., 0] >= 0).all() and (boxes[..., 2] <= width).all()
    assert (boxes[..., 1] >= 0).all() and (boxes[..., 3] <= height).all()


def test_whole_image_box_touches_all_cells() -> None:
    for processor, size in [(_clip(), (97, 61)), (_llava_pad(), (41, 107)), (_clip(), (64, 64))]:
        boxes = cell_boxes_llava(size, processor, PATCH)
        assert (cell_overlap(boxes, (0, 0, *size)) > 0).sum() == (
            ((boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])).sum()
        )
    boxes = cell_boxes_llava((64, 64), _clip(), PATCH)
    assert (cell_overlap(boxes, (0, 0, 64, 64)) == 1).all()
    _assert_tiling(boxes, (0, 0, 64, 64))


@pytest.mark.parametrize(
    ("processor", "size", "square"),
    [
        (_clip(), (120, 60), (2, 5, 20, 40)),  # cropped away on the left: no patch changes
        (_clip(), (120, 60), (102, 30, 118, 55)),  # cropped away on the right
        (_clip(), (120, 60), (50, 10, 70, 25)),
        (_clip(), (61, 97), (10, 70, 40, 90)),
        (_clip(28, 42), (100, 50), (40, 10, 80, 30)),  # the crop window pads rows above/below
        (_llava_pad(), (100, 40), (10, 2, 30, 12)),
        (_llava_pad(), (100, 40), (60, 25, 95, 38)),
        (_llava_pad(), (41, 107), (2, 50, 20, 100)),
    ],
)
def test_llava_pixels_fixed_squares(processor, size, square) -> None:
    boxes = cell_boxes_llava(size, processor, PATCH)
    changed = _changed(processor, size, square)[0]
    must, must_not = _expect(boxes, square, _scale(boxes))
    _assert_consistent(changed, must, must_not)
    assert must_not.any()
    overlaps = cell_overlap(boxes, square) > 0
    assert torch.equal(changed.any(), overlaps.any())


def test_llava_cropped_away_maps_to_no_cell() -> None:
    boxes = cell_boxes_llava((120, 60), _clip(), PATCH)
    assert not (cell_overlap(boxes, (0, 0, 29, 60)) > 0).any()
    assert not (cell_overlap(boxes, (91, 0, 120, 60)) > 0).any()
    assert not _changed(_clip(), (120, 60), (2, 5, 20, 55)).any()


@pytest.mark.parametrize(
    ("processor", "size", "exact"),
    [
        (_clip(56, 56), (61, 56), True),  # same-size resize, crop offset 2 in x
        (_clip(56, 56), (56, 63), True),  # crop offset 3 in y
        (_clip(45, 56), (56, 45), True),  # crop window larger than the image: 6 rows padded above
        (_clip(43, 56), (57, 43), True),
        (_llava_pad(56), (56, 45), True),  # pad to square: 5 rows above
        (_llava_pad(56), (43, 56), True),  # 6 columns left
        (_clip(56, 56, resample=PILImageResampling.NEAREST), (97, 61), False),
        (_clip(28, 42, resample=PILImageResampling.NEAREST), (100, 50), False),
        (_llava_pad(56, resample=PILImageResampling.NEAREST), (41, 107), False),
        (_llava_pad(56, resample=PILImageResampling.NEAREST), (117, 50), False),
    ],
)
def test_llava_pixels_show_their_box(processor, size, exact) -> None:
    boxes = cell_boxes_llava(size, processor, PATCH)
    _assert_extents(boxes, _coordinate_extents(processor, size)[0], exact)


@pytest.mark.parametrize(
    ("processor", "size", "rows", "cols"),
    [
        (_clip(), (97, 61), slice(1, 3), slice(1, 3)),
        (_clip(), (97, 61), slice(0, 1), slice(2, 4)),
        (_clip(), (50, 110), slice(2, 4), slice(0, 1)),
        (_llava_pad(), (100, 40), slice(1, 2), slice(1, 3)),
        (_llava_pad(), (41, 107), slice(0, 2), slice(1, 3)),
    ],
)
def test_llava_pixels_aligned_squares_exact(processor, size, rows, cols) -> None:
    boxes = cell_boxes_llava(size, processor, PATCH)
    square = _aligned_square(boxes, rows, cols)
    must, must_not = _expect(boxes, square, _scale(boxes))
    assert (must | must_not).all(), "aligned square leaves undecided cells"
    expected = torch.zeros(boxes.shape[:2], dtype=torch.bool)
    expected[rows, cols] = True
    assert torch.equal(must, expected)
    assert torch.equal(_changed(processor, size, square)[0], expected)


# ----------------------------------------------------------------------------- LLaVA-NeXT


def test_next_hand_computed_wide() -> None:
    # 120x50 -> pinpoint 56x168 (3 tiles), resized to 56x135, padded 16 left / 17 right.
    # Feature grid 4x12; unpad keeps columns 1..10 (new width int(120 * 4 / 50) = 9).
    base, tiles = cell_boxes_llava_next((120, 50), _next(), PINPOINTS, VISION, PATCH)
    assert base.shape == (4, 4, 4) and tiles.shape == (4, 10, 4)
    torch.testing.assert_close(base[0, 0], torch.tensor([0.0, 0.0, 30.0, 12.5]))
    scale = 120 / 135
    x_edges = [0.0] + [(14 * k - 16) * scale for k in range(2, 11)] + [120.0]
    torch.testing.assert_close(tiles[0, :, 0], torch.tensor(x_edges[:-1]))
    torch.testing.assert_close(tiles[0, :, 2], torch.tensor(x_edges[1:]))
    torch.testing.assert_close(tiles[:, 0, 1], torch.tensor([0.0, 12.5, 25.0, 37.5]))
    assert llava_next_token_count(base, tiles) == 16 + 4 * 11
    _assert_tiling(base, (0, 0, 120, 50))
    _assert_tiling(tiles, (0, 0, 120, 50))


SIZES = [(120, 50), (50, 120), (100, 40), (40, 100), (64, 64), (90, 70), (70, 90), (41, 113), (168, 20), (20, 168)]


@pytest.mark.parametrize("size", SIZES)
def test_next_grid_matches_hf_unpad(size) -> None:
    width, height = size
    base, tiles = cell_boxes_llava_next(size, _next(), PINPOINTS, VISION, PATCH)
    g = VISION // PATCH
    n_h, n_w = get_anyres_image_grid_shape((height, width), PINPOINTS, VISION)
    unpadded = unpad_image(torch.zeros(1, n_h * g, n_w * g), (height, width))
    assert base.shape[:2] == (g, g)
    assert tiles.shape[:2] == tuple(unpadded.shape[1:])
    _assert_tiling(base, (0, 0, width, height))


def test_next_unpad_removes_rows_and_columns() -> None:
    g = VISION // PATCH
    for size, axis in [((120, 50), 1), ((50, 120), 0)]:
        width, height = size
        _, tiles = cell_boxes_llava_next(size, _next(), PINPOINTS, VISION, PATCH)
        n_h, n_w = get_anyres_image_grid_shape((height, width), PINPOINTS, VISION)
        full = (n_h * g, n_w * g)
        assert tiles.shape[axis] < full[axis] and tiles.shape[1 - axis] == full[1 - axis]


@pytest.mark.parametrize(
    ("size", "square"),
    [
        ((120, 50), (5, 5, 25, 20)),  # wide: unpad removes columns
        ((120, 50), (80, 28, 115, 46)),
        ((50, 120), (10, 3, 40, 15)),  # tall: unpad removes rows
        ((50, 120), (22, 70, 45, 110)),
        ((100, 40), (40, 10, 60, 30)),
        ((64, 64), (6, 40, 30, 60)),
        ((90, 70), (50, 5, 85, 30)),
        ((41, 113), (5, 60, 36, 80)),
    ],
)
def test_next_pixels_fixed_squares(next_model, size, square) -> None:
    processor = _next()
    base, tiles = cell_boxes_llava_next(size, processor, PINPOINTS, VISION, PATCH)
    packed = _packed(next_model, _changed(processor, size, square), size)
    expected = _token_codes(torch.zeros(base.shape[:2]), torch.zeros(tiles.shape[:2]))
    assert packed.shape == expected.shape == (llava_next_token_count(base, tiles),)
    assert torch.equal(packed == -1, expected == -1)
    base_must, base_not = _expect(base, square, _scale(base))
    tile_must, tile_not = _expect(tiles, square, _scale(tiles))
    must = _token_codes(base_must, tile_must) == 1
    must_not = _token_codes(base_not, tile_not) == 1
    assert must.any() and must_not.any()
    _assert_consistent(packed == 1, must, must_not)


@pytest.mark.parametrize(
    ("size", "rows", "cols"),
    [
        ((120, 50), slice(1, 3), slice(3, 6)),  # spans a tile border (tiles are 4 cells wide)
        ((120, 50), slice(0, 2), slice(0, 2)),  # left columns, next to the padding
        ((50, 120), slice(4, 7), slice(1, 3)),  # spans a tile border along rows
        ((90, 70), slice(2, 5), slice(3, 6)),
    ],
)
def test_next_pixels_aligned_squares_exact(next_model, size, rows, cols) -> None:
    processor = _next()
    base, tiles = cell_boxes_llava_next(size, processor, PINPOINTS, VISION, PATCH)
    square = _aligned_square(tiles, rows, cols)
    tile_must, tile_not = _expect(tiles, square, _scale(tiles))
    assert (tile_must | tile_not).all(), "aligned square leaves undecided tile cells"
    expected = torch.zeros(tiles.shape[:2], dtype=torch.bool)
    expected[rows, cols] = True
    assert torch.equal(tile_must, expected)
    packed = _packed(next_model, _changed(processor, size, square), size)
    n_base = base.shape[0] * base.shape[1]
    tile_tokens = packed[n_base:].reshape(tiles.shape[0], tiles.shape[1] + 1)
    assert (tile_tokens[:, -1] == -1).all()
    assert torch.equal(tile_tokens[:, :-1] == 1, expected)
    base_must, base_not = _expect(base, square, _scale(base))
    _assert_consistent(packed[:n_base].reshape(base.shape[:2]) == 1, base_must, base_not)


@pytest.mark.parametrize(
    ("size", "exact_tiles"),
    [
        ((168, 45), True),  # pinpoint 56x168 at scale 1: 5 rows padded above, all rows kept
        ((45, 168), True),
        ((168, 20), True),  # 18 rows padded above; unpad keeps feature rows 1..2 of 4
        ((20, 168), True),  # same for columns
        ((120, 50), False),
        ((50, 120), False),
        ((90, 70), False),
        ((41, 113), False),
    ],
)
def test_next_pixels_show_their_box(next_model, size, exact_tiles) -> None:
    processor = _next(resample=PILImageResampling.NEAREST)
    base, tiles = cell_boxes_llava_next(size, processor, PINPOINTS, VISION, PATCH)
    packed = _packed(next_model, _coordinate_extents(processor, size), size)
    n_base = base.shape[0] * base.shape[1]
    assert packed.shape == (llava_next_token_count(base, tiles), 4)
    _assert_extents(base, packed[:n_base].reshape(*base.shape), exact=False)
    tile_tokens = packed[n_base:].reshape(tiles.shape[0], tiles.shape[1] + 1, 4)
    assert (tile_tokens[:, -1] == -1).all()
    _assert_extents(tiles, tile_tokens[:, :-1], exact=exact_tiles)


@pytest.mark.parametrize(
    ("vision", "pinpoints", "size"),
    [
        (VISION, PINPOINTS, (120, 50)),
        (VISION, PINPOINTS, (50, 120)),
        (VISION, PINPOINTS, (41, 113)),
        (VISION, PINPOINTS, (117, 43)),
        (VISION, PINPOINTS, (64, 64)),
        (VISION, PINPOINTS, (90, 70)),
        (28, [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]], (100, 40)),
        (28, [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]], (45, 77)),
        (336, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], (1000, 380)),
        (336, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], (457, 640)),
    ],
)
def test_next_token_count_matches_processor(next_model, vision, pinpoints, size) -> None:
    image_processor = _next(vision, pinpoints)
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    out = processor(images=_image(size), text="<image> what is here", return_tensors="pt")
    n_tokens = int((out["input_ids"] == processor.image_token_id).sum())
    base, tiles = cell_boxes_llava_next(size, image_processor, pinpoints, vision, PATCH)
    assert llava_next_token_count(base, tiles) == n_tokens
    if vision == VISION:  # the modeling code's packing of one feature per patch
        n_views = out["pixel_values"].shape[1]
        g = VISION // PATCH
        packed = _packed(next_model, torch.zeros(n_views, g, g), size)
        assert packed.shape[0] == n_tokens


# ----------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(ValueError, match="pinpoints"):
        cell_boxes_llava_next((100, 40), _next(), [[56, 56]], VISION, PATCH)
    with pytest.raises(ValueError, match="vision tower"):
        cell_boxes_llava_next((100, 40), _next(), PINPOINTS, 112, PATCH)
    with pytest.raises(ValueError, match="multiple"):
        cell_boxes_llava_next((100, 40), _next(), PINPOINTS, VISION, 15)
    with pytest.raises(ValueError, match="whole number"):
        pinpoints = [[60, 120]]
        cell_boxes_llava_next((100, 40), _next(pinpoints=pinpoints), pinpoints, VISION, PATCH)
    with pytest.raises(ValueError, match="positive"):
        cell_boxes_llava((0, 40), _clip(), PATCH)

    class Fake:
        backend = "torchvision"

    with pytest.raises(ValueError, match="PIL"):
        cell_boxes_llava((100, 40), Fake(), PATCH)
