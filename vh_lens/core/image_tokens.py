"""Which image tokens of a prompt belong to which image, and which grid cell each one is.

:func:`split_image_tokens` splits the image-placeholder positions of one prompt (as the
Hugging Face processor expanded them) among its images, in order, each by its own geometry
(:mod:`vh_lens.core.geometry`):

- LLaVA-1.5 / ViP-LLaVA / SigLIP LLaVA: ``lead`` tokens (the CLS token kept by strategy
  ``"full"`` with a CLIP tower; none for SigLIP, which has no CLS token), then the patch
  grid row-major.
- LLaVA-NeXT, and OneVision with one image in the prompt: the base grid row-major, then each
  row of the (unpadded; for OneVision possibly bilinearly downsampled) tile grid followed by
  one image-newline token.
- OneVision with several images in the prompt: no tiling; each image is padded to a square and
  resized, its grid row-major, then one image-newline token.

The token count of each image comes from the geometry, and their sum must equal the number of
placeholder tokens the processor made, else nothing is returned (``RuntimeError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from vh_lens.core import geometry as _geometry

__all__ = ["CLS_TOWERS", "ImageTokens", "leading_image_tokens", "split_image_tokens"]

CLS_TOWERS = {"clip_vision_model": 1, "siglip_vision_model": 0}
"""Vision tower ``model_type`` -> number of tokens it puts before the patch tokens (CLS)."""


@dataclass(frozen=True, eq=False)
class ImageTokens:
    """One image of an unpadded prompt: its positions, newline positions and grids.

    Attributes:
        positions: ``[n]`` positions of every token of this image (CLS, newlines included).
        newline_positions: ``[n_nl]`` its image-newline positions.
        grids: ``(name, positions [rows, cols], cell boxes [rows, cols, 4])`` per grid.
        image_size: ``(width, height)`` of the original image.
    """

    positions: Int[Tensor, " n"]
    newline_positions: Int[Tensor, " n_nl"]
    grids: tuple[tuple[str, Tensor, Tensor], ...]
    image_size: tuple[int, int]


def leading_image_tokens(config: Any) -> int:
    """Tokens an image puts before its patch grid: the CLS token kept by strategy ``"full"``.

    Args:
        config: the LLaVA model config (``model_type``, ``vision_config``,
            ``vision_feature_select_strategy``).

    Raises:
        ValueError: a combination Hugging Face would run with a silently wrong layout or not
            at all (a tower without a CLS token under strategy ``"default"``, which drops the
            first patch instead; a CLS token kept by a tiling model), an unknown strategy, or a
            tower whose leading tokens are unknown.
    """
    tower = getattr(config.vision_config, "model_type", None)
    if tower not in CLS_TOWERS:
        raise ValueError(f"unsupported vision tower {tower!r}: supported {sorted(CLS_TOWERS)}")
    if config.model_type == "vipllava":
        return 0  # ViP-LLaVA always drops the CLS token
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ValueError(f"unsupported vision_feature_select_strategy {strategy!r}")
    cls = CLS_TOWERS[tower]
    if strategy == "default" and cls == 0:
        raise ValueError(
            f"vision_feature_select_strategy 'default' drops the first token, but the {tower} tower has no CLS "
            "token: it would drop a real patch (SigLIP checkpoints use 'full')"
        )
    lead = cls if strategy == "full" else 0
    if lead and config.model_type != "llava":
        raise ValueError(
            f"a {config.model_type} model cannot keep the CLS token (strategy 'full' with a {tower} tower)"
        )
    return lead


def _image_geometry(config: Any, image_processor: Any, image_size: tuple[int, int], multi: bool, lead: int):
    """``(n_tokens, grids, newline)`` of one image in indices ``0..n_tokens-1`` of its tokens;
    grids are ``(name, local positions [r, c], cell boxes [r, c, 4])``."""
    kind = config.model_type
    vc = config.vision_config
    if kind == "llava_next" or (kind == "llava_onevision" and not multi):
        if kind == "llava_next":
            base, tiles = _geometry.cell_boxes_llava_next(
                image_size, image_processor, config.image_grid_pinpoints, vc.image_size, vc.patch_size
            )
        else:
            base, tiles = _geometry.cell_boxes_onevision(
                image_size,
                image_processor,
                config.image_grid_pinpoints,
                vc.image_size,
                vc.patch_size,
                config.vision_aspect_ratio,
            )
        g = base.shape[0] * base.shape[1]
        rows, cols = tiles.shape[:2]
        n = _geometry.llava_next_token_count(base, tiles)
        rest = torch.arange(g, n).view(rows, cols + 1)
        grids = (("base", torch.arange(g).view(base.shape[:2]), base), ("tiles", rest[:, :cols], tiles))
        return n, grids, rest[:, cols].clone()
    several = kind == "llava_onevision"  # OneVision pads each of several images to a square, always
    boxes = _geometry.cell_boxes_llava(
        image_size, image_processor, vc.patch_size, pad_to_square=True if several else None
    )
    cells = boxes.shape[0] * boxes.shape[1]
    grids = (("base", torch.arange(lead, lead + cells).view(boxes.shape[:2]), boxes),)
    if kind == "llava_onevision":  # one image of several: one image-newline token after the grid
        return cells + 1, grids, torch.tensor([cells])
    return lead + cells, grids, torch.zeros(0, dtype=torch.long)


def split_image_tokens(
    config: Any,
    image_processor: Any,
    sizes: Sequence[tuple[int, int]],
    image_positions: Int[Tensor, " n_img"],
    lead: int,
) -> tuple[ImageTokens, ...]:
    """Split one prompt's image positions among its images, each by its own geometry.

    Args:
        config: the LLaVA model config.
        image_processor: the processor's (PIL backend) image processor.
        sizes: ``(width, height)`` of each image, in prompt order.
        image_positions: ``[n_img]`` positions of the image placeholder tokens, sorted.
        lead: :func:`leading_image_tokens` of the config.

    Returns:
        One :class:`ImageTokens` per image.

    Raises:
        RuntimeError: the geometry's token counts do not add up to ``len(image_positions)``.
    """
    shares = [_image_geometry(config, image_processor, size, len(sizes) > 1, lead) for size in sizes]
    counts = [n for n, _, _ in shares]
    if sum(counts) != image_positions.numel():
        raise RuntimeError(
            f"{config.model_type} layout: the prompt holds {image_positions.numel()} image tokens but the geometry "
            f"of its {len(sizes)} image(s) gives {counts} (sum {sum(counts)})"
        )
    out, start = [], 0
    for size, (n, grids, newline) in zip(sizes, shares):
        pos = image_positions[start : start + n]
        start += n
        out.append(
            ImageTokens(
                positions=pos,
                newline_positions=pos[newline],
                grids=tuple((name, pos[local], boxes) for name, local, boxes in grids),
                image_size=(int(size[0]), int(size[1])),
            )
        )
    return tuple(out)
