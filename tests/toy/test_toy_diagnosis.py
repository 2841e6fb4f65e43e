"""scripts/toy_object_diagnosis.py: its helpers against a hand reading and Hugging Face's rotary embedding."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

from vh_lens.data.shapes import COLORS, SHAPE_KINDS, shapes


@pytest.fixture(scope="module")
def diag():
    return load_script("toy_object_diagnosis")


def test_asked_class_reads_the_question(diag):
    for s in shapes(12, seed=3, kinds=("count_object",)):
        color, kind = diag.asked_class(s)
        assert f"{list(COLORS)[color]} {SHAPE_KINDS[kind]}s" in s.question


def test_rope_matches_hugging_face_llama(diag):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=1000.0)
    x = torch.randn(1, 1, 7, 16)
    pos = torch.tensor([[0, 3, 5, 9, 20, 40, 77]])
    cos, sin = LlamaRotaryEmbedding(cfg)(x, pos)
    want, _ = apply_rotary_pos_emb(x, x, cos, sin)
    got = diag.rope(x[0, 0], pos[0], 1000.0)
    torch.testing.assert_close(got, want[0, 0], atol=1e-5, rtol=1e-5)


def test_reader_without_selection_ignores_where_the_patches_are(diag):
    torch.manual_seed(0)
    reader = diag.Reader(8, select=False, base=10000.0)
    x = torch.randn(2, 5, 8)
    c, k = torch.tensor([0, 1]), torch.tensor([2, 0])
    torch.testing.assert_close(reader(x, c, k), reader(x[:, torch.randperm(5)], c, k))
    selecting = diag.Reader(8, select=True, base=10000.0)
    assert not torch.allclose(selecting(x, c, k), selecting(x.flip(1), c, k))
