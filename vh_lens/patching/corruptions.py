"""Corrupted runs for patching: image edits inside a box, another image, noise on the image features.

Each corruption is deterministic given its seed. Image edits return a new PIL image of the same
size (so the corrupted prompt has the same token layout); :func:`noise_image_embeddings` works
on a prepared :class:`~vh_lens.LlavaBatch` (causal tracing, Meng et al. 2022: Gaussian noise
on the input embeddings of the subject, here the image features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from vh_lens.core.layout import check_box
from vh_lens.data.sample import Box

if TYPE_CHECKING:
    from vh_lens.core.model import LlavaBatch

ImageCorruption = Literal["grey", "blur", "noise"]
IMAGE_CORRUPTIONS: tuple[str, ...] = ("grey", "blur", "noise")
"""Edits of the box region of an image (:func:`corrupt_image`)."""


def _box(box: Box, image: Image.Image) -> tuple[int, int, int, int]:
    check_box(box, image.size)
    left, top, right, bottom = (float(v) for v in box)
    return int(np.floor(left)), int(np.floor(top)), int(np.ceil(right)), int(np.ceil(bottom))


def grey_box(image: Image.Image, box: Box, value: int = 128) -> Image.Image:
    """``image`` with the box region filled with grey ``(value, value, value)``."""
    if not 0 <= value <= 255:
        raise ValueError(f"grey value must be in 0..255, got {value}")
    out = image.convert("RGB").copy()
    out.paste((value, value, value), _box(box, out))
    return out


def blur_box(image: Image.Image, box: Box, radius: float = 4.0) -> Image.Image:
    """``image`` with the box region Gaussian-blurred (PIL ``GaussianBlur(radius)``, the box alone)."""
    if radius <= 0:
        raise ValueError(f"blur radius must be positive, got {radius}")
    out = image.convert("RGB").copy()
    b = _box(box, out)
    out.paste(out.crop(b).filter(ImageFilter.GaussianBlur(radius)), b[:2])
    return out


def noise_box(image: Image.Image, box: Box, *, std: float = 64.0, seed: int = 0) -> Image.Image:
    """``image`` with Gaussian pixel noise of ``std`` (0..255 scale) added inside the box, clipped."""
    if std <= 0:
        raise ValueError(f"noise std must be positive, got {std}")
    out = image.convert("RGB").copy()
    left, top, right, bottom = _box(box, out)
    arr = np.asarray(out, dtype=np.float64).copy()
    rng = np.random.default_rng(seed)
    region = arr[top:bottom, left:right]
    arr[top:bottom, left:right] = np.clip(region + rng.normal(0.0, std, region.shape), 0, 255)
    return Image.fromarray(np.rint(arr).astype(np.uint8), "RGB")


def corrupt_image(image: Image.Image, box: Box, kind: ImageCorruption, *, seed: int = 0) -> Image.Image:
    """One of :data:`IMAGE_CORRUPTIONS` applied to the box region (``seed`` is used by ``"noise"``)."""
    if kind == "grey":
        return grey_box(image, box)
    if kind == "blur":
        return blur_box(image, box)
    if kind == "noise":
        return noise_box(image, box, seed=seed)
    raise ValueError(f"unknown image corruption {kind!r}; expected one of {IMAGE_CORRUPTIONS}")


def noise_image_embeddings(
    batch: LlavaBatch,
    *,
    scale: float = 3.0,
    std: float | None = None,
    seed: int = 0,
    positions: Sequence[torch.Tensor] | None = None,
) -> LlavaBatch:
    """The batch with Gaussian noise added to the spliced embeddings at the image positions.

    Args:
        batch: a prepared batch.
        scale: the noise std is ``scale`` times the std of the image features of the batch
            (over all image positions and dimensions), as causal tracing uses 3 x the
            std of the subject embeddings. Ignored when ``std`` is given.
        std: the noise std itself.
        seed: seed of the noise (a CPU generator: the same noise on every device).
        positions: per sample, the positions to noise (default: each layout's image positions).

    Raises:
        ValueError: no image position to noise, or a non-positive scale or std.
    """
    if positions is None:
        positions = [lay.image_positions for lay in batch.layout]
    if len(positions) != len(batch):
        raise ValueError(f"got {len(positions)} position lists for a batch of {len(batch)}")
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, pos in enumerate(positions):
        mask[i, torch.as_tensor(pos, dtype=torch.long)] = True
    if not bool(mask.any()):
        raise ValueError("noise_image_embeddings: the batch has no image positions to noise")
    embeds = batch.embeds
    selected = embeds[mask.to(embeds.device)].float()
    sigma = float(std) if std is not None else scale * float(selected.std())
    if not sigma > 0:
        raise ValueError(f"noise std must be positive, got {sigma}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(embeds.shape, generator=g, dtype=torch.float32) * sigma
    noise = noise * mask[..., None]
    return batch.with_embeds(embeds + noise.to(embeds.device, embeds.dtype))


def check_aligned(clean: LlavaBatch, corrupt: LlavaBatch) -> None:
    """Refuse a clean / corrupted pair whose positions do not mean the same thing.

    Raises:
        ValueError: the batches differ in shape, padding, image positions or query positions.
    """
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean batch {tuple(clean.shape)} and corrupted batch {tuple(corrupt.shape)} differ in shape")
    for i, (a, b) in enumerate(zip(clean.layout, corrupt.layout)):
        same = (
            a.n_pad == b.n_pad
            and a.query_position == b.query_position
            and torch.equal(a.image_positions, b.image_positions)
            and len(a.grids) == len(b.grids)
            and all(ga.shape == gb.shape for ga, gb in zip(a.grids, b.grids))
        )
        if not same:
            raise ValueError(
                f"sample {i}: the clean and corrupted prompts differ in token layout (padding, image positions, grid "
                "or query position); patching needs position-aligned runs (same prompt, same-size image)"
            )
