"""Geometry of image tokens: the part of the original image each vision patch sees.

A LLaVA prompt holds one token per vision patch. To ask "which tokens show this box?", each
patch is mapped back to original-image pixels through the Hugging Face image processor's own
transform, with the processor's own rounding:

- LLaVA-1.5 / ViP-LLaVA (``CLIPImageProcessorPil``, ``LlavaImageProcessorPil``): optional pad
  to square (``LlavaImageProcessorPil`` with ``do_pad``), resize, centre crop (and, for a plain
  CLIP processor with ``do_pad`` and ``pad_size``, padding at the bottom and right).
- LLaVA-NeXT (``LlavaNextImageProcessorPil``): a low resolution view of the whole image
  (resized to a square) and a high resolution view (best pinpoint resolution, aspect
  preserving resize, centred padding, tiling), of which the model keeps the rows or columns
  that :func:`transformers.models.llava_next.modeling_llava_next.unpad_image` keeps.

- LLaVA-OneVision (``LlavaOnevisionImageProcessorPil``): as LLaVA-NeXT (views resized to a
  square, no crop), then the unpadded tile grid is shrunk by bilinear interpolation when it
  holds more than about ``N`` base grids (``vision_aspect_ratio="anyres_max_N"``); a shrunk
  cell's box is the union of the boxes of the cells it mixes (:func:`cell_boxes_onevision`).
  With several images in one prompt OneVision does no tiling: each image is padded to a
  square and resized (:func:`cell_boxes_llava` follows that).
- SigLIP towers (``SiglipImageProcessorPil``: resize to a fixed square, no crop) go through
  :func:`cell_boxes_llava` as well.

Each axis is handled on its own (every step is separable) with exact rational arithmetic, so
neighbouring cells share their edges exactly. Only PIL backend processors are supported: the
torchvision backend pads a too small image for centre cropping differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "cell_boxes_llava",
    "cell_boxes_llava_next",
    "cell_boxes_onevision",
    "llava_next_token_count",
    "onevision_max_patches",
]


@dataclass(frozen=True)
class _Step:
    """One step of the forward transform along one axis, read backwards.

    A coordinate ``x`` after the step comes from ``x * scale + shift`` before it, where the
    image before the step spans ``[0, size_in]``; anything outside that span is padding.
    """

    scale: Fraction
    shift: Fraction
    size_in: int


def _resize_step(size_in: int, size_out: int) -> _Step:
    # PIL resizes with pixel edges aligned: output [0, size_out] spans input [0, size_in].
    return _Step(Fraction(size_in, size_out), Fraction(0), size_in)


def _shift_step(size_in: int, offset: int) -> _Step:
    # Crop at ``offset`` (offset > 0), pad by ``-offset`` before (offset < 0) or take a tile.
    return _Step(Fraction(1), Fraction(offset), size_in)


def _map_back(
    intervals: Sequence[tuple[Fraction, Fraction]], steps: Sequence[_Step]
) -> list[tuple[Fraction, Fraction]]:
    """Map intervals of the transformed axis back through ``steps`` (given in forward order).

    Each interval is clipped to the content of every intermediate image; an interval that
    sees only padding collapses to zero length at the content border.
    """
    out = []
    for lo, hi in intervals:
        for step in reversed(steps):
            lo, hi = lo * step.scale + step.shift, hi * step.scale + step.shift
            lo = min(max(lo, Fraction(0)), Fraction(step.size_in))
            hi = max(min(max(hi, Fraction(0)), Fraction(step.size_in)), lo)
        out.append((lo, hi))
    return out


def _cells(n: int, patch_size: int) -> list[tuple[Fraction, Fraction]]:
    return [(Fraction(i * patch_size), Fraction((i + 1) * patch_size)) for i in range(n)]


def _boxes(
    xs: Sequence[tuple[Fraction, Fraction]], ys: Sequence[tuple[Fraction, Fraction]]
) -> Float[Tensor, "rows cols 4"]:
    """Combine per-column x intervals and per-row y intervals into ``[rows, cols, 4]`` boxes."""
    # reshape: an axis can hold no cells (unpadding of an extreme aspect ratio keeps none)
    x = torch.tensor([[float(lo), float(hi)] for lo, hi in xs], dtype=torch.float64).reshape(-1, 2)
    y = torch.tensor([[float(lo), float(hi)] for lo, hi in ys], dtype=torch.float64).reshape(-1, 2)
    rows, cols = y.shape[0], x.shape[0]
    boxes = torch.stack(
        [
            x[None, :, 0].expand(rows, cols),
            y[:, None, 0].expand(rows, cols),
            x[None, :, 1].expand(rows, cols),
            y[:, None, 1].expand(rows, cols),
        ],
        dim=-1,
    )
    return boxes.to(torch.float32)


def _dummy(height: int, width: int) -> np.ndarray:
    """A channels-first array of the given size that allocates no pixels (HF helpers read shapes)."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), (1, height, width))


