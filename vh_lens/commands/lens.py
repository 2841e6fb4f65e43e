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
from typing import Any

from vh_lens.commands.mask import (
    add_data_arguments,
    add_model_arguments,
    add_output_arguments,
    check_inputs,
    load_model,
    load_samples,
    screen_and_record,
    staged_output,
)
from vh_lens.core.io import write_json


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


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens lens``; returns the exit code."""
    check_inputs(args)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    from vh_lens.analysis.logit_lens import logit_lens_samples
    from vh_lens.distributed import is_main_process
    from vh_lens.reports.experiments import write_lens_report
    from vh_lens.reports.page import command_settings

    samples = load_samples(args)
    fmt = None  # vh_lens.evaluation.answers.format_question, the one format
    model = load_model(args)
    samples, record = screen_and_record(args, model, samples, format_question=fmt)
    with staged_output(args.out, args.overwrite) as tmp:  # under torchrun only rank 0 publishes
        write_json(tmp / "inputs.json", record, indent=2)
        # under torchrun each rank runs its shard of the samples, the parts joined in rank order
        result = logit_lens_samples(model, samples, top_k=args.top_k, batch_size=args.batch_size,
                                    format_question=fmt, progress=not args.no_progress)  # fmt: skip
        result.save(tmp / "lens")
        rows = result.to_rows()
        (tmp / "lens.md").write_text(_markdown(rows), encoding="utf-8")
        write_lens_report(result, tmp / "lens.html", settings=command_settings(args, "vh-lens lens"),
                          plotlyjs=args.plotlyjs)  # fmt: skip
    if is_main_process():
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
