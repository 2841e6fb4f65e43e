"""The engine (vh_lens.engine): prepare once, conditions, reducers, resume and merge, the world hook."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from conftest import striped_image, tiny_lens

from vh_lens import engine
from vh_lens.analysis.interventions import ablate_heads
from vh_lens.core.config import ExperimentConfig, check_positive_int, resolve_config
from vh_lens.core.hooks import act_name, first_hooked_layer, random_heads
from vh_lens.data.sample import Sample
from vh_lens.evaluation.scoring import AccuracyReducer, evaluate
from vh_lens.visual_heads.accumulator import ScoreAccumulator
from vh_lens.visual_heads.scan import ScanReducer, scan_visual_heads

COLORS = ("red", "green", "blue", "one")


def _samples(n: int = 5) -> list[Sample]:
    boxes = [(0.0, 0.0, 20.0, 20.0), None, (5.0, 5.0, 30.0, 25.0)]
    return [
        Sample(striped_image((40 + 7 * i, 60 - 5 * i), i), f"what color is thing {i}", answer="AB"[i % 2],
               choices=COLORS, box=boxes[i % 3])
        for i in range(n)
    ]  # fmt: skip


class CountingLens:
    """tiny_lens() that counts prepare_samples calls and forwards."""

    def __init__(self, lens) -> None:
        self._lens, self.prepared, self.forwards = lens, 0, 0

    def __getattr__(self, name):
        return getattr(self._lens, name)

    def prepare_samples(self, samples, **kw):
        self.prepared += 1
        return self._lens.prepare_samples(samples, **kw)

    def run_with_hooks(self, batch, fwd_hooks=()):
        self.forwards += 1
        return self._lens.run_with_hooks(batch, fwd_hooks=fwd_hooks)


class QueryLogitSum(engine.Reducer):
    """Sum over samples of the logit vector at the query position, in float64, and a count."""

    def __init__(self) -> None:
        self.total, self.n = None, 0

    def update(self, logits, item) -> None:
        q = torch.tensor([lay.query_position for lay in item.batch.layout])
        rows = logits[torch.arange(len(item)), q].double().sum(0)
        self.total = rows if self.total is None else self.total + rows
        self.n += len(item)

    def result(self):
        return self.total / self.n

    def state_dict(self):
        return {"total": self.total.clone(), "n": self.n}

    def load_state_dict(self, state) -> None:
        self.total, self.n = state["total"].clone(), int(state["n"])

    def merge(self, other) -> None:
        self.total, self.n = self.total + other.total, self.n + other.n


class HalfWorld:
    """A two-rank world run in one process: rank r takes its half of the samples."""

    size = 2

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def shard(self, n: int) -> range:
        cut = (n + 1) // 2
        return range(0, cut) if self.rank == 0 else range(cut, n)

    def reduce(self, reducer):
        return reducer


# --- a reducer against a hand computation ----------------------------------------------------


def test_reducer_matches_direct_forward() -> None:
    model = tiny_lens()
    samples = _samples(5)
    prepared = engine.prepare(model, samples, batch_size=2)
    assert [b.start for b in prepared] == [0, 2, 4] and prepared.n_samples == 5 == prepared.n_total
    assert all(b.batch.input_ids.device.type == "cpu" and b.batch.pixel_values == [None] * len(b) for b in prepared)
    got = engine.run(model, prepared, QueryLogitSum()).result()
    # by hand: each sample alone, its query row, averaged
    rows = []
    with torch.no_grad():
        for s in samples:
            batch = model.prepare_samples([s])
            rows.append(model(batch)[0, batch.layout[0].query_position].double())
    torch.testing.assert_close(got, torch.stack(rows).mean(0), rtol=0, atol=1e-4)


# --- conditions ------------------------------------------------------------------------------


def test_conditions_apply_their_hooks_and_prepare_once() -> None:
    model = CountingLens(tiny_lens())
    samples = _samples(5)
    prepared = engine.prepare(model, samples, batch_size=2)
    assert model.prepared == 3
    heads = [(1, 0), (1, 2)]
    conditions = [engine.Condition("baseline"), engine.Condition("ablate", tuple(ablate_heads(heads, cfg=model.cfg)))]
    out = engine.run_conditions(model, prepared, conditions, lambda c: QueryLogitSum())
    assert list(out) == ["baseline", "ablate"]
    assert model.prepared == 3 and model.forwards == 6  # prepared once, run per condition
    # baseline = no hooks; ablate = the same hooks through run_with_hooks by hand
    direct = QueryLogitSum()
    for item in prepared:
        direct.update(tiny_lens().run_with_hooks(item.batch, fwd_hooks=ablate_heads(heads)), item)
    torch.testing.assert_close(out["ablate"].result(), direct.result(), rtol=0, atol=1e-12)
    assert not torch.allclose(out["ablate"].result(), out["baseline"].result())
    # the mapping form gives the same
    again = engine.run_conditions(model, prepared, {"ablate": ablate_heads(heads)}, lambda c: QueryLogitSum())
    torch.testing.assert_close(again["ablate"].result(), out["ablate"].result(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="distinct"):
        engine.run_conditions(
            model, prepared, [engine.Condition("a"), engine.Condition("a")], lambda c: QueryLogitSum()
        )


def test_condition_first_layer() -> None:
    hooks = tuple(ablate_heads([(3, 1), (1, 0)]))
    assert first_hooked_layer(hooks) == 1 and engine.Condition("x", hooks).start_layer == 1
    assert engine.Condition("x", hooks, first_layer=0).start_layer == 0
    assert engine.Condition("x").start_layer == 0
    assert first_hooked_layer([("hook_embed", lambda t, hook: None)]) is None
    assert act_name("z", 3) == "blocks.3.attn.hook_z"
    with pytest.raises(ValueError, match="first_layer"):
        engine.Condition("x", first_layer=-1)
    with pytest.raises(ValueError, match="name"):
        engine.Condition("")


# --- resume and merge ------------------------------------------------------------------------


def test_resume_via_state_dict_equals_one_run() -> None:
    model = tiny_lens()
    prepared = engine.prepare(model, _samples(5), batch_size=2)
    whole = engine.run(model, prepared, QueryLogitSum()).result()
    first = engine.run(model, prepared.batches[:2], QueryLogitSum())
    resumed = QueryLogitSum()
    resumed.load_state_dict(first.state_dict())
    engine.run(model, prepared.batches[2:], resumed)
    torch.testing.assert_close(resumed.result(), whole, rtol=0, atol=1e-12)


def test_merge_of_two_halves_equals_the_whole_scan() -> None:
    model = tiny_lens()
    samples = _samples(5)
    cfg = model.cfg

    def reducer() -> ScanReducer:
        acc = ScoreAccumulator(cfg.n_layers, cfg.n_heads, keep_per_sample=True)
        return ScanReducer(acc, lm=model.lm)

    # one sample per batch, so each sample's forward is the same whichever rank runs it (batches
    # of other composition pad differently, which moves float32 attention by ~1e-8)
    whole = engine.run(model, engine.prepare(model, samples, batch_size=1), reducer())
    halves = [engine.run(model, engine.prepare(model, samples, batch_size=1, world=HalfWorld(r)), reducer())
              for r in (0, 1)]  # fmt: skip
    assert [h.acc.count for h in halves] == [3, 2]
    merged = halves[0]
    merged.merge(halves[1])
    a, b = merged.result(), whole.result()
    for m in a.mean:
        assert a.mean[m].dtype == torch.float64
        torch.testing.assert_close(a.mean[m], b.mean[m], rtol=0, atol=1e-12)
        torch.testing.assert_close(a.variance[m], b.variance[m], rtol=0, atol=1e-12)
        torch.testing.assert_close(a.per_sample[m], b.per_sample[m], rtol=0, atol=1e-12)
    # and the engine's scan equals scan_visual_heads
    ref = scan_visual_heads(model, samples, batch_size=1, keep_per_sample=True, progress=False)
    for m in ref.mean:
        torch.testing.assert_close(b.mean[m], ref.mean[m], rtol=0, atol=1e-12)
    assert ref.metadata["config"]["batch_size"] == 1


def test_accuracy_reducer_state_and_merge() -> None:
    model = tiny_lens()
    samples = _samples(5)
    full = evaluate(model, samples, batch_size=2, progress=False)
    halves = []
    for rank in (0, 1):
        prepared = engine.prepare(model, samples, batch_size=2, answers="score", world=HalfWorld(rank))
        halves.append(engine.run(model, prepared, AccuracyReducer("score")))
    restored = AccuracyReducer("score")
    restored.load_state_dict(halves[0].state_dict())
    restored.merge(halves[1])
    assert restored.result().predictions == full.predictions
    with pytest.raises(ValueError, match="answers='score'"):
        engine.run(model, engine.prepare(model, samples[:1]), AccuracyReducer("score"))


def test_local_world_is_a_world() -> None:
    assert isinstance(engine.LOCAL, engine.World) and isinstance(HalfWorld(0), engine.World)
    assert engine.LOCAL.shard(4) == range(4)


# --- random heads and configs ----------------------------------------------------------------


def test_random_heads_one_sampler_two_conventions() -> None:
    exclude = [(0, 0), (1, 3)]
    drawn = random_heads(3, 4, 4, exclude, 5)
    # the draw by hand: a seeded permutation of the eligible heads in layer-major order
    pool = [(layer, head) for layer in range(3) for head in range(4) if (layer, head) not in exclude]
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(5))[:4].tolist()
    assert drawn == [pool[i] for i in perm]
    assert random_heads(3, 4, 4, exclude, 5, sort=True) == sorted(drawn)
    assert all(layer == 2 for layer, _ in random_heads(3, 4, 2, seed=1, layers=[2]))
    assert random_heads(3, 4, 0) == []
    with pytest.raises(ValueError, match="only 2 heads"):
        random_heads(1, 4, 3, [(0, 0), (0, 1)])
    with pytest.raises(ValueError, match="k must be"):
        random_heads(1, 4, -1)


@dataclass(frozen=True)
class _Cfg(ExperimentConfig):
    batch_size: int = 8
    ks: tuple[int, ...] = (1, 2)

    def validate(self) -> None:
        check_positive_int("batch_size", self.batch_size)


def test_experiment_config_round_trip_and_refusals() -> None:
    cfg = _Cfg.from_dict({"ks": [3, 4]})
    assert cfg.ks == (3, 4) and cfg.to_dict() == {"batch_size": 8, "ks": [3, 4]} and hash(cfg)
    assert _Cfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"no field\(s\) \['bogus'\]"):
        _Cfg.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        _Cfg(batch_size=0)
    with pytest.raises(ValueError, match="JSON value"):
        _Cfg(batch_size=object())  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 2  # type: ignore[misc]
    assert resolve_config(_Cfg, {"batch_size": 2}, {"ks": (5,)}) == _Cfg(batch_size=2, ks=(5,))


def test_question_format_is_the_models() -> None:
    model = tiny_lens()
    assert model.question_format == "llava"
    sample = _samples(1)[0]
    from vh_lens.evaluation.answers import format_question

    assert model.format_sample(sample) == format_question(sample)
    with pytest.raises(ValueError, match="question_format"):
        model.question_format = "nope"


# --- entry points on the engine take configs ---------------------------------------------------


def test_scan_config_equals_keywords_and_is_saved() -> None:
    from vh_lens.visual_heads.scan import ScanConfig

    model = tiny_lens()
    samples = _samples(3)
    by_kw = scan_visual_heads(model, samples, batch_size=2, detection_weight="region", progress=False)
    by_cfg = scan_visual_heads(model, samples, config=ScanConfig(batch_size=2, detection_weight="region"),
                               progress=False)  # fmt: skip
    for m in by_kw.mean:
        torch.testing.assert_close(by_kw.mean[m], by_cfg.mean[m], rtol=0, atol=0)
    assert ScanConfig.from_dict(by_cfg.metadata["config"]) == ScanConfig(batch_size=2, detection_weight="region")
    with pytest.raises(ValueError, match="query must be"):
        scan_visual_heads(model, samples, config={"query": "middle"}, progress=False)


def test_logit_lens_samples_equals_per_batch_lens() -> None:
    from vh_lens.analysis.logit_lens import LogitLensResult, logit_lens, logit_lens_samples
    from vh_lens.evaluation.scoring import prepare_answer_batch

    model = tiny_lens()
    samples = _samples(3)
    got = logit_lens_samples(model, samples, batch_size=2, top_k=3)
    parts = []
    for start in (0, 2):
        p = prepare_answer_batch(model, samples[start : start + 2], method="score", offset=start)
        gold = [int(ids[g]) for ids, g in zip(p.candidate_ids, p.gold_indices)]
        parts.append(logit_lens(model, p.batch, answers=gold, positions=p.read_positions, top_k=3))
    ref = LogitLensResult.concat(parts)
    for name in ("positions", "final_ids", "final_rank", "answer_ids", "answer_rank", "top_ids"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    torch.testing.assert_close(got.answer_prob, ref.answer_prob, rtol=0, atol=0)


def test_evaluate_config_equals_keywords() -> None:
    from vh_lens.evaluation.scoring import EvalConfig

    model = tiny_lens()
    samples = _samples(3)
    by_kw = evaluate(model, samples, batch_size=2, progress=False)
    assert evaluate(model, samples, config=EvalConfig(batch_size=2), progress=False).predictions == by_kw.predictions
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate(model, samples, config={"batch_size": 0}, progress=False)
