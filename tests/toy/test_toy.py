"""The toy LLaVA: its processor, its config, and the shipped trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vh_lens.data.sample import Sample
from vh_lens.data.shapes import COUNT_KINDS, shapes
from vh_lens.toy import (
    CHAT_TEMPLATE,
    TOY_PATH,
    build_toy_processor,
    format_question,
    load_toy_hf,
    toy_config,
    toy_inputs,
    toy_vocabulary,
)

HELD_OUT_SEED = 4242  # used neither by training (seed 1000) nor by its evaluation (seed 777)


@pytest.fixture(scope="module")
def processor():
    return build_toy_processor()


@pytest.fixture(scope="module")
def shipped():
    return load_toy_hf()


def _user_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def test_chat_template_is_llava_15(processor):
    text = processor.apply_chat_template(_user_turn("How many of these are there?"), add_generation_prompt=True)
    assert text == "USER: <image>\nHow many of these are there? ASSISTANT:"
    assert processor.chat_template == CHAT_TEMPLATE


def test_image_token_count_is_the_patch_grid(processor):
    s = shapes(2, seed=0)
    batch = toy_inputs(processor, s)
    grid = (processor.image_processor.crop_size["height"] // processor.patch_size) ** 2
    assert grid == 64
    assert ((batch["input_ids"] == processor.image_token_id).sum(1) == grid).all()
    assert batch["pixel_values"].shape == (2, 3, 96, 96)


def test_pixel_values_are_clip_normalised_pixels(processor):
    """The PIL backend leaves a 96 px image unresized: pixel_values = (x / 255 - mean) / std."""
    s = shapes(1, seed=0)[0]
    got = toy_inputs(processor, [s])["pixel_values"][0]
    x = torch.from_numpy(np.array(s.image)).permute(2, 0, 1).double() / 255
    mean = torch.tensor(processor.image_processor.image_mean, dtype=torch.double)[:, None, None]
    std = torch.tensor(processor.image_processor.image_std, dtype=torch.double)[:, None, None]
    torch.testing.assert_close(got.double(), (x - mean) / std, atol=1e-5, rtol=0)


def test_vocabulary_covers_every_prompt_and_answer(processor):
    tok = processor.tokenizer
    assert len(set(toy_vocabulary())) == len(toy_vocabulary())
    batch = toy_inputs(processor, shapes(60, seed=1), answers=True)
    assert not (batch["input_ids"] == tok.unk_token_id).any()


def test_labels_mark_only_the_answer_and_eos(processor):
    s = shapes(6, seed=2)
    batch = toy_inputs(processor, s, answers=True)
    tok = processor.tokenizer
    for row, sample in enumerate(s):
        labelled = (batch["labels"][row] != -100).nonzero().flatten().tolist()
        n = batch["input_ids"].shape[1]
        assert labelled == [n - 2, n - 1]
        assert tok.convert_ids_to_tokens(batch["labels"][row, -2:].tolist()) == [sample.answer, tok.eos_token]


def test_format_question_lists_choices():
    s = Sample(None, "What shape is this?", "B", choices=("circle", "square"))
    assert format_question(s).split("\n")[:3] == ["What shape is this?", "A. circle", "B. square"]
    assert format_question(Sample(None, "How many of these are there?", "3")) == "How many of these are there?"


def test_processor_round_trip(processor, tmp_path):
    from transformers import AutoProcessor, CLIPImageProcessorPil

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    assert isinstance(loaded.image_processor, CLIPImageProcessorPil)
    assert loaded.chat_template == processor.chat_template
    assert loaded.image_token_id == processor.image_token_id
    s = shapes(4, seed=5)
    a, b = toy_inputs(processor, s), toy_inputs(loaded, s)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_config_matches_processor_and_runs(processor):
    from transformers import LlavaForConditionalGeneration

    cfg = toy_config(processor, n_layers=2, d_model=32, n_heads=4, d_mlp=64, vision_layers=1, vision_hidden=16)
    assert cfg.image_token_id == processor.image_token_id
    assert cfg.text_config.vocab_size == len(processor.tokenizer)
    assert cfg.vision_config.image_size // cfg.vision_config.patch_size == 8
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    batch = toy_inputs(processor, shapes(2, seed=0))
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, len(processor.tokenizer))
    with pytest.raises(ValueError):
        toy_config(processor, d_model=30, n_heads=4)


# ------------------------------------------------------------------ the shipped checkpoint


def test_checkpoint_is_small_and_complete():
    files = {p.name for p in TOY_PATH.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_log.json"} <= files
    assert "chat_template.jinja" in files or "chat_template.json" in files or "processor_config.json" in files
    size = sum(p.stat().st_size for p in TOY_PATH.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


def test_checkpoint_loads_with_plain_transformers(shipped):
    from transformers import LlavaForConditionalGeneration

    model, processor = shipped
    assert isinstance(model, LlavaForConditionalGeneration)
    assert next(model.parameters()).dtype == torch.float32
    assert processor.chat_template == CHAT_TEMPLATE
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.num_hidden_layers >= 4


def _first_token_accuracy(model, processor, samples) -> float:
    with torch.no_grad():
        logits = model(**toy_inputs(processor, samples), logits_to_keep=1).logits[:, -1]
    preds = processor.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    return sum(p == s.answer for p, s in zip(preds, samples, strict=True)) / len(samples)


# The targets, on samples the training never saw (another seed than the run's held-out set):
# >= 90% on counting (all three kinds, and each kind family alone) and on yes/no. Chance: 1/7 and 1/2.
@pytest.mark.parametrize(
    "kinds",
    [COUNT_KINDS, ("count_super", "count_general"), ("count_object",), ("exists",)],
    ids=["counting", "pointer_counting", "object_counting", "yes_no"],
)
def test_checkpoint_accuracy_on_fresh_samples(shipped, kinds):
    model, processor = shipped
    samples = shapes(128, seed=HELD_OUT_SEED, kinds=kinds)
    assert _first_token_accuracy(model, processor, samples) >= 0.9


def test_train_log_records_the_run():
    log = json.loads((TOY_PATH / "train_log.json").read_text())
    assert log["command"].startswith("python scripts/train_toy.py")
    assert log["args"]["seed"] != log["held_out"]["seed"]
    for kind in (*COUNT_KINDS, "exists", "counting"):
        assert 0.0 <= log["final_accuracy"][kind] <= 1.0
    assert log["final_accuracy"]["counting"] >= 0.9  # the counting target (all three kinds)
    assert log["final_accuracy"]["exists"] >= 0.9  # and its yes/no target
    assert log["vision_pretrain_seconds"] + log["total_seconds"] < 30 * 60
