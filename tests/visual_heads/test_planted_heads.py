"""Planted visual heads: a tiny LLaVA whose chosen heads are built to look at one image patch.

The chosen heads get a constant query and a key that reads a direction of the residual stream
singling out a red patch, so from the answer query they put (nearly) all their attention on that
one image token. The scan must rank exactly those heads first.
"""

from __future__ import annotations

import torch
from conftest import tiny_pair
from PIL import Image

import vh_lens

PLANTED = [(0, 2), (1, 1)]


def _red_patch_image(seed: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 56 x 56 dark noise image with one 14 x 14 red patch on the patch grid."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(56, 56, 3, generator=g) * 60).to(torch.uint8)
    r, c = torch.randint(0, 4, (2,), generator=g).tolist()
    arr[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    return Image.fromarray(arr.numpy(), "RGB"), (c * 14, r * 14, (c + 1) * 14, (r + 1) * 14)


@torch.no_grad()
def _plant(model: vh_lens.LlavaLens, batch, boxes, layer: int, head: int, scale: float = 400.0) -> None:
    """Make ``head`` attend from every query to the red-patch token of the batch."""
    attn = model.lm.blocks[layer].attn
    _, cache = model.run_with_cache(batch, names_filter=f"blocks.{layer}.ln1.hook_normalized")
    x = cache[f"blocks.{layer}.ln1.hook_normalized"]  # [batch, pos, d_model]
    red, rest = [], []
    for i, lay in enumerate(batch.layout):
        target = lay.region_positions(boxes[i], min_overlap=0.99)
        assert target.numel() == 1
        red.append(x[i, target[0]])
        others = torch.cat([lay.text_positions, lay.image_positions[lay.image_positions != target[0]]])
        rest.append(x[i, others])
    v = torch.stack(red).mean(0) - torch.cat(rest).mean(0)
    v = v / v.norm()
    j = model.cfg.d_head // 2 - 1  # the slowest rotary pair: (almost) no rotation over a short prompt
    attn.W_Q[head].zero_()
    attn.b_Q[head].zero_()
    attn.b_Q[head, j] = scale
    attn.W_K[head].zero_()
    attn.b_K[head].zero_()
    attn.W_K[head, :, j] = v


def test_scan_ranks_planted_heads_first():
    hf, processor = tiny_pair("llava", "llama")
    model = vh_lens.load_llava(hf, processor=processor)  # a fresh copy: its weights are edited here
    images, boxes = zip(*(_red_patch_image(seed) for seed in range(6)))
    question = "what color is the square in this picture ?"
    batch = model.prepare(images=list(images), questions=[question] * len(images))
    for layer, head in PLANTED:
        _plant(model, batch, boxes, layer, head)
    samples = [vh_lens.data.Sample(img, question, box=box) for img, box in zip(images, boxes)]
    scores = vh_lens.scan_visual_heads(model, samples, batch_size=3, progress=False)
    assert sorted(scores.top_heads(len(PLANTED), metric="detection")) == sorted(PLANTED)
    assert sorted(scores.top_heads(len(PLANTED), metric="region_weight")) == sorted(PLANTED)
    for layer, head in PLANTED:
        assert scores.image_weight[layer, head] > 0.9
        assert scores.concentration[layer, head] > 0.8
    # batch size does not change the means
    again = vh_lens.scan_visual_heads(model, samples, batch_size=4, progress=False)
    for metric in ("image_weight", "region_weight", "text_weight", "concentration", "detection"):
        assert torch.allclose(getattr(scores, metric), getattr(again, metric), atol=1e-5)
    single = vh_lens.scan_visual_heads(model, samples, batch_size=1, progress=False)
    assert torch.allclose(scores.detection, single.detection, atol=1e-5)