def _size_dict(value: Any, default_to_square: bool) -> Any:
    """The processor's ``size``/``crop_size``/``pad_size`` as a ``SizeDict`` (``None`` stays)."""
    from transformers.image_processing_utils import get_size_dict
    from transformers.image_utils import SizeDict

    if value is None or isinstance(value, SizeDict):
        return value
    return SizeDict(**get_size_dict(value, default_to_square=default_to_square))


def _check_backend(image_processor: Any) -> None:
    backend = getattr(image_processor, "backend", None)
    if backend != "pil":
        raise ValueError(
            f"only PIL backend image processors are supported (got {type(image_processor).__name__} with "
            f"backend {backend!r}); build the processor with backend='pil' or use the *ImageProcessorPil class"
        )


def _resize_output(height: int, width: int, size: Any) -> tuple[int, int]:
    """``(height, width)`` after ``PilBackend.resize(image, size)``, with its own rounding."""
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    if size.shortest_edge and size.longest_edge:
        out = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    elif size.shortest_edge:
        out = get_resize_output_image_size(
            _dummy(height, width),
            size=size.shortest_edge,
            default_to_square=False,
            input_data_format=ChannelDimension.FIRST,
        )
    elif size.max_height and size.max_width:
        out = get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
    elif size.height and size.width:
        out = (size.height, size.width)
    else:
        raise ValueError(f"unsupported image processor size {size}")
    return int(out[0]), int(out[1])


