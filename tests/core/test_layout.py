"""Token layout: image positions, grids, and boxes mapped to image tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import striped_image, tiny_lens

from vh_lens.core.layout import TokenLayout


@pytest.mark.parametrize("kind", ["llava", "llava_next", "vip_llava"])
def test_image_positions_are_where_the_expanded_ids_hold_the_image_token(kind):
    model = tiny_lens(kind, "llama")
    images = [striped_image((70, 40)), None, striped_image((40, 100))]
    batch = model.prepare(images=images, questions=["how many dogs?", "is there a cat", "what color ?"])
    for i, lay in enumerate(batch.layout):
        expected = (batch.input_ids[i] == model.image_token_id).nonzero().flatten()
        assert torch.equal(lay.image_positions, expected)
        assert lay.query_position == batch.input_ids.shape[1] - 1
        assert batch.attention_mask[i, : lay.n_pad].sum() == 0 and batch.attention_mask[i, lay.n_pad :].all()
        # text + image positions partition the non-padding positions
        both = torch.cat([lay.text_positions, lay.image_positions]).sort().values
        assert torch.equal(both, torch.arange(lay.n_pad, lay.seq_len))
        grid_positions = (
            torch.cat([g.positions.flatten() for g in lay.grids] + [lay.newline_positions])
            if lay.grids
            else torch.zeros(0, dtype=torch.long)
        )
        assert torch.equal(grid_positions.sort().values, lay.image_positions)


def test_llava_grid_is_the_patch_grid_in_row_major_order():
    model = tiny_lens("llava", "llama")
    batch = model.prepare(images=[striped_image((56, 56))], questions=["how many?"])
    lay = batch.layout[0]
    grid = lay.grid("base")
    assert grid.shape == (4, 4)
    assert torch.equal(grid.positions.flatten(), lay.image_positions)


def test_whole_image_box_maps_to_all_image_tokens():
    for kind in ("llava", "llava_next"):
        model = tiny_lens(kind, "llama")
        img = striped_image((70, 40))
        lay = model.prepare(images=[img], questions=["how many?"]).layout[0]
        got = lay.region_positions((0, 0, 70, 40))
        expected = lay.image_positions[~torch.isin(lay.image_positions, lay.newline_positions)]
        assert torch.equal(got, expected), kind


def test_quadrant_box_maps_to_that_quadrants_patches():
    model = tiny_lens("llava", "llama")
    lay = model.prepare(images=[striped_image((56, 56))], questions=["how many?"]).layout[0]
    pos = lay.grid().positions  # 4 x 4
    assert torch.equal(lay.region_positions((0, 0, 28, 28)), pos[:2, :2].flatten().sort().values)
    assert torch.equal(lay.region_positions((28, 28, 56, 56)), pos[2:, 2:].flatten().sort().values)
    assert torch.equal(lay.region_positions((28, 0, 56, 28)), pos[:2, 2:].flatten().sort().values)
    # a small box inside one patch touches exactly that patch; min_overlap filters partial patches
    assert torch.equal(lay.region_positions((15, 15, 27, 27)), pos[1:2, 1:2].flatten())
    assert lay.region_positions((10, 10, 18, 18), min_overlap=0.0).numel() == 4
    assert lay.region_positions((10, 10, 18, 18), min_overlap=0.1).numel() == 0


def test_centre_crop_part_maps_to_nothing():
    model = tiny_lens("llava", "llama")
    # 112 x 56: resized to 112 x 56 (shortest edge 56), centre crop keeps x in [28, 84)
    lay = model.prepare(images=[striped_image((112, 56))], questions=["how many?"]).layout[0]
    assert lay.region_positions((0, 0, 27, 56)).numel() == 0
    assert lay.region_positions((85, 0, 112, 56)).numel() == 0
    pos = lay.grid().positions
    assert torch.equal(lay.region_positions((28, 0, 56, 56)), pos[:, :2].flatten().sort().values)


def test_llava_next_layout_follows_the_processor_expansion():
    model = tiny_lens("llava_next", "llama")
    for size in [(70, 40), (40, 100), (64, 64), (150, 60)]:
        lay = model.prepare(images=[striped_image(size)], questions=["how many?"]).layout[0]
        base, tiles = lay.grid("base"), lay.grid("tiles")
        rows, cols = tiles.shape
        assert base.shape == (4, 4)
        assert lay.n_image_tokens == 16 + rows * (cols + 1)
        # base first, then each tile row followed by its newline token
        assert torch.equal(base.positions.flatten(), lay.image_positions[:16])
        rest = lay.image_positions[16:].view(rows, cols + 1)
        assert torch.equal(rest[:, :cols], tiles.positions)
        assert torch.equal(rest[:, cols], lay.newline_positions)
        # a box in the left half of the image covers left base cells and no right base cells
        w, h = size
        region = lay.region_mask((0, 0, w / 2 - 1, h))
        assert region[base.positions[:, 0]].all() and not region[base.positions[:, -1]].any()


def test_box_outside_the_image_is_an_error():
    model = tiny_lens("llava", "llama")
    lay = model.prepare(images=[striped_image((56, 56))], questions=["how many?"]).layout[0]
    with pytest.raises(ValueError, match="outside the image"):
        lay.region_mask((0, 0, 57, 20))
    with pytest.raises(ValueError, match="empty"):
        lay.region_mask((10, 10, 10, 20))
    text_only = model.prepare(images=[None], questions=["how many?"]).layout[0]
    assert isinstance(text_only, TokenLayout)
    with pytest.raises(ValueError, match="no image"):
        text_only.region_mask((0, 0, 1, 1))
