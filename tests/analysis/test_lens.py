"""Logit lens on a tiny HookedTransformer, checked against its logits and a hand computation."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch
from conftest import FakeBatch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from vh_lens.analysis.logit_lens import LogitLensResult, answer_token_ids, logit_lens
from vh_lens.core.layout import TokenLayout
from vh_lens.plotting.logit_lens import plot_answer_prob_heatmap, plot_rank_per_layer

WORDS = ["<unk>", "<pad>", "yes", "no", "red", "blue"] + [f"w{i}" for i in range(44)]  # 50 = d_vocab
SEQ = 8
QUERIES = [7, 5, 7]  # sample 1's query is not the last position


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module", params=[None, 2], ids=["mha", "gqa"])
def lm(request) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        n_ctx=64,
        d_vocab=len(WORDS),
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        n_key_value_heads=request.param,
        init_weights=True,
        initializer_range=0.3,
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.ln_final.w.copy_(1 + 0.5 * torch.randn_like(model.ln_final.w))  # so the norm weight matters
    return model


class FakeModel:
    """The slice of the model API that :func:`logit_lens` uses, around a HookedTransformer."""

    def __init__(self, lm: HookedTransformer, tokenizer=None) -> None:
        self.lm, self.cfg, self.tokenizer = lm, lm.cfg, tokenizer

    def run_with_hooks(self, batch: FakeBatch, fwd_hooks=()):
        return self.lm.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=list(fwd_hooks))


@pytest.fixture(scope="module")
def batch() -> FakeBatch:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, len(WORDS), (3, SEQ), generator=g)
    mask = torch.ones(3, SEQ, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :4] = 0
    empty = torch.zeros(0, dtype=torch.long)
    layouts = [
        TokenLayout(SEQ, int((m == 0).sum()), empty, empty, torch.arange(int((m == 0).sum()), SEQ), q)
        for m, q in zip(mask, QUERIES)
    ]
    return FakeBatch(ids, mask, layouts)


def _logits_at_queries(lm, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = lm(batch.input_ids, attention_mask=batch.attention_mask)
    return logits[torch.arange(3), torch.tensor(QUERIES)]


def _ranks_by_sorting(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """1-based rank from a descending sort (independent of the library's counting)."""
    order = logits.argsort(dim=-1, descending=True, stable=True)
    return (order == ids[..., None]).float().argmax(-1) + 1


def test_last_layer_is_the_models_logits(lm, batch):
    answers = torch.tensor([2, 3, 4])
    result = logit_lens(FakeModel(lm), batch, answers=answers, top_k=5)
    logits = _logits_at_queries(lm, batch)
    assert result.positions.tolist() == QUERIES
    assert torch.equal(result.final_ids, logits.argmax(-1))
    assert result.final_rank[-1].tolist() == [1, 1, 1]
    assert torch.equal(result.top_ids[-1], logits.topk(5, dim=-1).indices)
    probs = logits.softmax(-1)
    torch.testing.assert_close(result.top_probs[-1], probs.topk(5, dim=-1).values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.answer_prob[-1], probs[torch.arange(3), answers], atol=1e-6, rtol=1e-5)
    assert torch.equal(result.answer_rank[-1], _ranks_by_sorting(logits, answers))
    assert result.top_tokens[-1][0] == tuple(str(i) for i in result.top_ids[-1, 0].tolist())  # no tokenizer
    assert all(not hp._forward_hooks for hp in lm.hook_dict.values())


def test_first_layer_by_hand(lm, batch):
    result = logit_lens(FakeModel(lm, _tokenizer()), batch, answers=["yes", "no", "red"], top_k=3)
    with torch.no_grad():
        _, cache = lm.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    x = cache["resid_post", 0][torch.arange(3), torch.tensor(QUERIES)]  # [3, d_model]
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + lm.cfg.eps) * lm.ln_final.w
    logits = x @ lm.W_U + lm.b_U
    probs = logits.softmax(-1)
    gold = torch.tensor([WORDS.index("yes"), WORDS.index("no"), WORDS.index("red")])
    assert torch.equal(result.answer_ids, gold)
    torch.testing.assert_close(result.answer_prob[0], probs[torch.arange(3), gold], atol=1e-6, rtol=1e-5)
    assert torch.equal(result.answer_rank[0], _ranks_by_sorting(logits, gold))
    assert torch.equal(result.final_rank[0], _ranks_by_sorting(logits, result.final_ids))
    assert torch.equal(result.top_ids[0], logits.topk(3, dim=-1).indices)
    assert result.top_tokens[0][1] == tuple(WORDS[i] for i in logits[1].topk(3).indices.tolist())
    assert result.answer_tokens == ("yes", "no", "red")
    assert (result.final_rank[0] > 1).any()  # the first layer is not already the answer


def test_positions_override(lm, batch):
    result = logit_lens(FakeModel(lm), batch, positions=[-1, -1, 6])
    with torch.no_grad():
        logits = lm(batch.input_ids, attention_mask=batch.attention_mask)
    assert result.positions.tolist() == [7, 7, 6]
    assert torch.equal(result.final_ids, logits[torch.arange(3), torch.tensor([7, 7, 6])].argmax(-1))
    assert not result.has_answers and result.answer_rank is None


