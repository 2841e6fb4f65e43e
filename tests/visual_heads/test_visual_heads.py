"""Tests of vh_lens.visual_heads.scan: metrics by hand, hooks vs full cached patterns, streaming
statistics vs numpy, and the resumable scan on a fake model over a tiny HookedTransformer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities import get_act_name

from vh_lens.core.layout import ImageGrid, TokenLayout
from vh_lens.data.sample import Sample
from vh_lens.visual_heads.scan import (
    HEAD_METRICS,
    ScoreAccumulator,
    default_layer_fn,
    detection_score,
    head_metrics,
    scan_visual_heads,
    visual_head_hooks,
)
from vh_lens.visual_heads.scores import METRICS

# --------------------------------------------------------------------------------------------
# Helpers: a tiny model, synthetic layouts and a fake LlavaLens following the contract

IMAGE_SIZE = (20, 20)  # 2x2 grid of 10x10 pixel cells
N_IMG = 4


def _tiny_model(n_key_value_heads: int | None = None) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        n_ctx=64,
        d_vocab=50,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        n_key_value_heads=n_key_value_heads,
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny() -> HookedTransformer:
    return _tiny_model()


@pytest.fixture(scope="module")
def tiny_gqa() -> HookedTransformer:
    return _tiny_model(n_key_value_heads=2)


def _layout(seq_len: int, n_pad: int, has_image: bool = True, n_answer: int = 0) -> TokenLayout:
    """BOS at n_pad, then 4 image tokens (2x2 grid) when has_image, the rest text; the last
    ``n_answer`` positions are appended answer tokens."""
    positions = torch.arange(n_pad, seq_len - n_answer)
    if has_image:
        img = torch.arange(n_pad + 1, n_pad + 1 + N_IMG)
        cell_boxes = torch.tensor(
            [[[0, 0, 10, 10], [10, 0, 20, 10]], [[0, 10, 10, 20], [10, 10, 20, 20]]], dtype=torch.float32
        )
        grids = (ImageGrid("base", img.reshape(2, 2), cell_boxes),)
        size = IMAGE_SIZE
    else:
        img, grids, size = torch.zeros(0, dtype=torch.long), (), None
    text = positions[~torch.isin(positions, img)]
    return TokenLayout(
        seq_len=seq_len,
        n_pad=n_pad,
        image_positions=img,
        newline_positions=torch.zeros(0, dtype=torch.long),
        text_positions=text,
        query_position=seq_len - 1 - n_answer,
        grids=grids,
        image_size=size,
        answer_positions=torch.arange(seq_len - n_answer, seq_len),
    )


class FakeBatch:
    def __init__(self, tokens: torch.Tensor, attention_mask: torch.Tensor, layout: list[TokenLayout]) -> None:
        self.input_ids, self.attention_mask, self.layout = tokens, attention_mask, layout

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> FakeBatch:
        return FakeBatch(self.input_ids.to(device), self.attention_mask.to(device), self.layout)


class FakeLens:
    """The contract's prepare_samples / __call__ / run_with_hooks, plus append_tokens."""

    def __init__(self, lm: HookedTransformer, fail_after_batches: int | None = None) -> None:
        self.lm, self.cfg = lm, lm.cfg
        self.fail_after_batches, self.batches_run = fail_after_batches, 0

    def prepare_samples(self, samples: list[Sample]) -> FakeBatch:
        seqs = [list(s.metadata["tokens"]) for s in samples]
        seq_len = max(len(t) for t in seqs)
        tokens = torch.zeros(len(seqs), seq_len, dtype=torch.long)
        mask = torch.zeros(len(seqs), seq_len, dtype=torch.long)
        layouts = []
        for i, (t, s) in enumerate(zip(seqs, samples, strict=True)):
            tokens[i, seq_len - len(t) :] = torch.tensor(t)
            mask[i, seq_len - len(t) :] = 1
            layouts.append(_layout(seq_len, seq_len - len(t), has_image=s.metadata.get("image", True)))
        return FakeBatch(tokens, mask, layouts)

    def __call__(self, batch: FakeBatch) -> torch.Tensor:
        return self.lm(batch.input_ids, attention_mask=batch.attention_mask)

    def run_with_hooks(self, batch: FakeBatch, fwd_hooks: list) -> torch.Tensor:
        if self.fail_after_batches is not None and self.batches_run >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.batches_run += 1
        return self.lm.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=fwd_hooks)

    def append_tokens(self, batch: FakeBatch, tokens: torch.Tensor) -> FakeBatch:
        """Like LlavaLens.append_tokens for one token per sample ([batch, 1])."""
        assert tokens.shape == (len(batch), 1)
        ids = torch.cat([batch.input_ids, tokens.to(batch.input_ids)], dim=1)
        mask = torch.cat([batch.attention_mask, torch.ones_like(batch.attention_mask[:, :1])], dim=1)
        layouts = [_layout(lay.seq_len + 1, lay.n_pad, lay.has_image, n_answer=1) for lay in batch.layout]
        return FakeBatch(ids, mask, layouts)


