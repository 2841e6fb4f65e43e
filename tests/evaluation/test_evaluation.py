"""Tests of vh_lens.evaluation.scoring: first-token scoring, generation, hooks during evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import striped_image, tiny_lens
from transformer_lens.utilities import get_act_name

from vh_lens.data.sample import Sample
from vh_lens.evaluation import candidates
from vh_lens.evaluation import scoring as evaluation
from vh_lens.evaluation.answers import format_question, parse_answer
from vh_lens.evaluation.scoring import EvalResult, Prediction, candidate_token_ids, evaluate, prepare_answer_batch


def _samples(answers=("B", "3", "no", "A")) -> list[Sample]:
    return [
        Sample(
            striped_image((70, 40), 0), "what color is the dog", answer=answers[0], choices=("red", "green", "blue")
        ),  # fmt: skip
        Sample(striped_image((50, 90), 1), "how many dogs are there", answer=answers[1], metadata={"task": "count"}),
        Sample(None, "is there a cat", answer=answers[2]),
        Sample(striped_image((64, 64), 2), "what is in the picture", answer=answers[3], choices=("dog", "cat")),
    ]


def _hand_candidates(tokenizer) -> list[list[int]]:
    """Candidate token ids by direct vocabulary lookup (the tiny vocabulary has "yes", not "Yes")."""
    ids = tokenizer.convert_tokens_to_ids
    return [ids(["A", "B", "C"]), ids([str(d) for d in range(1, 8)]), ids(["yes", "no"]), ids(["A", "B"])]


def test_score_matches_hand_computation_from_logits() -> None:
    model = tiny_lens()
    samples = _samples()
    batch = model.prepare_samples(samples)
    with torch.no_grad():
        logits = model(batch)
    query = torch.tensor([lay.query_position for lay in batch.layout])
    rows = logits[torch.arange(len(samples)), query]  # [batch, d_vocab]
    hand = _hand_candidates(model.tokenizer)
    hand_scores = [rows[i, ids] for i, ids in enumerate(hand)]
    hand_choice = [int(s.argmax()) for s in hand_scores]

    # Make the first two samples right and the last two wrong, whatever the random model says.
    letters, digits, yes_no = "ABC", [str(d) for d in range(1, 8)], ["yes", "no"]
    answers = (
        letters[hand_choice[0]],
        digits[hand_choice[1]],
        yes_no[1 - hand_choice[2]],
        "AB"[1 - hand_choice[3]],
    )
    samples = _samples(answers)
    result = evaluate(model, samples, batch_size=3, progress=False)  # two batches of different padding

    assert isinstance(result, EvalResult)
    assert (result.n, result.n_correct, result.n_unparsed) == (4, 2, 0)
    assert result.accuracy == pytest.approx(0.5)
    assert result.per_kind == {"choice": 0.5, "number": 1.0, "yes_no": 0.0}
    assert result.per_kind_n == {"choice": 2, "number": 1, "yes_no": 1}
    for pred, scores, choice in zip(result.predictions, hand_scores, hand_choice):
        torch.testing.assert_close(torch.tensor(pred.scores), scores.float(), atol=1e-4, rtol=1e-4)
        assert pred.scores.index(max(pred.scores)) == choice
    assert [p.letter for p in result.predictions] == [letters[hand_choice[0]], None, None, "AB"[hand_choice[3]]]
    assert [p.correct for p in result.predictions] == [True, True, False, False]
    assert result.predictions[2].parsed == yes_no[hand_choice[2]]
    assert result.predictions[2].text == ["Yes", "No"][hand_choice[2]]


def test_batch_size_does_not_change_scores() -> None:
    model = tiny_lens()
    one = evaluate(model, _samples(), batch_size=1, progress=False)
    four = evaluate(model, _samples(), batch_size=4, progress=False)
    for a, b in zip(one.predictions, four.predictions):
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-4, rtol=1e-4)
        assert a.parsed == b.parsed


def test_generate_parses_generated_text() -> None:
    model = tiny_lens()
    samples = _samples()
    texts = model.generate(model.prepare_samples(samples), max_new_tokens=3)
    result = evaluate(model, samples, method="generate", max_new_tokens=3, progress=False)
    assert [p.text for p in result.predictions] == texts
    parsed = [parse_answer(t, s) for t, s in zip(texts, samples)]
    assert [p.parsed for p in result.predictions] == parsed
    assert result.n_unparsed == sum(p is None for p in parsed)
    golds = ["B", "3", "no", "A"]
    assert [p.correct for p in result.predictions] == [p is not None and p == g for p, g in zip(parsed, golds)]
    assert all(p.scores is None for p in result.predictions)


def test_open_answers_need_generate() -> None:
    model = tiny_lens()
    open_sample = Sample(None, "describe the picture", answer="a red dog")
    with pytest.raises(ValueError, match="generate"):
        evaluate(model, [open_sample], progress=False)
    result = evaluate(model, [open_sample], method="generate", max_new_tokens=2, progress=False)
    assert result.per_kind_n == {"open": 1}


def test_sample_without_answer_is_rejected() -> None:
    with pytest.raises(ValueError, match="no gold answer"):
        evaluate(tiny_lens(), [Sample(None, "is there a cat")], progress=False)


def _hook_free(model) -> bool:
    return not any(hp.fwd_hooks for hp in model.lm.hook_dict.values())


def test_hooks_change_predictions_and_are_removed() -> None:
    model = tiny_lens()
    samples = _samples()
    before = evaluate(model, samples, progress=False)
    last = get_act_name("resid_post", model.cfg.n_layers - 1)
    calls = []

    def zero_resid(resid, *, hook):
        calls.append(hook.name)
        return torch.zeros_like(resid)

    hooked = evaluate(model, samples, fwd_hooks=[(last, zero_resid)], batch_size=2, progress=False)
    assert calls == [last, last]  # once per batch
    # A zero residual stream gives the same logits at every position: every candidate ties.
    for pred in hooked.predictions:
        assert max(pred.scores) - min(pred.scores) < 1e-5
    assert [p.scores for p in hooked.predictions] != [p.scores for p in before.predictions]
    assert _hook_free(model)
    after = evaluate(model, samples, progress=False)
    assert [p.scores for p in after.predictions] == [p.scores for p in before.predictions]


def test_hooks_apply_to_generation_and_are_removed_on_error() -> None:
    model = tiny_lens()
    seen = []

    def spy(z, *, hook):
        seen.append(z.shape[1])

    evaluate(model, _samples()[:2], fwd_hooks=[(get_act_name("z", 0), spy)], method="generate",
             max_new_tokens=3, progress=False)  # fmt: skip
    assert len(seen) == 3 and seen[1:] == [1, 1]  # the prompt, then one position per new token
    assert _hook_free(model)

    def boom(resid, *, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, _samples(), fwd_hooks=[(get_act_name("resid_post", 0), boom)], progress=False)
    assert _hook_free(model)


def test_candidate_token_ids_prefix_and_collisions() -> None:
    tok = tiny_lens().tokenizer
    prompt = "USER: what is in the picture ASSISTANT:"
    ids = tok.convert_tokens_to_ids
    assert candidate_token_ids(tok, prompt, ["A", "B"]) == ([], ids(["A", "B"]))
    assert candidate_token_ids(tok, prompt, ["Yes", "No"]) == ([], ids(["yes", "no"]))  # case fallback
    assert candidate_token_ids(tok, prompt, ["red dog", "red cat"]) == ([ids("red")], ids(["dog", "cat"]))
    with pytest.raises(ValueError, match="share their first token"):
        candidate_token_ids(tok, prompt, ["red dog", "red cat", "blue"])
    with pytest.raises(ValueError, match="token prefix"):
        candidate_token_ids(tok, prompt, ["red", "red dog"])
    with pytest.raises(ValueError, match="vocabulary"):
        candidate_token_ids(tok, prompt, ["A", "zebra"])
    with pytest.raises(ValueError, match="at least two"):
        candidate_token_ids(tok, prompt, ["A"])


def test_continuation_matches_model_answer_tokenisation() -> None:
    model = tiny_lens()
    batch = model.prepare_samples(_samples())
    for prompt in batch.prompts:
        for text in ("A", "3", "yes", "red dog"):
            assert candidates.continuation_ids(model.tokenizer, prompt, text) == model._answer_ids(prompt, text)


def test_no_space_after_a_prompt_ending_in_whitespace() -> None:
    class CharTokenizer:  # one token per character, so spaces show
        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    tok = CharTokenizer()
    assert candidates.continuation_ids(tok, "ASSISTANT:", "Yes") == [ord(c) for c in " Yes"]
    assert candidates.continuation_ids(tok, "assistant\n\n", "Yes") == [ord(c) for c in "Yes"]


def test_shared_prefix_is_appended_and_read_after(monkeypatch) -> None:
    model = tiny_lens()
    sample = Sample(striped_image((70, 40), 0), "what color is the dog", answer="yes")
    monkeypatch.setattr(evaluation, "candidate_strings", lambda s: ["red dog", "red cat"])
    prepared = prepare_answer_batch(model, [sample])
    lay = prepared.batch.layout[0]
    assert int(prepared.read_positions[0]) == int(lay.answer_positions[-1]) == lay.query_position + 1
    tok = model.tokenizer
    assert prepared.candidate_ids[0].tolist() == tok.convert_tokens_to_ids(["dog", "cat"])
    # Independent: the model's own teacher forcing of "red".
    forced = model.prepare(images=[sample.load_image()], questions=[format_question(sample)],
                           answers=["red"])  # fmt: skip
    with torch.no_grad():
        ours = model(prepared.batch)[0, prepared.read_positions[0]]
        ref = model(forced)[0, -1]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_prediction_and_result_validation() -> None:
    with pytest.raises(ValueError):
        Prediction(text="A", parsed="A", gold="B", correct=True, kind="choice")
    with pytest.raises(ValueError):
        EvalResult(())
    with pytest.raises(ValueError, match="method"):
        evaluate(tiny_lens(), _samples(), method="vote", progress=False)
