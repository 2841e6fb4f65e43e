"""The pages of every command on the shipped toy model: expected figures, sizes, widths, the overlay's rows."""

from __future__ import annotations

import re

import pytest
import torch
from pagecheck import cells, figure_specs, links, long_numbers

import vh_lens
from vh_lens.data.shapes import shapes
from vh_lens.reports.experiments import write_lens_report, write_mask_report
from vh_lens.reports.page import INDEX_FILE, MAX_FIGURE_WIDTH
from vh_lens.reports.scan import head_attention_rows, plot_top_heads_on_samples, write_scan_report
from vh_lens.toy import format_question, load_toy
from vh_lens.visual_heads.scan import scan_visual_heads

MB = 1_000_000
K = 3


@pytest.fixture(scope="module")
def toy():
    return load_toy()


@pytest.fixture(scope="module")
def samples():
    return shapes(9, seed=1)  # three of each counting question type


@pytest.fixture(scope="module")
def scores(toy, samples):
    return scan_visual_heads(toy, samples, batch_size=9, progress=False, metadata={"command": "test <scan>"})


def _check_widths(text: str) -> dict:
    specs = figure_specs(text)
    for name, spec in specs.items():
        width = spec["layout"].get("width")
        assert width is None or width <= MAX_FIGURE_WIDTH, (name, width)
    return specs


def test_scan_page_has_every_figure_small_and_in_order(toy, samples, scores, tmp_path) -> None:
    other = scan_visual_heads(toy, samples[:3], batch_size=3, progress=False)  # stands in for the plain scan
    lens = vh_lens.logit_lens(toy, toy.prepare_samples(samples, format_question=format_question),
                              answers=[s.answer for s in samples])  # fmt: skip
    page = write_scan_report(scores, tmp_path / "report.html", model=toy, samples=samples, k=5, image_heads=K,
                             prompt_pair=(other, scores), lens=lens, settings={"extra": 0.30000001192092896})  # fmt: skip
    text = page.read_text()
    assert page.stat().st_size < MB, page.stat().st_size
    specs = _check_widths(text)
    expected = ["fig-heatmap-detection", "fig-heatmap-image-weight", "fig-heatmap-concentration",
                "fig-heatmap-region-weight", "fig-heatmap-text-weight", "fig-weight-vs-concentration",
                "fig-layer-totals", "fig-attention-on-images", "fig-prompt-comparison", "fig-lens-rank-final",
                "fig-lens-rank-answer"]  # fmt: skip
    assert list(specs) == expected
    for div in expected:
        assert f'<div id="{div}" class="plotly-graph-div"' in text
    last_figure = max(text.index(f'id="{d}"') for d in expected)
    assert last_figure < text.index('id="table-top"') < text.index('id="table-top-early"')
    assert "<h3>early stage</h3>" in text and "<h3>mid stage</h3>" in text and "<h3>late stage</h3>" in text
    assert "test &lt;scan&gt;" in text and ">0.3<" in text  # settings: metadata escaped, numbers rounded
    assert long_numbers(cells(text)) == [] and len(cells(text)) > 50
    stage_names = [a["text"] for a in specs["fig-layer-totals"]["layout"]["annotations"]]
    assert [s.split()[0] for s in stage_names] == ["early", "mid", "late"]