def _samples(n: int, seed: int = 0, prefix: str = "q") -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    boxes = [(0.0, 0.0, 10.0, 20.0), None, (5.0, 5.0, 15.0, 15.0), (10.0, 10.0, 20.0, 20.0)]
    out = []
    for i in range(n):
        length = 8 + int(torch.randint(0, 6, (1,), generator=gen))
        tokens = torch.randint(1, 50, (length,), generator=gen).tolist()
        has_image = i % 5 != 4  # every fifth sample is text-only
        out.append(
            Sample(
                image=None,
                question=f"{prefix}{i}",
                box=boxes[i % 4] if has_image else None,
                metadata={"tokens": tokens, "image": has_image},
            )
        )
    return out


def _reference_metrics(row: np.ndarray, image: list[int], region: list[int], text: list[int]) -> dict[str, float]:
    """Independent per-head reference, written from the definitions with plain numpy."""
    w_img = float(sum(row[i] for i in image))
    out = {
        "image_weight": w_img,
        "region_weight": float(sum(row[i] for i in region)),
        "text_weight": float(sum(row[i] for i in text)),
    }
    if w_img > 0 and len(image) > 1:
        p = np.array([row[i] for i in image], dtype=np.float64) / w_img
        out["concentration"] = 1.0 - float(-(p * np.log(p + 1e-12)).sum()) / math.log(len(image))
    else:
        out["concentration"] = 0.0
    return out


def _reference_from_pattern(pattern: torch.Tensor, layouts, queries, boxes) -> dict[str, np.ndarray]:
    """[batch, head] reference metrics from a full cached pattern [batch, head, q, k]."""
    b, h = pattern.shape[:2]
    out = {m: np.zeros((b, h)) for m in HEAD_METRICS}
    for i, lay in enumerate(layouts):
        image = lay.image_positions.tolist()
        region = [] if boxes[i] is None else lay.region_positions(boxes[i]).tolist()
        text = lay.text_positions.tolist()
        for head in range(h):
            row = pattern[i, head, queries[i]].double().numpy()
            for m, v in _reference_metrics(row, image, region, text).items():
                out[m][i, head] = v
    return out


# --------------------------------------------------------------------------------------------
# head_metrics by hand


def _masks(n_key: int, image: list[int], region: list[int], text: list[int]):
    def mask(idx: list[int]) -> torch.Tensor:
        m = torch.zeros(1, n_key, dtype=torch.bool)
        m[0, idx] = True
        return m

    return mask(image), mask(region), mask(text)