def test_rows_save_load_concat(lm, batch, tmp_path):
    model = FakeModel(lm, _tokenizer())
    result = logit_lens(model, batch, answers=["yes", "no", "blue"], top_k=4)
    rows = result.to_rows()
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[-1]["final_top1"] == 1.0 and rows[-1]["final_rank_mean"] == 1.0
    assert rows[0]["answer_prob_mean"] == pytest.approx(float(result.answer_prob[0].mean()))
    long = result.to_rows(per_sample=True)
    assert len(long) == 6 and long[4]["sample"] == 1 and long[4]["layer"] == 1
    assert long[4]["answer_rank"] == int(result.answer_rank[1, 1]) and len(long[4]["top_tokens"]) == 4

    loaded = LogitLensResult.load(result.save(tmp_path / "lens"))
    for name in (
        "positions",
        "final_ids",
        "final_rank",
        "final_prob",
        "top_ids",
        "top_probs",
        "answer_ids",
        "answer_rank",
        "answer_prob",
    ):
        assert torch.equal(getattr(loaded, name), getattr(result, name)), name
    assert (loaded.top_tokens, loaded.final_tokens, loaded.answer_tokens) == (
        result.top_tokens,
        result.final_tokens,
        result.answer_tokens,
    )
    assert (tmp_path / "lens" / "layers.csv").read_text().startswith("layer,")
    no_answers = logit_lens(model, batch)
    assert LogitLensResult.load(no_answers.save(tmp_path / "plain")).answer_ids is None

    halves = [
        logit_lens(model, FakeBatch(batch.input_ids[s], batch.attention_mask[s], batch.layout[s]), answers=a, top_k=4)
        for s, a in ((slice(0, 1), ["yes"]), (slice(1, 3), ["no", "blue"]))
    ]
    joined = LogitLensResult.concat(halves)
    assert torch.equal(joined.final_rank, result.final_rank) and torch.equal(joined.top_ids, result.top_ids)
    assert joined.top_tokens == result.top_tokens and joined.answer_tokens == result.answer_tokens
    torch.testing.assert_close(joined.answer_prob, result.answer_prob, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="share"):
        LogitLensResult.concat([halves[0], no_answers])


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_validation(lm, batch):
    model = FakeModel(lm)
    with pytest.raises(ValueError, match="one answer per sample"):
        logit_lens(model, batch, answers=[1, 2])
    with pytest.raises(ValueError, match="vocabulary"):
        logit_lens(model, batch, answers=[1, 2, 50])
    with pytest.raises(ValueError, match="tokenizer"):
        logit_lens(model, batch, answers=["yes", "no", "red"])
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, batch, top_k=0)
    with pytest.raises(ValueError, match="out of range"):
        logit_lens(model, batch, positions=[0, 1, 8])
    with pytest.raises(ValueError, match="one position per sample"):
        logit_lens(model, batch, positions=[0, 1])
    good = logit_lens(model, batch, top_k=2)
    with pytest.raises(ValueError, match="final_rank"):
        LogitLensResult(**{**_fields(good), "final_rank": good.final_rank[:, :2]})
    with pytest.raises(ValueError, match="go together"):
        LogitLensResult(**{**_fields(good), "answer_ids": good.final_ids})
    with pytest.raises(ValueError, match="1-based"):
        LogitLensResult(**{**_fields(good), "final_rank": good.final_rank - 1})
    with pytest.raises(ValueError, match="top_tokens"):
        LogitLensResult(**{**_fields(good), "top_tokens": good.top_tokens[:1]})


def _fields(result: LogitLensResult) -> dict:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}


class _SentencePieceLike:
    """Llama's tokenizer splits " 4" into ["▁", "4"]: ids 7 ("▁", decodes to "") then 8."""

    def __call__(self, texts, add_special_tokens=False):
        table = {"4": [7, 8], "Yes": [9], "": []}
        return {"input_ids": [table[t] for t in texts]}

    def decode(self, ids):
        return "".join({7: " ", 8: "4", 9: "Yes"}[i] for i in ids)


def test_answer_token_ids_skips_leading_space_tokens():
    tok = _SentencePieceLike()
    assert answer_token_ids(tok, ["4", "Yes"]).tolist() == [8, 9]
    assert answer_token_ids(tok, ["4"], skip_space=False).tolist() == [7]
    with pytest.raises(ValueError, match="no token"):
        answer_token_ids(tok, [""])


def test_plots(lm, batch):
    result = logit_lens(FakeModel(lm, _tokenizer()), batch, answers=["yes", "no", "red"])
    fig = plot_rank_per_layer(result, "answer")
    assert isinstance(fig, go.Figure) and fig.layout.yaxis.type == "log"
    mean_trace = next(t for t in fig.data if t.name == "mean")
    assert list(mean_trace.y) == pytest.approx(result.answer_rank.float().mean(1).tolist())
    heat = plot_answer_prob_heatmap(result, sample_labels=["a", "b", "c"])
    assert isinstance(heat, go.Figure)
    assert heat.data[0].z[1][2] == pytest.approx(float(result.answer_prob[1, 2]))
    no_answers = logit_lens(FakeModel(lm), batch)
    assert isinstance(plot_rank_per_layer(no_answers), go.Figure)
    with pytest.raises(ValueError, match="no gold answers"):
        plot_answer_prob_heatmap(no_answers)
    with pytest.raises(ValueError, match="sample label"):
        plot_answer_prob_heatmap(result, sample_labels=["a"])