def test_overlay_rows_are_samples_per_question_type_and_the_mean(toy, samples, scores) -> None:
    fig = plot_top_heads_on_samples(toy, scores, samples, k=K, mean_samples=6)
    heads = scores.top_heads(K)
    labels = [fig.layout[f"yaxis{'' if i == 0 else i * K + 1}"].title.text.replace("<br>", " ") for i in range(4)]
    kinds = [s.metadata["question_type"] for s in samples[:3]]
    for label, kind, sample in zip(labels, kinds, samples[:3], strict=False):
        assert f"({kind} question)" in label and str(sample.metadata["id"]) in label
    assert labels[3].startswith("mean map over 6 samples") and "own colour scale" in labels[3]
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    images = [t for t in fig.data if t.type == "image"]
    assert len(heatmaps) == 4 * K and len(images) == 3 * K and images[0].source.startswith("data:image/png;base64,")
    # Example row 1: each head's share of its image attention, cell by cell, and its weight on this sample.
    layout, rows = head_attention_rows(toy, samples[1], heads)
    grid = layout.grid("base")
    share = rows[:, grid.positions] / rows[:, grid.positions].sum(dim=(1, 2), keepdim=True)
    for h in range(K):
        torch.testing.assert_close(torch.tensor(heatmaps[K + h].z), share[h].float(), atol=1e-6, rtol=0)
    weight = float(rows[0, layout.image_positions].sum())
    assert f"weight here {weight:.2f}" in fig.layout.annotations[K].text
    # Mean row: the mean of those shares over the first 6 samples (computed here independently).
    total = 0
    for s in samples[:6]:
        lay, r = head_attention_rows(toy, s, heads)
        v = r[:, lay.grid("base").positions]
        total = total + v / v.sum(dim=(1, 2), keepdim=True)
    for h in range(K):
        torch.testing.assert_close(torch.tensor(heatmaps[3 * K + h].z), (total / 6)[h].float(), atol=1e-6, rtol=0)
    mean_weight = float(scores.image_weight[heads[0]])
    assert f"scan mean weight {mean_weight:.2f}" in fig.layout.annotations[3 * K].text


def test_mask_and_lens_pages_share_a_folder_with_the_scan(toy, samples, scores, tmp_path) -> None:
    from vh_lens.visual_heads.masking import masking_experiment

    result = masking_experiment(toy, samples[:6], scores, ks=[1, 2], stages=["early", "late"], control_seeds=[0],
                                format_question=format_question, progress=False)  # fmt: skip
    lens = vh_lens.logit_lens(toy, toy.prepare_samples(samples, format_question=format_question),
                              answers=[s.answer for s in samples])  # fmt: skip
    scan = write_scan_report(scores, tmp_path / "report.html", k=3)
    mask = write_mask_report(result, tmp_path / "masking.html", settings={"ks": [1, 2]})
    lens_page = write_lens_report(lens, tmp_path / "lens.html", settings={"top_k": 5}, plotlyjs="cdn")
    for page, figures in ((mask, ["fig-masking-curves"]),
                          (lens_page, ["fig-lens-rank-final", "fig-lens-rank-answer", "fig-lens-prob-answer"])):  # fmt: skip
        text = page.read_text()
        assert page.stat().st_size < MB and list(_check_widths(text)) == figures
        assert "<title>" in text and 'id="settings"' in text
    assert 'id="table-masking"' in mask.read_text() and 'id="table-layers"' in lens_page.read_text()
    for page in (scan, mask, lens_page):
        assert links(page.read_text()) == {"report.html", "masking.html", "lens.html", INDEX_FILE} - {page.name}
    index = (tmp_path / INDEX_FILE).read_text()
    assert re.findall(r'<li><a href="([^"]+)">', index) == ["lens.html", "masking.html", "report.html"]


def test_prompt_pair_orders_the_scans_and_refuses_mismatches(scores, tmp_path) -> None:
    from vh_lens.reports.scan import prompt_pair
    from vh_lens.visual_heads.scores import VisualHeadScores

    def scan(data: str, model: str = "toy") -> VisualHeadScores:
        return VisualHeadScores(scores.mean, scores.variance, scores.count, metadata={"data": data, "model": model})

    plain, visual = (
        scan("f.json (looktwice, general questions)"),
        scan("f.json (looktwice, general questions, visual prompt)"),
    )
    visual.save(tmp_path / "vp" / "scores")
    loaded = prompt_pair(plain, tmp_path / "vp")  # a scan's --out folder
    assert loaded[0] is plain and loaded[1].metadata["data"].endswith("visual prompt)")
    assert prompt_pair(visual, plain) == (plain, visual)
    with pytest.raises(ValueError, match="neither"):
        prompt_pair(plain, plain)
    with pytest.raises(ValueError, match="different models"):
        prompt_pair(plain, scan("x (visual prompt)", model="other"))
