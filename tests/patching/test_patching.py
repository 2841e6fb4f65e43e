"""vh_lens.patching: causal maps over the image on a planted model and on the toy model; corruptions,
results, plots and the ``vh-lens patch`` command."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch
from conftest import striped_image, tiny_lens, tiny_pair
from test_planted_heads import PLANTED, _plant, _red_patch_image

import vh_lens
from vh_lens import patching
from vh_lens.plotting.patching import plot_attribution_vs_activation, plot_effect_heatmap, plot_effect_on_image

QUESTION = "what color is the square in this picture ?"


@pytest.fixture(scope="module")
def planted():
    hf, processor = tiny_pair("llava", "llama")
    model = vh_lens.load_llava(hf, processor=processor)  # a fresh copy: its weights are edited here
    images, boxes = zip(*(_red_patch_image(seed) for seed in range(4)))
    batch = model.prepare(images=list(images), questions=[QUESTION] * len(images))
    for layer, head in PLANTED:
        _plant(model, batch, boxes, layer, head)
    return model, images, boxes


def test_planted_patch_restores_the_answer_and_attribution_ranks_it_first(planted):
    model, images, boxes = planted
    for image, box in zip(images, boxes):
        clean = model.prepare(images=[image], questions=[QUESTION])
        corrupt = model.prepare(images=[patching.noise_box(image, box, std=120, seed=0)], questions=[QUESTION])
        with torch.no_grad():
            lc, lr = model(clean)[0, -1], model(corrupt)[0, -1]
        answer = int(lc.argmax())
        lr[answer] = -torch.inf
        metric = patching.logit_diff_metric(clean, [answer], [int(lr.argmax())])
        sites = patching.position_sites(clean)
        real = patching.activation_patch(model, clean, corrupt, metric, sites, layers=[0])
        est = patching.attribution_patch(model, clean, corrupt, metric, sites, layers=[0])
        lay = clean.layout[0]
        red = int(lay.region_mask(box, min_overlap=0.99)[lay.image_positions].nonzero())
        others = torch.arange(len(sites.labels)) != red
        assert float(real.effect[0, red]) > 0.9  # the red patch alone restores the answer
        assert float(real.effect[0, others].abs().max()) < 0.2  # no other patch does
        assert int(est.effect[0].argmax()) == red
        assert real.correlation(est) > 0.9


def test_toy_model_region_map_puts_the_effect_in_the_asked_box():
    """Measured (count_super, 8 samples, seed 0, embed-noise 3 std): patching the box's image
    tokens at layer 0 restores 0.93 of the clean logit difference, the rest of the image 0.70."""
    from vh_lens.data.shapes import shapes
    from vh_lens.evaluation.scoring import candidate_token_ids
    from vh_lens.toy import format_question, load_toy

    model = load_toy()
    samples = shapes(8, seed=0, kinds=("count_super",))
    clean = model.prepare(images=[s.load_image() for s in samples], questions=[format_question(s) for s in samples])
    corrupt = patching.noise_image_embeddings(clean, seed=0)
    with torch.no_grad():
        lr = model(corrupt)[:, -1]
    gold, foil = [], []
    for i, s in enumerate(samples):
        cands = [str(v) for v in range(1, 8)]
        _, ids = candidate_token_ids(model.tokenizer, clean.prompts[i], cands)
        g = ids[cands.index(s.answer)]
        gold.append(g)
        foil.append(max((t for t in ids if t != g), key=lambda t: float(lr[i, t])))
    metric = patching.logit_diff_metric(clean, gold, foil)
    sites = patching.region_sites(clean, [[s.box for s in samples]], ["box"], rest=True)
    result = patching.activation_patch(model, clean, corrupt, metric, sites, layers=[0])
    box, rest = float(result.effect[0, 0]), float(result.effect[0, 1])
    assert result.clean_metric > 5 > 0 > result.corrupt_metric
    assert box > 0.8  # one token of 64 per sample
    assert box > rest + 0.1


def test_result_round_trip_and_plots(tmp_path):
    model = tiny_lens()
    clean = model.prepare(images=[striped_image((70, 40), 0)], questions=["What is it?"])
    corrupt = patching.noise_image_embeddings(clean, seed=3)
    with torch.no_grad():
        order = model(clean)[:, -1].argsort(-1, descending=True)
    metric = patching.answer_logprob_metric(clean, order[:, 0])
    result = patching.activation_patch(model, clean, corrupt, metric, patching.position_sites(clean), layers=[1])
    again = patching.PatchingResult.load(result.save(tmp_path / "r"))
    assert torch.equal(again.effect, result.effect) and torch.equal(again.boxes, result.boxes)
    assert (again.labels, again.layers, again.clean_metric, again.metric) == (
        result.labels,
        result.layers,
        result.clean_metric,
        "logprob",
    )
    merged = patching.merge([result, result])
    assert torch.allclose(merged.effect, result.effect) and merged.n_samples == 2
    fig = plot_effect_on_image(result, striped_image((70, 40), 0))
    assert isinstance(fig, go.Figure)
    heat = fig.data[1].z
    assert heat.shape[0] > 0 and not (heat != heat).all()
    est = patching.attribution_patch(model, clean, corrupt, metric, patching.position_sites(clean), layers=[1])
    assert isinstance(plot_effect_heatmap(result), go.Figure)
    assert isinstance(plot_attribution_vs_activation(result, est), go.Figure)
    with pytest.raises(ValueError, match="PatchingResult"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "metadata.json").write_text('{"format": "other"}')
        patching.PatchingResult.load(tmp_path / "x")


@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_corruptions_are_seeded_and_checked():
    image = striped_image((70, 40), 0)
    box = (10, 5, 30, 25)
    a, b = patching.noise_box(image, box, seed=1), patching.noise_box(image, box, seed=1)
    assert a.tobytes() == b.tobytes() and a.tobytes() != patching.noise_box(image, box, seed=2).tobytes()
    grey = patching.grey_box(image, box)
    assert grey.getpixel((15, 10)) == (128, 128, 128) and grey.getpixel((0, 0)) == image.getpixel((0, 0))
    assert patching.blur_box(image, box).getpixel((0, 0)) == image.getpixel((0, 0))
    with pytest.raises(ValueError, match="outside"):
        patching.grey_box(image, (0, 0, 100, 10))
    with pytest.raises(ValueError, match="unknown image corruption"):
        patching.corrupt_image(image, box, "paint")
    model = tiny_lens()
    clean = model.prepare(images=[image], questions=["What is it?"])
    n1, n2 = patching.noise_image_embeddings(clean, seed=0), patching.noise_image_embeddings(clean, seed=0)
    assert torch.equal(n1.embeds, n2.embeds)
    text = clean.layout[0].text_mask
    assert torch.equal(n1.embeds[0, text], clean.embeds[0, text])
    other = model.prepare(images=[striped_image((50, 90), 1)], questions=["What is it? Really?"])
    with pytest.raises(ValueError, match="differ"):
        patching.check_aligned(clean, other)
    with pytest.raises(ValueError, match="same metric"):
        metric = patching.answer_logprob_metric(clean, [3])
        patching.activation_patch(model, clean, clean, metric, patching.position_sites(clean))


def test_patch_command_on_the_toy_model(tmp_path):
    from vh_lens.cli import main

    out = tmp_path / "out"
    code = main(
        ["patch", "--out", str(out), "--n-samples", "2", "--layers", "0", "--no-progress", "--grids", "heads,regions"]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"heads_activation", "regions_attribution", "summary.json", "patch.html"}
    heads = patching.PatchingResult.load(out / "heads_activation")
    assert heads.effect.shape == (6, 8) and heads.n_samples == 2
    assert main(["patch", "--out", str(tmp_path / "bad"), "--grids", "heads,nope"]) == 1
    assert not (tmp_path / "bad").exists()
