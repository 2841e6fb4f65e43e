"""``vh-lens lens``: the logit lens at the answer query position of a benchmark's samples.

Writes into ``--out``: ``lens/`` (the :class:`vh_lens.analysis.logit_lens.LogitLensResult`: tensors, token
strings, ``layers.csv`` with one summary row per layer), ``lens.md`` (that summary as a table)
and ``lens.html`` (rank of the final token, and of the gold answer when the samples have one,
per layer; probability of the answer per layer and sample). As for ``vh-lens mask``, the folder
appears only when the run succeeds.

The gold answer's token is the one :func:`vh_lens.evaluation.scoring.evaluate` scores: the first token
at which the sample's candidate answers differ, read after any tokens they all share. Samples
without a fixed candidate list (open answers) use the first non-space token of the gold answer
at the query position; when some sample has no gold answer the lens reports the final token only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vh_lens.core.io import write_json
from vh_lens.commands.mask import (
    add_data_arguments,
    add_model_arguments,
    add_output_arguments,
    check_inputs,
    load_model,
    load_samples,
    question_formatter,
    screen_and_record,
    staged_output,
)


def register(subparsers: Any) -> None:
    """Add ``lens`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "lens",
        help="logit lens at the answer query position, after every layer",
        description=(
            "Apply the final norm and unembedding to the residual stream after each layer at the answer query "
            "position; report the rank of the final top-1 token and of the gold answer per layer."
        ),
    )
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="top tokens kept per layer and sample (default 5)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _lens_batch(model: Any, samples: Sequence[Any], fmt: Any, offset: int, with_answers: bool) -> tuple[Any, Any, Any]:
    """``(batch, answers, positions)`` for :func:`vh_lens.analysis.logit_lens.logit_lens`."""
    from vh_lens.evaluation.answers import answer_kind
    from vh_lens.evaluation.scoring import prepare_answer_batch

    if with_answers and all(answer_kind(s) != "open" for s in samples):
        prepared = prepare_answer_batch(model, samples, method="score", format_question=fmt, offset=offset)
        assert prepared.candidate_ids is not None and prepared.gold_indices is not None
        gold = [int(ids[g]) for ids, g in zip(prepared.candidate_ids, prepared.gold_indices)]
        return prepared.batch, gold, prepared.read_positions
    batch = model.prepare_samples(samples, format_question=fmt)
    return batch, [s.answer for s in samples] if with_answers else None, None


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens lens``; returns the exit code."""
    check_inputs(args)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    from tqdm import tqdm

    from vh_lens.analysis.logit_lens import LogitLensResult, logit_lens
    from vh_lens.plotting.logit_lens import plot_answer_prob_heatmap, plot_rank_per_layer

    samples = load_samples(args)
    fmt = question_formatter(args)
    model = load_model(args)
    samples, record = screen_and_record(args, model, samples, format_question=fmt)
    with staged_output(args.out, args.overwrite) as tmp:
        write_json(tmp / "inputs.json", record, indent=2)
        chunks = [(i, samples[i : i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
        with_answers = all(s.answer is not None for s in samples)
        parts = []
        for start, chunk in tqdm(chunks, desc="logit lens", unit="batch", disable=args.no_progress):
            batch, answers, positions = _lens_batch(model, chunk, fmt, start, with_answers)
            parts.append(logit_lens(model, batch, answers=answers, positions=positions, top_k=args.top_k))
        result = LogitLensResult.concat(parts)
        result.save(tmp / "lens")
        rows = result.to_rows()
        (tmp / "lens.md").write_text(_markdown(rows), encoding="utf-8")
        figures = [plot_rank_per_layer(result, "final")]
        if result.has_answers:
            figures += [plot_rank_per_layer(result, "answer"), plot_answer_prob_heatmap(result, "answer")]
        else:
            figures.append(plot_answer_prob_heatmap(result, "final"))
        html = ["<html><head><meta charset='utf-8'><title>vh-lens logit lens</title></head><body>"]
        html += [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
        html.append("</body></html>")
        (tmp / "lens.html").write_text("\n".join(html), encoding="utf-8")
    print(_markdown(rows), end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _markdown(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