def test_head_metrics_worked_example() -> None:
    # keys: [pad, BOS, img1, img2, img3, query]; image gets 0.4, 0.2, 0.1 -> W_img = 0.7,
    # p = (4/7, 2/7, 1/7), H(p) = ln 7 - (10/7) ln 2 = 0.955699891..., C = 1 - H / ln 3.
    rows = torch.tensor([[[0.0, 0.1, 0.4, 0.2, 0.1, 0.2]]])
    image, region, text = _masks(6, [2, 3, 4], [2, 3], [1, 5])
    m = head_metrics(rows, image, region, text)
    assert set(m) == set(HEAD_METRICS)
    assert all(v.shape == (1, 1) for v in m.values())
    assert float(m["image_weight"]) == pytest.approx(0.7, abs=1e-7)
    assert float(m["region_weight"]) == pytest.approx(0.6, abs=1e-7)
    assert float(m["text_weight"]) == pytest.approx(0.3, abs=1e-7)
    hand = 1.0 - (math.log(7) - 10 / 7 * math.log(2)) / math.log(3)
    assert hand == pytest.approx(0.130084470, abs=1e-9)
    assert float(m["concentration"]) == pytest.approx(hand, abs=1e-7)


def test_head_metrics_one_hot_and_uniform() -> None:
    # head 0: one-hot on an image token; head 1: uniform over the 4 image tokens;
    # head 2: everything on text (W_img = 0 -> C = 0).
    rows = torch.tensor(
        [
            [
                [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, 0.2, 0.2, 0.2, 0.2, 0.2],
                [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            ]
        ]
    )
    image, region, text = _masks(6, [1, 2, 3, 4], [], [0, 5])
    m = head_metrics(rows, image, region, text)
    assert m["concentration"][0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    assert m["image_weight"][0].tolist() == pytest.approx([1.0, 0.8, 0.0], abs=1e-7)
    assert m["text_weight"][0].tolist() == pytest.approx([0.0, 0.2, 1.0], abs=1e-7)
    assert m["region_weight"][0].tolist() == [0.0, 0.0, 0.0]  # no box


def test_head_metrics_single_image_token_and_no_image() -> None:
    rows = torch.tensor([[[0.5, 0.5, 0.0]], [[0.3, 0.7, 0.0]]])
    image = torch.tensor([[False, True, False], [False, False, False]])
    text = torch.tensor([[True, False, False], [True, True, False]])
    m = head_metrics(rows, image, torch.zeros_like(image), text)
    assert m["concentration"].flatten().tolist() == [0.0, 0.0]  # N = 1, and N = 0
    assert m["image_weight"].flatten().tolist() == pytest.approx([0.5, 0.0])
    assert m["text_weight"].flatten().tolist() == pytest.approx([0.5, 1.0])


def test_head_metrics_region_outside_image_is_ignored_and_padding_excluded() -> None:
    rows = torch.tensor([[[0.25, 0.25, 0.5]]])
    image = torch.tensor([[False, True, True]])
    region = torch.tensor([[True, True, False]])  # position 0 is not an image token
    text = torch.tensor([[False, False, False]])  # position 0 is padding
    m = head_metrics(rows, image, region, text)
    assert float(m["region_weight"]) == pytest.approx(0.25)
    assert float(m["text_weight"]) == 0.0


def test_head_metrics_rejects_bad_shapes() -> None:
    rows = torch.rand(2, 3, 5)
    good = torch.zeros(2, 5, dtype=torch.bool)
    # TypeError: what a run-time shape checker (jaxtyping + beartype) raises first, if enabled
    with pytest.raises((ValueError, TypeError), match="image_mask|head_metrics"):
        head_metrics(rows, torch.zeros(2, 4, dtype=torch.bool), good, good)
    with pytest.raises((ValueError, TypeError), match="bool|head_metrics"):
        head_metrics(rows, good, good.float(), good)
    with pytest.raises((ValueError, TypeError), match="rows|head_metrics"):
        head_metrics(rows[0], good, good, good)


def test_detection_score_and_default_layer_fn() -> None:
    assert default_layer_fn(0) == pytest.approx(1.0)
    assert default_layer_fn(3) == pytest.approx(1.0 / math.log(3 + math.e))
    layers = torch.arange(4)
    f = default_layer_fn(layers)
    assert torch.all(f[1:] < f[:-1])  # decays with depth
    w, c = torch.tensor([0.5, 0.2]), torch.tensor([0.4, 1.0])
    assert detection_score(w, c, 0).tolist() == pytest.approx([0.2, 0.2])
    assert detection_score(w, c, 2).tolist() == pytest.approx([0.2 / math.log(2 + math.e), 0.2 / math.log(2 + math.e)])
    assert detection_score(w, c, 5, layer_fn=lambda l: 2.0).tolist() == pytest.approx([0.4, 0.4])
    grid = detection_score(torch.ones(3, 2), torch.ones(3, 2), torch.arange(3)[:, None])
    assert grid[:, 0].tolist() == pytest.approx([1.0, 1 / math.log(1 + math.e), 1 / math.log(2 + math.e)])
    assert "unpublished" in detection_score.__doc__ and "ours" in default_layer_fn.__doc__


# --------------------------------------------------------------------------------------------
# Hooks vs full patterns from run_with_cache


def _batch(seed: int = 1):
    seq_len, pads = 12, [0, 2, 4]
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 50, (3, seq_len), generator=gen)
    mask = torch.ones(3, seq_len, dtype=torch.long)
    for i, p in enumerate(pads):
        mask[i, :p] = 0
    layouts = [_layout(seq_len, p) for p in pads]
    boxes = [(0.0, 0.0, 10.0, 20.0), None, (5.0, 5.0, 15.0, 15.0)]
    return tokens, mask, layouts, boxes


@pytest.mark.parametrize("model_name", ["tiny", "tiny_gqa"])
def test_hooks_match_metrics_from_cached_patterns(model_name: str, request: pytest.FixtureRequest) -> None:
    model: HookedTransformer = request.getfixturevalue(model_name)
    tokens, mask, layouts, boxes = _batch()
    queries = [11, 9, 10]  # not always the last position
    got: dict[int, dict[str, torch.Tensor]] = {}
    hooks = visual_head_hooks(
        layouts, lambda layer, m: got.__setitem__(layer, m), n_layers=2, query_positions=queries, boxes=boxes
    )
    assert [name for name, _ in hooks] == [get_act_name("pattern", 0), get_act_name("pattern", 1)]
    logits_hooked = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    torch.testing.assert_close(logits_hooked, logits, rtol=0, atol=0)  # the pattern is unchanged
    assert sorted(got) == [0, 1]
    for layer in range(2):
        pattern = cache[get_act_name("pattern", layer)]
        assert pattern.shape == (3, 4, 12, 12)  # per query head also with GQA
        ref = _reference_from_pattern(pattern, layouts, queries, boxes)
        for m in HEAD_METRICS:
            assert got[layer][m].shape == (3, 4)
            np.testing.assert_allclose(got[layer][m].numpy(), ref[m], atol=1e-6, rtol=0)
    # sample 1 has no box; sample 2's box touches all four cells
    assert torch.all(got[0]["region_weight"][1] == 0)
    torch.testing.assert_close(got[0]["region_weight"][2], got[0]["image_weight"][2])


def test_gqa_pattern_is_per_query_head(tiny_gqa: HookedTransformer) -> None:
    assert tiny_gqa.cfg.n_key_value_heads == 2 and tiny_gqa.cfg.n_heads == 4
    _, cache = tiny_gqa.run_with_cache(torch.randint(0, 50, (1, 6)))
    assert cache[get_act_name("pattern", 0)].shape == (1, 4, 6, 6)


def test_hooks_default_query_and_sink_object(tiny: HookedTransformer) -> None:
    tokens, mask, layouts, boxes = _batch(seed=2)
    acc = ScoreAccumulator(2, 4)
    tiny.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=visual_head_hooks(layouts, acc, n_layers=2, boxes=boxes))
    assert acc.count == 3
    _, cache = tiny.run_with_cache(tokens, attention_mask=mask)
    ref = _reference_from_pattern(cache[get_act_name("pattern", 1)], layouts, [11, 11, 11], boxes)
    scores = acc.result()
    np.testing.assert_allclose(scores.mean["concentration"][1].numpy(), ref["concentration"].mean(0), atol=1e-6)