def _resize_crop_steps(height: int, width: int, image_processor: Any) -> tuple[list[_Step], list[_Step], int, int]:
    """Steps (y, x) of the processor's ``do_resize`` and ``do_center_crop``, and the size after them."""
    default_to_square = bool(getattr(image_processor, "default_to_square", False))
    ys: list[_Step] = []
    xs: list[_Step] = []
    if getattr(image_processor, "do_resize", False):
        size = _size_dict(image_processor.size, default_to_square)
        new_h, new_w = _resize_output(height, width, size)
        ys.append(_resize_step(height, new_h))
        xs.append(_resize_step(width, new_w))
        height, width = new_h, new_w
    if getattr(image_processor, "do_center_crop", False):
        crop = _size_dict(image_processor.crop_size, True)
        if crop is None or crop.height is None or crop.width is None:
            raise ValueError(f"do_center_crop needs crop_size with height and width, got {crop}")
        # transformers.image_transforms.center_crop: the window starts at (size - crop) // 2;
        # when the image is smaller it is first padded by ceil((crop - size) / 2) before, which
        # is the same offset (floor(-d / 2) == -ceil(d / 2)).
        ys.append(_shift_step(height, (height - int(crop.height)) // 2))
        xs.append(_shift_step(width, (width - int(crop.width)) // 2))
        height, width = int(crop.height), int(crop.width)
    return ys, xs, height, width


def _llava_steps(
    image_size: tuple[int, int], image_processor: Any, pad_to_square: bool | None = None
) -> tuple[list[_Step], list[_Step], int, int]:
    """Steps (y, x) of a LLaVA-1.5 processor and the processed ``(height, width)``.

    ``pad_to_square``: ``None``: as the processor does (``do_pad`` with a ``pad_to_square``
    method); ``True``: always (OneVision's several-images path pads whatever ``do_pad`` says).
    """
    _check_backend(image_processor)
    width, height = (int(v) for v in image_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    ys: list[_Step] = []
    xs: list[_Step] = []
    do_pad = bool(getattr(image_processor, "do_pad", False))
    if pad_to_square is None:
        pad_to_square = do_pad and hasattr(image_processor, "pad_to_square")
    if pad_to_square and height != width:
        # LlavaImageProcessorPil.pad_to_square: centred, start = (max_dim - dim) // 2.
        side = max(height, width)
        ys.append(_shift_step(height, -((side - height) // 2)))
        xs.append(_shift_step(width, -((side - width) // 2)))
        height = width = side
    more_y, more_x, height, width = _resize_crop_steps(height, width, image_processor)
    ys += more_y
    xs += more_x
    if do_pad and not pad_to_square:
        # PilBackend._preprocess: pad at the bottom and right to pad_size (batch maximum when
        # None, which is the image itself for one image).
        pad = _size_dict(getattr(image_processor, "pad_size", None), True)
        if pad is not None:
            ys.append(_shift_step(height, 0))
            xs.append(_shift_step(width, 0))
            height, width = int(pad.height), int(pad.width)
    return ys, xs, height, width


def _processed_size(image_size: tuple[int, int], image_processor: Any) -> tuple[int, int]:
    """``(height, width)`` of ``pixel_values`` a LLaVA-1.5 image processor makes for this image."""
    _, _, height, width = _llava_steps(image_size, image_processor)
    return height, width


def cell_boxes_llava(
    image_size: tuple[int, int], image_processor: Any, patch_size: int, *, pad_to_square: bool | None = None
) -> Float[Tensor, "rows cols 4"]:
    """Region of the original image that each vision patch of a LLaVA-1.5 image covers.

    Follows the processor's transform: pad to square (``LlavaImageProcessorPil`` with
    ``do_pad``), resize (``size``), centre crop (``crop_size``). A patch maps back to a box in
    original pixels, clipped to the image; a patch that sees only padding has zero area.

    Args:
        image_size: ``(width, height)`` of the original image.
        image_processor: a PIL backend ``CLIPImageProcessorPil`` or ``LlavaImageProcessorPil``.
        patch_size: the vision tower's patch size.
        pad_to_square: ``None`` (default): pad to a square when the processor does; ``True``:
            always, as ``LlavaOnevisionImageProcessorPil`` does for each of several images in
            one prompt (whatever its ``do_pad``).

    Returns:
        ``[rows, cols, 4]`` boxes ``(left, top, right, bottom)``, rows = processed height //
        patch_size (row-major order is the token order).

    Example:
        >>> from transformers import CLIPImageProcessorPil
        >>> proc = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size=28)
        >>> cell_boxes_llava((120, 60), proc, 14)[0, 0].tolist()
        [30.0, 0.0, 60.0, 30.0]
    """
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    ys, xs, height, width = _llava_steps(image_size, image_processor, pad_to_square)
    rows, cols = height // patch_size, width // patch_size
    if rows == 0 or cols == 0:
        raise ValueError(f"processed image {height}x{width} (h x w) is smaller than one {patch_size}px patch")
    return _boxes(_map_back(_cells(cols, patch_size), xs), _map_back(_cells(rows, patch_size), ys))


def _unpad_range(current: tuple[int, int], original: tuple[int, int]) -> tuple[range, range]:
    """Rows and columns of the tile feature grid kept by HF ``unpad_image``.

    Same arithmetic as ``modeling_llava_next.unpad_image`` and
    ``LlavaNextProcessor._get_unpadded_features`` (float aspect ratios, ``int(round(., 7))``).
    """
    current_height, current_width = current
    original_height, original_width = original
    if original_width / original_height > current_width / current_height:
        new_height = int(round(original_height * (current_width / original_width), 7))
        padding = (current_height - new_height) // 2
        return range(padding, current_height - padding), range(current_width)
    new_width = int(round(original_width * (current_height / original_height), 7))
    padding = (current_width - new_width) // 2
    return range(current_height), range(padding, current_width - padding)


def cell_boxes_llava_next(
    image_size: tuple[int, int],
    image_processor: Any,
    image_grid_pinpoints: Sequence[Sequence[int]],
    vision_image_size: int,
    patch_size: int,
) -> tuple[Float[Tensor, "g g 4"], Float[Tensor, "rows cols 4"]]:
    """Regions of the original image seen by a LLaVA-NeXT image's base and tile patches.

    The base view is the whole image resized to a square. The tile view is the image resized
    (aspect preserved) into the best pinpoint resolution, padded to it (centred), cut into
    ``vision_image_size`` tiles; the model joins the tiles' patches into one grid and drops the
    padded rows or columns as ``unpad_image`` does. The returned tile grid is that unpadded
    grid; a cell that sees only padding (``unpad_image`` can keep some) has zero area.

    Args:
        image_size: ``(width, height)`` of the original image.
        image_processor: a ``LlavaNextImageProcessorPil``.
        image_grid_pinpoints: the model config's ``image_grid_pinpoints`` (``[height, width]``
            pairs); must match the processor's.
        vision_image_size: the vision tower's input size (``vision_config.image_size``).
        patch_size: the vision tower's patch size.

    Returns:
        ``(base, tiles)``: ``[g, g, 4]`` and ``[rows, cols, 4]`` boxes ``(left, top, right,
        bottom)`` in original pixels, ``g = vision_image_size // patch_size``. Tokens come as
        base (row-major), then each tile row followed by one image-newline token.

    Raises:
        ValueError: a size that the model could not pair with the processor's output (tile
            size, pinpoints or processed view size inconsistent with ``vision_image_size``).

    Example:
        >>> base, tiles = cell_boxes_llava_next((1000, 500), proc, cfg.image_grid_pinpoints,
        ...                                     336, 14)   # doctest: +SKIP
        >>> llava_next_token_count(base, tiles)             # doctest: +SKIP
    """
    base, tiles = _next_axes(image_size, image_processor, image_grid_pinpoints, vision_image_size, patch_size)
    return _boxes(*base), _boxes(*tiles)


_Axes = tuple[list[tuple[Fraction, Fraction]], list[tuple[Fraction, Fraction]]]


def _next_axes(
    image_size: tuple[int, int],
    image_processor: Any,
    image_grid_pinpoints: Sequence[Sequence[int]],
    vision_image_size: int,
    patch_size: int,
) -> tuple[_Axes, _Axes]:
    """``((base_x, base_y), (tile_x, tile_y))`` cell intervals of :func:`cell_boxes_llava_next`."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    _check_backend(image_processor)
    if patch_size <= 0 or vision_image_size <= 0 or vision_image_size % patch_size:
        raise ValueError(
            f"vision_image_size {vision_image_size} must be a positive multiple of patch_size {patch_size}"
        )
    width, height = (int(v) for v in image_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    pinpoints = [[int(v) for v in p] for p in image_grid_pinpoints]
    own = getattr(image_processor, "image_grid_pinpoints", None)
    if own is not None and [[int(v) for v in p] for p in own] != pinpoints:
        raise ValueError(f"image_grid_pinpoints {pinpoints} differ from the image processor's {own}")
    g = vision_image_size // patch_size

    size = _size_dict(image_processor.size, bool(getattr(image_processor, "default_to_square", False)))
    crop = _size_dict(getattr(image_processor, "crop_size", None), True)
    # LlavaNextImageProcessorPil._preprocess: base size and tile size.
    base_h, base_w = (size.height, size.width) if size.height and size.width else (size.shortest_edge,) * 2
    if crop is not None and crop.height:
        tile = int(crop.height)
    elif size.height:
        tile = int(size.height)
    else:
        tile = int(size.shortest_edge)

    def view_steps(h: int, w: int) -> tuple[list[_Step], list[_Step]]:
        ys, xs, out_h, out_w = _resize_crop_steps(h, w, image_processor)
        if (out_h, out_w) != (vision_image_size, vision_image_size):
            raise ValueError(
                f"the processor makes {out_h}x{out_w} views but the vision tower takes {vision_image_size}"
            )
        return ys, xs

    # Base view: the whole image resized to (base_h, base_w), then the per-view steps.
    ys, xs = view_steps(base_h, base_w)
    base_x = _map_back(_cells(g, patch_size), [_resize_step(width, base_w), *xs])
    base_y = _map_back(_cells(g, patch_size), [_resize_step(height, base_h), *ys])

    # Tile view: best resolution, aspect-preserving resize, centred padding, tiles.
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    new_h, new_w = get_patch_output_size(_dummy(height, width), (best_h, best_w), ChannelDimension.FIRST)
    if best_h % tile or best_w % tile:
        raise ValueError(f"pinpoint {best_h}x{best_w} is not a whole number of {tile}px tiles")
    tiles_h, tiles_w = best_h // tile, best_w // tile
    if (tiles_h, tiles_w) != (best_h // vision_image_size, best_w // vision_image_size):
        raise ValueError(f"the processor cuts {tile}px tiles but the vision tower takes {vision_image_size}px")
    ys, xs = view_steps(tile, tile)
    local_y = _map_back(_cells(g, patch_size), ys)  # within a tile, in tile pixels
    local_x = _map_back(_cells(g, patch_size), xs)
    # Feature grid row k = tile_row * g + local_row (pack_image_features' permute).
    rows_kept, cols_kept = _unpad_range((tiles_h * g, tiles_w * g), (height, width))
    tile_y = [(lo + (k // g) * tile, hi + (k // g) * tile) for k in rows_kept for lo, hi in [local_y[k % g]]]
    tile_x = [(lo + (k // g) * tile, hi + (k // g) * tile) for k in cols_kept for lo, hi in [local_x[k % g]]]
    # LlavaNextImageProcessorPil._get_padding_size: paste offset (target - size) // 2.
    pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    tile_x = _map_back(tile_x, [_resize_step(width, new_w), _shift_step(new_w, -pad_x)])
    tile_y = _map_back(tile_y, [_resize_step(height, new_h), _shift_step(new_h, -pad_y)])
    return (base_x, base_y), (tile_x, tile_y)


def llava_next_token_count(base: Tensor, tiles: Tensor) -> int:
    """Number of image tokens LLaVA-NeXT inserts: ``g * g + rows * (cols + 1)``.

    Args:
        base: ``[g, g, 4]`` base cell boxes from :func:`cell_boxes_llava_next`.
        tiles: ``[rows, cols, 4]`` tile cell boxes (one image-newline token ends each row).
    """
    return int(base.shape[0] * base.shape[1] + tiles.shape[0] * (tiles.shape[1] + 1))


def onevision_max_patches(vision_aspect_ratio: str) -> int:
    """``N`` of OneVision's ``vision_aspect_ratio="anyres_max_N"`` (as the modeling code reads it)."""
    import re

    if not isinstance(vision_aspect_ratio, str) or re.fullmatch(r"anyres_max_[1-9][0-9]*", vision_aspect_ratio) is None:
        raise ValueError(f"vision_aspect_ratio must be 'anyres_max_N' with N >= 1, got {vision_aspect_ratio!r}")
    return int(vision_aspect_ratio[len("anyres_max_") :])


def _bilinear_sources(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """For each output index of a bilinear resize ``n_in -> n_out`` along one axis, the first
    and last input index it mixes with a non-zero weight.

    The weights are PyTorch's own (``interpolate(mode="bilinear", align_corners=False)``, as
    ``LlavaOnevisionModel.pack_image_features`` calls it), read off the resize of an identity
    matrix, so an output that lands exactly on one input index mixes only that one.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(
            f"a bilinear resize of {n_in} cells to {n_out} has no cells (Hugging Face cannot run it either)"
        )
    eye = torch.eye(n_in, dtype=torch.float32)[None, :, :, None]  # channel c = one-hot input c
    weights = torch.nn.functional.interpolate(eye, size=[n_out, 1], mode="bilinear")[0, :, :, 0]  # [in, out]
    out = []
    for j in range(n_out):
        src = (weights[:, j] != 0).nonzero().flatten()
        out.append((int(src.min()), int(src.max())))
    return out


def _union(intervals: Sequence[tuple[Fraction, Fraction]], first: int, last: int) -> tuple[Fraction, Fraction]:
    """The smallest interval holding ``intervals[first..last]`` (zero-length ones sit at the
    content border, so min and max give the union)."""
    part = intervals[first : last + 1]
    return min(lo for lo, _ in part), max(hi for _, hi in part)


def cell_boxes_onevision(
    image_size: tuple[int, int],
    image_processor: Any,
    image_grid_pinpoints: Sequence[Sequence[int]],
    vision_image_size: int,
    patch_size: int,
    vision_aspect_ratio: str,
) -> tuple[Float[Tensor, "g g 4"], Float[Tensor, "rows cols 4"]]:
    """Regions of the original image seen by a LLaVA-OneVision image's base and tile cells.

    The base view and the unpadded tile grid are LLaVA-NeXT's (:func:`cell_boxes_llava_next`;
    OneVision's processor resizes each view to a square without cropping). Then, as in
    ``LlavaOnevisionModel.pack_image_features``: with ``(H, W)`` the unpadded grid, ``g`` the
    base grid side and ``N`` from ``"anyres_max_N"``, ``ratio = sqrt(H * W / (N * g**2))``; if
    ``ratio > 1.1`` the grid is resized bilinearly (``align_corners=False``) to
    ``(int(H // ratio), int(W // ratio))``. A cell of the resized grid is a weighted mean of up
    to 2 x 2 neighbouring source cells; its box is the union of the boxes of the source cells
    with a non-zero weight (so neighbouring shrunk cells overlap, and a box "touches" a shrunk
    cell when it touches any source cell that cell mixes). Without resizing the boxes are
    those of the unpadded grid.

    Args:
        image_size: ``(width, height)`` of the original image.
        image_processor: a ``LlavaOnevisionImageProcessorPil``.
        image_grid_pinpoints: the model config's ``image_grid_pinpoints``.
        vision_image_size: ``vision_config.image_size``.
        patch_size: ``vision_config.patch_size``.
        vision_aspect_ratio: the model config's ``vision_aspect_ratio`` (``"anyres_max_9"``).

    Returns:
        ``(base, tiles)`` boxes ``(left, top, right, bottom)`` in original pixels; tokens come
        as base (row-major), then each tile row followed by one image-newline token (count:
        :func:`llava_next_token_count`).

    Example:
        >>> base, tiles = cell_boxes_onevision((1000, 500), proc, cfg.image_grid_pinpoints,   # doctest: +SKIP
        ...                                    384, 14, "anyres_max_9")
    """
    max_patches = onevision_max_patches(vision_aspect_ratio)
    (base_x, base_y), (tile_x, tile_y) = _next_axes(
        image_size, image_processor, image_grid_pinpoints, vision_image_size, patch_size
    )
    g = vision_image_size // patch_size
    rows, cols = len(tile_y), len(tile_x)
    ratio = math.sqrt(rows * cols / (max_patches * g**2))
    if ratio > 1.1:
        new_rows, new_cols = int(rows // ratio), int(cols // ratio)
        tile_y = [_union(tile_y, a, b) for a, b in _bilinear_sources(rows, new_rows)]
        tile_x = [_union(tile_x, a, b) for a, b in _bilinear_sources(cols, new_cols)]
    return _boxes(base_x, base_y), _boxes(tile_x, tile_y)
