"""scripts/train_toy.py on a very small configuration: it runs, saves a loadable checkpoint, is deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

SMALL = [
    "--steps", "3", "--batch-size", "6", "--eval-n", "8", "--eval-every", "2", "--log-every", "1",
    "--n-layers", "2", "--d-model", "32", "--n-heads", "4", "--d-mlp", "64",
    "--vision-layers", "1", "--vision-hidden", "16", "--vision-pretrain-steps", "3", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_toy():
    return load_script("train_toy")


def test_class_counts_by_hand(train_toy):
    cls = torch.tensor([[0, 3, 3, 5, 0, 3], [1, 0, 0, 0, 0, 1]])
    assert train_toy.class_counts(cls).tolist() == [[0, 3, 3, 1, 0, 3], [2, 0, 0, 0, 0, 2]]


def test_training_runs_saves_and_is_deterministic(train_toy, tmp_path):
    import vh_lens

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        train_toy.main(["--out", str(out), *SMALL])
        runs.append(out)
    a, b = (load_file(out / "model.safetensors") for out in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((runs[0] / "train_log.json").read_text())
    assert log["steps_done"] == 3 and log["command"].startswith("python scripts/train_toy.py")
    assert [h["step"] for h in log["history"]] == [2, 3]
    assert set(log["final_accuracy"]) >= {"counting", "exists"}
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".*old"))
    assert runs[0].stat().st_mode & 0o777 == 0o755
    model = vh_lens.load_llava(runs[0])
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    # a second run into the same folder replaces it whole
    train_toy.main(["--out", str(runs[0]), *SMALL, "--seed", "5"])
    c = load_file(runs[0] / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((runs[0] / "train_log.json").read_text())["args"]["seed"] == 5


def test_answer_loss_by_hand(train_toy):
    """Answer loss on the last two tokens; the question loss on the text after the image, per-sample mean."""
    torch.manual_seed(0)
    vocab, image = 7, 5
    ids = torch.tensor([[0, 1, 5, 5, 2, 3, 4, 6], [1, 5, 5, 5, 3, 2, 4, 6]])  # row 0 left padded
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
    logits = torch.randn(2, 8, vocab)

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask, pixel_values, logits_to_keep):
            out = logits if logits_to_keep == 0 else logits[:, -logits_to_keep:]
            return type("Out", (), {"logits": out})()

    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.zeros(2, 3, 4, 4)}
    logp = logits.log_softmax(-1)
    ce = lambda b, t: -float(logp[b, t - 1, ids[b, t]])
    answer = sum(ce(b, t) for b in range(2) for t in (6, 7))
    assert float(train_toy.answer_loss(Fixed(), batch)) == pytest.approx(answer, rel=1e-6)
    # text after the last image token, before the answer: positions 4, 5 in both rows
    question = sum((ce(b, 4) + ce(b, 5)) / 2 for b in range(2))
    got = train_toy.answer_loss(Fixed(), batch, image_token_id=image, question_weight=0.5)
    assert float(got) == pytest.approx(answer + 0.5 * question, rel=1e-6)


def test_conversation_training_and_word_init_run(train_toy, tmp_path):
    train_toy.main(["--out", str(tmp_path / "q"), *SMALL, "--turns", "2", "--word-init", "--vision-objective", "probe"])
    log = json.loads((tmp_path / "q" / "train_log.json").read_text())
    assert log["args"]["turns"] == 2 and log["args"]["word_init"] and log["steps_done"] == 3


def test_word_init_puts_class_words_in_the_image_token_space(train_toy):
    """After init, "red" + "circles" is closer to the mean image token of red circles than other pairs are."""
    from transformers import LlavaForConditionalGeneration

    from vh_lens.data.shapes import COLORS, SHAPE_KINDS, shapes
    from vh_lens.toy import build_toy_processor, toy_config

    args = train_toy.parse_args(["--out", "unused", *SMALL, "--vision-pretrain-steps", "40", "--batch-size", "16"])
    torch.manual_seed(0)
    processor = build_toy_processor()
    model = LlavaForConditionalGeneration(toy_config(processor, n_layers=1, d_model=32, n_heads=4, d_mlp=64,
                                                      vision_layers=1, vision_hidden=16))  # fmt: skip
    fast = train_toy.FastInputs(processor, shapes(4, seed=1))
    train_toy.pretrain_vision(model, fast, args)
    train_toy.init_word_embeddings(model, fast, args, n_images=64)
    samples = shapes(64, seed=9)
    with torch.no_grad():
        feats = torch.stack(list(model.model.get_image_features(pixel_values=fast.pixels(samples)).pooler_output))
    cls, _ = train_toy.patch_targets(samples, tuple(COLORS), SHAPE_KINDS)
    empty = feats[cls == 0].mean(0)
    emb = model.model.language_model.embed_tokens.weight.detach()
    tok = processor.tokenizer
    hits = 0
    for c, color in enumerate(COLORS):
        for k, kind in enumerate(SHAPE_KINDS):
            mean = feats[cls == 1 + c * len(SHAPE_KINDS) + k].mean(0) - empty
            words = {(c2, k2): emb[tok.convert_tokens_to_ids(c2)] + emb[tok.convert_tokens_to_ids(k2 + "s")]
                     for c2 in COLORS for k2 in SHAPE_KINDS}  # fmt: skip
            best = max(words, key=lambda key: float(torch.cosine_similarity(words[key], mean, dim=0)))
            hits += best == (color, kind)
    assert hits >= 6  # of 12 classes; chance would be 1 (a barely trained tower: 40 steps)


def test_vision_from_copies_the_vision_stage_of_a_checkpoint(train_toy, tmp_path):
    train_toy.main(["--out", str(tmp_path / "donor"), *SMALL])
    train_toy.main(["--out", str(tmp_path / "lm"), *SMALL, "--seed", "3", "--vision-from", str(tmp_path / "donor")])
    donor, lm = load_file(tmp_path / "donor" / "model.safetensors"), load_file(tmp_path / "lm" / "model.safetensors")
    tower = [k for k in donor if "vision_tower" in k]
    assert tower and all(torch.equal(donor[k], lm[k]) for k in tower)  # frozen in stage 2: copied as is
    train_toy.main(["--out", str(tmp_path / "own"), *SMALL, "--seed", "3"])  # same seed, own vision stage
    own = load_file(tmp_path / "own" / "model.safetensors")
    assert not all(torch.equal(own[k], lm[k]) for k in tower)
    log = json.loads((tmp_path / "lm" / "train_log.json").read_text())
    assert log["args"]["vision_from"] == str(tmp_path / "donor")
    assert donor.keys() == lm.keys()


def test_first_kinds_lead_then_the_main_cycle(train_toy):
    args = train_toy.parse_args(
        ["--kinds", "exists,count_super", "--first-kinds", "count_object", "--first-steps", "3"]
    )
    assert [train_toy.kinds_at(s, args) for s in (0, 2, 3, 9)] == [("count_object",)] * 2 + [
        ("exists", "count_super")
    ] * 2
    plain = train_toy.parse_args(["--kinds", "exists", "--first-steps", "0"])
    assert train_toy.kinds_at(0, plain) == ("exists",)
