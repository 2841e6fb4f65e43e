"""What a patch touches: per-sample position masks for heads, image positions and image regions.

A *site set* is a list of ``[batch, pos]`` boolean masks, one per entry of a result's index
axis, each with an optional head; every entry is patched (or attributed) at every layer asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vh_lens.core.tl_native import image_token_labels
from vh_lens.data.sample import Box

if TYPE_CHECKING:
    from vh_lens.core.model import LlavaBatch

HEAD_QUERIES: tuple[str, ...] = ("query", "all")
RESID_ACTIVATIONS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""``[batch, pos, d_model]`` activations that position and region maps patch."""


@dataclass(frozen=True, eq=False)
class Sites:
    """The index axis of a patching grid.

    Attributes:
        grid: ``"heads"``, ``"positions"`` or ``"regions"``.
        activation: the TransformerLens activation name (``"z"`` for heads, else one of
            :data:`RESID_ACTIVATIONS`).
        masks: per index, ``[batch, pos]`` the positions patched.
        heads: per index, the head patched (``None``: the whole activation at those positions).
        labels: per index, a readable name.
        boxes: ``[index, 4]`` the original-image box drawn for each index (sample 0's geometry;
            NaN where there is none), or ``None`` for heads.
    """

    grid: str
    activation: str
    masks: tuple[Bool[Tensor, "batch pos"], ...]
    heads: tuple[int | None, ...]
    labels: tuple[str, ...]
    boxes: Float[Tensor, "index 4"] | None


def _check_resid(activation: str) -> None:
    if activation not in RESID_ACTIVATIONS:
        raise ValueError(f"activation must be one of {RESID_ACTIVATIONS}, got {activation!r}")


def head_sites(batch: LlavaBatch, n_heads: int, positions: str = "query") -> Sites:
    """Every head of a layer (``hook_z``), at the query position or at all positions."""
    if positions not in HEAD_QUERIES:
        raise ValueError(f"head positions must be one of {HEAD_QUERIES}, got {positions!r}")
    mask = torch.zeros(batch.shape, dtype=torch.bool)
    if positions == "query":
        mask[torch.arange(len(batch)), batch.query_positions] = True
    else:
        mask[:] = True
    return Sites("heads", "z", (mask,) * n_heads, tuple(range(n_heads)), tuple(f"H{h}" for h in range(n_heads)), None)


def position_sites(batch: LlavaBatch, activation: str = "resid_pre") -> Sites:
    """Each image position (the k-th image token of every sample) on its own.

    Raises:
        ValueError: a sample without an image, or samples whose image token layouts differ.
    """
    _check_resid(activation)
    first = batch.layout[0]
    for i, lay in enumerate(batch.layout):
        if not lay.has_image:
            raise ValueError(f"sample {i} has no image: a per-position map needs an image in every sample")
        if lay.n_image_tokens != first.n_image_tokens or [g.shape for g in lay.grids] != [g.shape for g in first.grids]:
            raise ValueError(
                f"sample {i} has another image token layout than sample 0 ({lay.n_image_tokens} vs "
                f"{first.n_image_tokens} tokens): per-position maps need images of one token geometry"
            )
    labels = image_token_labels(first)
    boxes = torch.full((first.n_image_tokens, 4), math.nan)
    where = {int(p): k for k, p in enumerate(first.image_positions.tolist())}
    for g in first.grids:
        for (r, c), p in zip(
            torch.cartesian_prod(torch.arange(g.shape[0]), torch.arange(g.shape[1])).tolist(),
            g.positions.flatten().tolist(),
        ):
            boxes[where[int(p)]] = g.cell_boxes[r, c].float()
    masks = []
    for k in range(first.n_image_tokens):
        m = torch.zeros(batch.shape, dtype=torch.bool)
        for i, lay in enumerate(batch.layout):
            m[i, lay.image_positions[k]] = True
        masks.append(m)
    names = tuple(labels[int(p)].strip("<>").removeprefix("img:") for p in first.image_positions.tolist())
    return Sites("positions", activation, tuple(masks), (None,) * len(masks), names, boxes)


def region_sites(
    batch: LlavaBatch,
    regions: Sequence[Box | Sequence[Box]],
    names: Sequence[str] | None = None,
    *,
    activation: str = "resid_pre",
    min_overlap: float = 0.0,
    rest: bool = False,
) -> Sites:
    """Each region's image tokens patched together.

    Args:
        batch: the batch.
        regions: per region, one box for every sample or a box per sample
            (``(left, top, right, bottom)`` in original-image pixels).
        names: per region a name (default ``"region {j}"``).
        activation: one of :data:`RESID_ACTIVATIONS`.
        min_overlap: see :meth:`vh_lens.core.layout.TokenLayout.region_mask`.
        rest: add a last region ``"rest"``: the image tokens in none of the regions.

    Raises:
        ValueError: a region covers no image token in some sample, or bad boxes.
    """
    _check_resid(activation)
    if not regions:
        raise ValueError("region_sites: no regions given")
    names = list(names) if names is not None else [f"region {j}" for j in range(len(regions))]
    if len(names) != len(regions):
        raise ValueError(f"got {len(names)} names for {len(regions)} regions")
    masks, boxes = [], []
    for j, region in enumerate(regions):
        per_sample = list(region) if len(region) and not isinstance(region[0], (int, float)) else [region] * len(batch)
        if len(per_sample) != len(batch):
            raise ValueError(f"region {names[j]!r}: got {len(per_sample)} boxes for a batch of {len(batch)}")
        m = torch.stack([lay.region_mask(box, min_overlap) for lay, box in zip(batch.layout, per_sample)])
        empty = (~m.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"region {names[j]!r} covers no image token in sample {empty[0]}")
        masks.append(m)
        boxes.append(torch.tensor([float(v) for v in per_sample[0]]))
    if rest:
        image = torch.stack([lay.image_mask for lay in batch.layout])
        m = image & ~torch.stack(masks).any(0)
        if not bool(m.any(1).all()):
            raise ValueError("the regions leave no image token of some sample for the 'rest' region")
        masks.append(m)
        boxes.append(torch.full((4,), math.nan))
        names.append("rest")
    return Sites("regions", activation, tuple(masks), (None,) * len(masks), tuple(names), torch.stack(boxes))


def grid_boxes(image_size: tuple[int, int], rows: int, cols: int | None = None) -> list[Box]:
    """A ``rows x cols`` partition of an image into boxes, row by row (for :func:`region_sites`)."""
    cols = rows if cols is None else cols
    if rows < 1 or cols < 1:
        raise ValueError(f"a region grid needs at least 1 x 1 cells, got {rows} x {cols}")
    w, h = image_size
    return [
        (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows) for r in range(rows) for c in range(cols)
    ]