def test_hooks_validate_inputs() -> None:
    layouts = [_layout(12, 0), _layout(12, 4)]
    with pytest.raises(ValueError, match="padding"):
        visual_head_hooks(layouts, lambda *a: None, n_layers=2, query_positions=[11, 2])
    with pytest.raises(ValueError, match="seq_len"):
        visual_head_hooks([_layout(12, 0), _layout(10, 0)], lambda *a: None, n_layers=2)
    with pytest.raises(ValueError, match="boxes"):
        visual_head_hooks(layouts, lambda *a: None, n_layers=2, boxes=[None])


# --------------------------------------------------------------------------------------------
# Streaming statistics


def _random_metrics(n: int, n_layers: int, n_heads: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.rand(n, n_layers, n_heads, generator=gen, dtype=torch.float64) for m in HEAD_METRICS}


def _feed(acc: ScoreAccumulator, data: dict[str, torch.Tensor], splits: list[int]) -> None:
    start = 0
    for size in splits:
        for layer in range(acc.n_layers):
            acc.add(layer, {m: v[start : start + size, layer] for m, v in data.items()})
        start += size


def test_accumulator_matches_numpy_with_uneven_batches() -> None:
    n_layers, n_heads, splits = 3, 4, [1, 5, 2, 9]
    data = _random_metrics(sum(splits), n_layers, n_heads, seed=0)
    acc = ScoreAccumulator(n_layers, n_heads, keep_per_sample=True)
    _feed(acc, data, splits)
    scores = acc.result({"note": "x"})
    assert scores.count == 17 and scores.metadata["note"] == "x"
    f = np.array([1 / math.log(layer + math.e) for layer in range(n_layers)])[None, :, None]
    expected = {m: data[m].numpy() for m in HEAD_METRICS}
    expected["detection"] = f * expected["image_weight"] * expected["concentration"]
    for m in METRICS:
        np.testing.assert_allclose(scores.mean[m].numpy(), expected[m].mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(scores.variance[m].numpy(), expected[m].var(0), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(scores.per_sample[m].numpy(), expected[m], rtol=0, atol=1e-15)


def test_accumulator_region_detection_merge_and_state() -> None:
    data = _random_metrics(10, 2, 3, seed=1)
    whole = ScoreAccumulator(2, 3, detection_weight="region")
    _feed(whole, data, [10])
    left, right = ScoreAccumulator(2, 3, detection_weight="region"), ScoreAccumulator(2, 3, detection_weight="region")
    _feed(left, {m: v[:4] for m, v in data.items()}, [3, 1])
    _feed(right, {m: v[4:] for m, v in data.items()}, [6])
    left.merge(right)
    a, b = whole.result(), left.result()
    for m in METRICS:
        torch.testing.assert_close(a.mean[m], b.mean[m], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.variance[m], b.variance[m], rtol=1e-10, atol=1e-14)
    expected = (data["region_weight"] * data["concentration"]).mean(0)[1] / math.log(1 + math.e)
    torch.testing.assert_close(a.detection[1], expected, rtol=1e-12, atol=1e-14)
    restored = ScoreAccumulator(2, 3, detection_weight="region")
    restored.load_state_dict(left.state_dict())
    torch.testing.assert_close(restored.result().variance["detection"], b.variance["detection"], rtol=0, atol=0)


def test_accumulator_memory_is_constant_without_per_sample() -> None:
    acc = ScoreAccumulator(2, 3)
    _feed(acc, _random_metrics(50, 2, 3, seed=2), [10] * 5)
    assert all(len(chunks) == 0 for chunks in acc._chunks)
    assert acc.result().per_sample is None
    assert set(acc.state_dict()) == {"count"} | {f"{s}.{m}" for s in ("mean", "m2") for m in METRICS}


def test_accumulator_rejects_incomplete_batches_and_bad_input() -> None:
    acc = ScoreAccumulator(2, 3)
    acc.add(0, {m: torch.rand(2, 3) for m in HEAD_METRICS})
    with pytest.raises(RuntimeError, match="incomplete"):
        acc.result()
    with pytest.raises(ValueError, match="layer"):
        acc.add(2, {m: torch.rand(2, 3) for m in HEAD_METRICS})
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        acc.add(1, {m: torch.rand(2, 4) for m in HEAD_METRICS})
    with pytest.raises(ValueError, match="lack"):
        acc.add(1, {"image_weight": torch.rand(2, 3)})
    with pytest.raises(ValueError, match="no samples"):
        ScoreAccumulator(2, 3).result()


# --------------------------------------------------------------------------------------------
# The scan


def _per_batch_reference(
    model: FakeLens, samples: list[Sample], batch_size: int, query: str, answer_tokens: list[int] | None = None
) -> dict[str, np.ndarray]:
    """Reference per-sample metrics [n, layer, head] from full cached patterns."""
    rows: dict[str, list[np.ndarray]] = {m: [] for m in HEAD_METRICS}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = model.prepare_samples(chunk)
        queries = [lay.query_position for lay in batch.layout]
        if query == "answer_token":
            if answer_tokens is None:
                logits = model(batch)
                tokens = logits[torch.arange(len(chunk)), queries].argmax(-1)
            else:
                tokens = torch.tensor(answer_tokens[start : start + batch_size])
            batch = model.append_tokens(batch, tokens[:, None])
            queries = [lay.seq_len - 1 for lay in batch.layout]
        _, cache = model.lm.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
        per_layer = [
            _reference_from_pattern(
                cache[get_act_name("pattern", layer)], batch.layout, queries, [s.box for s in chunk]
            )
            for layer in range(model.cfg.n_layers)
        ]
        for m in HEAD_METRICS:
            rows[m].append(np.stack([p[m] for p in per_layer], axis=1))
    return {m: np.concatenate(v) for m, v in rows.items()}


@pytest.mark.parametrize(("query", "gold"), [("last_prompt", False), ("answer_token", False), ("answer_token", True)])
def test_scan_matches_reference(tiny: HookedTransformer, query: str, gold: bool) -> None:
    samples = _samples(7)
    model = FakeLens(tiny)
    tokens = [(3 * i) % 50 for i in range(7)] if gold else None
    scores = scan_visual_heads(
        model, samples, batch_size=3, query=query, answer_tokens=tokens, keep_per_sample=True, progress=gold
    )
    ref = _per_batch_reference(model, samples, 3, query, tokens)
    assert scores.count == 7 and scores.metadata["query"] == query
    for m in HEAD_METRICS:
        np.testing.assert_allclose(scores.per_sample[m].numpy(), ref[m], atol=1e-6, rtol=0)
        np.testing.assert_allclose(scores.mean[m].numpy(), ref[m].mean(0), atol=1e-6, rtol=0)
    # text-only samples (index 4) have no image weight at all
    assert float(scores.per_sample["image_weight"][4].abs().max()) == 0.0
    if query == "answer_token":
        # the appended token attends to itself, which is neither image nor text
        total = scores.per_sample["image_weight"] + scores.per_sample["text_weight"]
        assert float(total.max()) < 1.0


def test_scan_checkpoint_resume_equals_uninterrupted(tiny: HookedTransformer, tmp_path) -> None:
    samples = _samples(10, seed=3)
    kwargs = {"batch_size": 3, "checkpoint_every": 4, "keep_per_sample": True, "progress": False}
    full = scan_visual_heads(FakeLens(tiny), samples, **kwargs)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        scan_visual_heads(FakeLens(tiny, fail_after_batches=2), iter(samples), checkpoint_dir=ckpt, **kwargs)
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["count"] == 6  # written after 6 samples (crossing 4); 9 never reached
    assert [p.name for p in ckpt.iterdir() if p.suffix == ".safetensors"] == [info["state_file"]]
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]

    resumed_model = FakeLens(tiny)
    resumed = scan_visual_heads(resumed_model, samples, checkpoint_dir=ckpt, **kwargs)
    assert resumed_model.batches_run == 2  # samples 6-8 and 9 only
    assert resumed.count == full.count == 10
    for m in METRICS:
        torch.testing.assert_close(resumed.mean[m], full.mean[m], rtol=0, atol=1e-15)
        torch.testing.assert_close(resumed.variance[m], full.variance[m], rtol=0, atol=1e-15)
        torch.testing.assert_close(resumed.per_sample[m], full.per_sample[m], rtol=0, atol=0)
    assert json.loads((ckpt / "checkpoint.json").read_text())["count"] == 10

    # a finished checkpoint answers at once; other settings or samples are refused
    again = FakeLens(tiny)
    finished = scan_visual_heads(again, samples, checkpoint_dir=ckpt, **kwargs)
    torch.testing.assert_close(finished.detection, full.detection, rtol=0, atol=0)
    assert again.batches_run == 0
    with pytest.raises(ValueError, match="other settings"):
        scan_visual_heads(FakeLens(tiny), samples, checkpoint_dir=ckpt, **(kwargs | {"keep_per_sample": False}))
    with pytest.raises(ValueError, match="other samples"):
        scan_visual_heads(FakeLens(tiny), _samples(10, seed=3, prefix="other"), checkpoint_dir=ckpt, **kwargs)


def test_scan_validates_arguments(tiny: HookedTransformer) -> None:
    model, samples = FakeLens(tiny), _samples(2)
    with pytest.raises((ValueError, TypeError), match="query|scan_visual_heads"):  # TypeError: run-time checker
        scan_visual_heads(model, samples, query="first", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_tokens"):
        scan_visual_heads(model, samples, answer_tokens=[1, 2], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        scan_visual_heads(model, samples, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="answer tokens"):
        scan_visual_heads(model, samples, query="answer_token", answer_tokens=[1], progress=False)


# --------------------------------------------------------------------------------------------
# End to end on a tiny real LLaVA (LlavaLens) against Hugging Face eager attention


@pytest.mark.parametrize("query", ["last_prompt", "answer_token"])
def test_scan_on_tiny_llava_matches_hugging_face(query: str) -> None:
    from conftest import striped_image, tiny_lens, tiny_pair

    hf, processor = tiny_pair("llava", "llama")
    model = tiny_lens("llava", "llama")
    images = [striped_image((70, 40), 0), striped_image((50, 90), 1), striped_image((64, 64), 2)]
    samples = [
        Sample(image=images[0], question="how many dogs?", box=(0.0, 0.0, 30.0, 20.0)),
        Sample(image=images[1], question="what color is the cat in this picture ?", box=(10.0, 40.0, 50.0, 90.0)),
        Sample(image=None, question="is there a red circle"),
        Sample(image=images[2], question="is there a red circle in the image"),
    ]
    gold = [5, 7, 9, 11] if query == "answer_token" else None
    scores = scan_visual_heads(
        model, samples, batch_size=3, query=query, answer_tokens=gold, keep_per_sample=True, progress=False
    )
    batch = model.prepare_samples(samples)
    for i, (sample, lay) in enumerate(zip(samples, batch.layout, strict=True)):
        image = None if sample.image is None else [sample.image]
        enc = processor(images=image, text=[batch.prompts[i]], return_tensors="pt")
        if gold is not None:
            enc["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([[gold[i]]])], dim=1)
            enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        with torch.no_grad():
            attentions = hf(**enc, output_attentions=True).attentions
        shift = lay.n_pad  # HF runs the sample unpadded
        image_pos = (lay.image_positions - shift).tolist()
        region = [] if sample.box is None else (lay.region_positions(sample.box) - shift).tolist()
        text = (lay.text_positions - shift).tolist()
        assert (len(region) > 0) == (sample.box is not None)
        for layer in range(model.cfg.n_layers):
            rows = attentions[layer][0, :, -1].double().numpy()  # last prompt token, or the appended one
            for head in range(model.cfg.n_heads):
                ref = _reference_metrics(rows[head], image_pos, region, text)
                for m, v in ref.items():
                    assert float(scores.per_sample[m][i, layer, head]) == pytest.approx(v, abs=1e-5), (
                        m,
                        i,
                        layer,
                        head,
                    )
