"""Token layout: which position of a (left-padded) sequence holds what.

A :class:`TokenLayout` is made per sample by :meth:`vh_lens.LlavaLens.prepare`, with one
:class:`ImageLayout` per image of the prompt. Positions are indices into the padded batch
sequence, so they index hook tensors directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vh_lens.data.sample import Box, as_box


@dataclass(frozen=True, eq=False)
class ImageGrid:
    """A grid of image tokens and the part of the original image each one sees.

    Attributes:
        name: ``"base"`` for LLaVA-1.5's grid or LLaVA-NeXT's / OneVision's base (low
            resolution) grid, ``"tiles"`` for their high resolution grid (after unpadding and,
            for OneVision, bilinear downsampling).
        positions: ``[rows, cols]`` sequence position of each grid cell.
        cell_boxes: ``[rows, cols, 4]`` region ``(left, top, right, bottom)`` of the original
            image, in pixels, that the cell's patch covers (clipped to the image; a cell that
            covers only padding has zero area). A OneVision tile cell that bilinear
            downsampling made from several source cells covers the union of their boxes
            (see :func:`vh_lens.core.geometry.cell_boxes_onevision`), so such cells overlap.
    """

    name: str
    positions: Int[Tensor, "rows cols"]
    cell_boxes: Float[Tensor, "rows cols 4"]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.positions.shape[0]), int(self.positions.shape[1]))

    def cell_mask(self, box: Box, min_overlap: float = 0.0) -> Bool[Tensor, "rows cols"]:
        """Cells whose patch is covered by ``box``.

        Args:
            box: ``(left, top, right, bottom)`` in original-image pixels.
            min_overlap: a cell counts when the box covers more than this fraction of the
                cell's area (0: any overlap at all; 1.0 would need full coverage, so use
                values in ``[0, 1)``, or exactly 1.0 to demand full coverage).
        """
        return cell_overlap(self.cell_boxes, box) >= _threshold(min_overlap)


def _threshold(min_overlap: float) -> float:
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    # "covers part of it": strictly positive overlap when min_overlap is 0.
    return min_overlap if min_overlap > 0 else 1e-9


def cell_overlap(cell_boxes: Float[Tensor, "... 4"], box: Box) -> Float[Tensor, ...]:
    """Fraction of each cell's area covered by ``box`` (0 for cells of zero area)."""
    left, top, right, bottom = (float(v) for v in box)
    ix = (torch.clamp(cell_boxes[..., 2], max=right) - torch.clamp(cell_boxes[..., 0], min=left)).clamp(min=0)
    iy = (torch.clamp(cell_boxes[..., 3], max=bottom) - torch.clamp(cell_boxes[..., 1], min=top)).clamp(min=0)
    area = (cell_boxes[..., 2] - cell_boxes[..., 0]) * (cell_boxes[..., 3] - cell_boxes[..., 1])
    return torch.where(area > 0, ix * iy / area.clamp(min=1e-12), torch.zeros_like(area))


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """Where one image of a prompt sits in the sequence.

    Attributes:
        index: the image's 0-based order in the prompt.
        positions: ``[n]`` every position holding a feature of this image (a CLS token kept by
            strategy ``"full"`` and image-newline tokens included).
        newline_positions: ``[n_newline]`` this image's image-newline positions (LLaVA-NeXT
            and OneVision; empty otherwise).
        grids: this image's grids (``"base"``, and ``"tiles"`` where the model tiles).
        image_size: ``(width, height)`` of the original image.
    """

    index: int
    positions: Int[Tensor, " n"]
    newline_positions: Int[Tensor, " n_newline"]
    grids: tuple[ImageGrid, ...]
    image_size: tuple[int, int]

    def grid(self, name: str = "base") -> ImageGrid:
        for g in self.grids:
            if g.name == name:
                return g
        raise KeyError(f"image {self.index} has no grid named {name!r}; it has {[g.name for g in self.grids]}")

    def region_positions(self, box: Box, min_overlap: float = 0.0) -> Int[Tensor, " n"]:
        """Sorted positions of this image's tokens whose patch is covered by ``box`` (original pixels)."""
        check_box(box, self.image_size)
        hits = [g.positions[g.cell_mask(box, min_overlap)] for g in self.grids]
        return torch.cat(hits).sort().values if hits else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """Which position is what, for one sample of a padded batch.

    Attributes:
        seq_len: length of the padded sequence.
        n_pad: number of left-padding positions (``0 .. n_pad-1``).
        image_positions: ``[n_image_tokens]`` positions holding image features, of every image
            (LLaVA-NeXT / OneVision newline tokens and a CLS token kept by strategy ``"full"``
            included, as the model sees them as image features).
        newline_positions: ``[n_newline]`` LLaVA-NeXT / OneVision image-newline positions of
            every image (empty otherwise).
        text_positions: ``[n_text]`` every other non-padding position (BOS included).
        query_position: the answer query: the last prompt position.
        grids: the image grids (empty for a text-only sample; with several images, every
            image's grids in image order: use ``images[i].grid(name)``).
        image_size: ``(width, height)`` of the original image when the sample holds exactly
            one image, else ``None`` (see ``images``).
        answer_positions: ``[n_answer]`` positions of tokens appended after the prompt (teacher
            forcing or an appended answer token); empty for a plain prompt.
        images: one :class:`ImageLayout` per image, in prompt order. Made from ``grids`` and
            ``image_size`` when left out and the sample has one image.
    """

    seq_len: int
    n_pad: int
    image_positions: Int[Tensor, " n_img"]
    newline_positions: Int[Tensor, " n_newline"]
    text_positions: Int[Tensor, " n_text"]
    query_position: int
    grids: tuple[ImageGrid, ...] = ()
    image_size: tuple[int, int] | None = None
    answer_positions: Int[Tensor, " n_answer"] = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    images: tuple[ImageLayout, ...] = ()

    def __post_init__(self) -> None:
        if not self.images and self.image_size is not None:
            one = ImageLayout(
                0, self.image_positions, self.newline_positions, tuple(self.grids), tuple(self.image_size)
            )
            object.__setattr__(self, "images", (one,))

    @property
    def n_image_tokens(self) -> int:
        return int(self.image_positions.numel())

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    def image(self, index: int | None = None) -> ImageLayout:
        """The :class:`ImageLayout` of image ``index`` (``None``: the only image; an error when there are several)."""
        if not self.images:
            raise ValueError("this sample has no image")
        if index is None:
            if len(self.images) > 1:
                raise ValueError(
                    f"this sample holds {len(self.images)} images: pass image= (0..{len(self.images) - 1})"
                )
            return self.images[0]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.images):
            raise ValueError(f"image {index!r} does not exist: this sample holds {len(self.images)} image(s)")
        return self.images[index]

    def grid(self, name: str = "base", image: int | None = None) -> ImageGrid:
        """Grid ``name`` of image ``image`` (``None``: the only image)."""
        if not self.images:
            raise KeyError(f"no image grid named {name!r}; this sample has no image")
        return self.image(image).grid(name)

    def _mask(self, positions: Tensor) -> Bool[Tensor, " seq"]:
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[positions] = True
        return mask

    @property
    def image_mask(self) -> Bool[Tensor, " seq"]:
        """``[seq_len]`` True at image-token positions."""
        return self._mask(self.image_positions)

    def image_token_mask(self, image: int | None = None) -> Bool[Tensor, " seq"]:
        """``[seq_len]`` True at the tokens of image ``image`` (``None``: of every image, as :attr:`image_mask`)."""
        if image is None:
            return self.image_mask
        return self._mask(self.image(image).positions)

    @property
    def text_mask(self) -> Bool[Tensor, " seq"]:
        """``[seq_len]`` True at text positions (padding excluded)."""
        return self._mask(self.text_positions)

    def region_mask(self, box: Box, min_overlap: float = 0.0, *, image: int | None = None) -> Bool[Tensor, " seq"]:
        """Image-token positions whose patch is covered by ``box``.

        The box is in original-image pixels; each grid cell's patch was mapped back through
        the processor's real transform (resize, centre crop or pad to square, anyres tiling), so a
        cropped-away or padded part of the image maps to no token.

        Args:
            box: ``(left, top, right, bottom)`` in original-image pixels.
            min_overlap: minimum fraction of a patch the box must cover (0: any overlap).
            image: which image the box is on (0-based); ``None`` for a sample of one image.

        Returns:
            ``[seq_len]`` boolean mask.

        Raises:
            ValueError: the sample has no image, holds several and ``image`` is not given, or
                the box lies outside the image.

        Example:
            >>> mask = batch.layout[0].region_mask((0, 0, 32, 32))   # doctest: +SKIP
        """
        if not self.images:
            raise ValueError("region_mask: this sample has no image")
        return self._mask(self.image(image).region_positions(box, min_overlap))

    def region_positions(self, box: Box, min_overlap: float = 0.0, *, image: int | None = None) -> Int[Tensor, " n"]:
        """Positions of :meth:`region_mask`, sorted."""
        return self.region_mask(box, min_overlap, image=image).nonzero().flatten()


def check_box(box: Box, image_size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``box`` is a finite, non-empty box that lies within the image."""
    left, top, right, bottom = as_box(box)
    width, height = image_size
    if left < 0 or top < 0 or right > width or bottom > height:
        raise ValueError(f"box {tuple(box)} lies outside the image of size {width}x{height} (width x height)")
