"""``vh-lens probe``: paper B's functional heads for a model and a CogVision/CogQA file.

Collects every head's output before ``W_O`` at one position per subquestion
(:func:`vh_lens.functional_heads.activations.collect_head_activations`), trains per-head probes for the function
labels with train and test split by main question (:func:`vh_lens.functional_heads.probes.probe_heads`), picks
each function's heads (top ``--k`` or the elbow) and, with ``--intervene``, removes or emphasises
them against random heads (:func:`vh_lens.functional_heads.interventions.intervene_on_functions`).

Writes into ``--out`` (the folder appears only when the run succeeds):

- ``probe/``: the :class:`~vh_lens.functional_heads.probes.ProbeResult` (``ProbeResult.load`` reads it);
- ``head_scores.csv``: every head's held-out scores per function (``ProbeResult.to_rows``);
- ``functional_heads.csv``: each function's selected heads, best first;
- ``sparsity.csv``: per function the held-out scores (best head, mean over heads), the number
  and fraction of selected heads and how many fall in each layer;
- ``overlap.csv``: Jaccard overlap of the functions' head sets;
- ``summary.md``: these tables (also printed); ``report.html``: the tables and the figures
  (per-function layer x head maps, heads per layer, overlap, sorted score curves, and the
  intervention bars);
- ``run.json``: the options, counts and timings;
- ``activations/``: the activations (float16 ``.npy``), with ``--save-activations`` or when
  they would take more than ``--stream-mb`` MiB (then streamed there instead of kept in memory);
- ``interventions/``: the :class:`~vh_lens.functional_heads.report.FunctionInterventionReport`, with
  ``--intervene remove|emphasise``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vh_lens.commands._inputs import add_input_arguments, check_data_file, check_n_ctx
from vh_lens.commands.mask import (
    add_model_arguments,
    add_output_arguments,
    load_model,
    screen_and_record,
    staged_output,
)
from vh_lens.core.io import write_csv

_SUMMARY_FILE = "summary.md"
MIN_TEST_ITEMS = 20
"""A function with fewer held-out subquestions than this gets a warning: its scores rest on too few items."""
MAX_UNKNOWN = 0.5
"""A warning when more than this fraction of the prompts' text tokens are the tokenizer's unknown token."""


def register(subparsers: Any) -> None:
    """Add ``probe`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "probe",
        help="functional heads: per-head probes for cognitive-function labels, and interventions",
        description=(
            "Paper B's functional heads: train a linear probe on every head's output (hook_z) to predict the "
            "cognitive function of CogVision/CogQA subquestions, select each function's heads, and optionally "
            "remove or emphasise them against random heads."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, type=Path, help="CogVision/CogQA file (.json or .jsonl)")
    parser.add_argument("--images", type=Path, default=None, help="folder of the items' images (default: the file's)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N items (main questions)")
    parser.add_argument(
        "--functions",
        nargs="+",
        default=None,
        help="labels to probe (default: every label with subquestions on both sides of the split)",
    )
    parser.add_argument(
        "--context",
        choices=("chain", "none"),
        default="chain",
        help="subquestion prompt: with the earlier steps and answers (default) or bare",
    )
    parser.add_argument(
        "--position",
        choices=("last_prompt", "answer_mean"),
        default="last_prompt",
        help="where hook_z is read: the last prompt token (default) or the mean over the positions "
        "predicting the gold answer",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split by main question")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="fraction of main questions held out")
    parser.add_argument(
        "--mode",
        choices=("ovr", "multiclass", "both"),
        default="both",
        help="probes: function-vs-rest, multiclass, or both (default)",
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--k", type=int, default=None, help="functional heads per function: the top K")
    selection.add_argument(
        "--elbow", action="store_true", help="functional heads at the elbow of the sorted scores (the default)"
    )
    parser.add_argument(
        "--intervene",
        choices=("remove", "emphasise", "none"),
        default="none",
        help="intervene on each function's heads vs random heads (default none)",
    )
    parser.add_argument("--removal", choices=("zero", "mean", "scale"), default="zero", help="how heads are removed")
    parser.add_argument("--emphasis", choices=("scale", "shift"), default="shift", help="how heads are emphasised")
    parser.add_argument(
        "--alpha", type=float, default=None, help="factor (scale) or strength in sigmas (shift); defaults 1e-5 / 2 / 5"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the random controls")
    parser.add_argument(
        "--eval-method",
        choices=("generate", "score"),
        default="generate",
        help="read answers by greedy generation (default; open answers) or first-token logits",
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation length (default 16)")
    parser.add_argument(
        "--main-answer",
        choices=("final_step", "item"),
        default="final_step",
        help="gold answer of a main question: its chain's last subquestion answer (default) or the item's answer field",
    )
    parser.add_argument(
        "--cross-function",
        action="store_true",
        help="with --intervene remove: the cross-function matrix (remove function i's heads, score "
        "function j, vs the random controls) in OUT/cross_function, a heatmap and a table",
    )
    parser.add_argument("--save-activations", action="store_true", help="keep the activations in OUT/activations")
    parser.add_argument(
        "--stream-mb",
        type=float,
        default=512.0,
        help="stream the activations to OUT/activations when larger than this (MiB, default 512)",
    )
    add_output_arguments(parser)
    add_input_arguments(parser)
    parser.set_defaults(func=run)  # fmt: skip


def _check_inputs(args: argparse.Namespace) -> None:
    check_n_ctx(args)
    check_data_file(args.data)
    if args.images is not None and not args.images.is_dir():
        raise FileNotFoundError(f"image folder {args.images} does not exist")
    if not args.model.is_dir():
        raise FileNotFoundError(f"model folder {args.model} does not exist")
    for name in ("limit", "k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size and --max-new-tokens must be at least 1")
    if not 0.0 < args.test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.cross_function and args.intervene != "remove":
        raise ValueError(f"--cross-function needs --intervene remove, got --intervene {args.intervene}")


# --------------------------------------------------------------------------------------------
# Tables


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[repr(v) if isinstance(v, float) else v for v in row] for row in rows])
    return buf.getvalue()


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _tables(result: Any, selection: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The summary tables: name -> (header, rows)."""
    source = "ovr" if result.ovr_balanced_accuracy is not None else "multiclass"
    score = "balanced_accuracy" if source == "ovr" else "multiclass_recall"
    train_counts = result.config.get("train_counts", [None] * len(result.functions))
    test_counts = result.config.get("test_counts", [None] * len(result.functions))
    sparsity = result.sparsity(**selection)
    n_layers = result.n_layers

    per_function, top, layers = [], [], []
    for i, f in enumerate(result.functions):
        table = result.scores(f)
        flat = table.flatten()
        best = int(flat.argmax())
        heads = result.functional_heads(f, **selection)
        chance = 0.5 if source == "ovr" else 1.0 / len(result.functions)
        per_function.append([f, train_counts[i], test_counts[i], f"{best // result.n_heads}.{best % result.n_heads}",
                             float(flat.max()), float(flat.mean()), float(statistics.median(flat.tolist())), chance,
                             len(heads), sparsity[f]])  # fmt: skip
        acc = result.scores(f, "accuracy") if source == "ovr" else table
        top += [[f, rank, layer, head, float(table[layer, head]), float(acc[layer, head])]
                for rank, (layer, head) in enumerate(heads, start=1)]  # fmt: skip
        layers.append([f, *result.layer_distribution(f, **selection).tolist()])
    overlap = result.overlap(**selection)
    tables = {
        "sparsity": (["function", "n_train", "n_test", "best_head", f"best_{score}", f"mean_{score}",
                      f"median_{score}", "chance", "n_selected", "fraction_selected"], per_function),
        "functional_heads": (["function", "rank", "layer", "head", score, "accuracy" if source == "ovr" else score],
                             top),
        "heads_per_layer": (["function", *[f"layer_{layer}" for layer in range(n_layers)]], layers),
        "overlap": (["function", *result.functions],
                    [[f, *overlap[i].tolist()] for i, f in enumerate(result.functions)]),
    }  # fmt: skip
    if result.multiclass_accuracy is not None:
        mc, mc_bal = result.multiclass_accuracy.flatten(), result.multiclass_balanced_accuracy.flatten()
        best = int(mc_bal.argmax())
        tables["multiclass"] = (
            ["best_head", "best_balanced_accuracy", "its_accuracy", "mean_balanced_accuracy", "mean_accuracy",
             "chance"],
            [[f"{best // result.n_heads}.{best % result.n_heads}", float(mc_bal[best]), float(mc[best]),
              float(mc_bal.mean()), float(mc.mean()), 1.0 / len(result.functions)]],
        )  # fmt: skip
    return tables


_TITLES = {
    "sparsity": "Held-out probe scores and selected heads per function",
    "multiclass": "Multiclass probe (all functions at once)",
    "functional_heads": "Functional heads (best first)",
    "heads_per_layer": "Functional heads per layer",
    "overlap": "Overlap of the functions' head sets (Jaccard)",
}


# --------------------------------------------------------------------------------------------
# The command


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens probe``; returns the exit code."""
    _check_inputs(args)
    import torch

    from vh_lens.data.cogvision import load_cogvision, subquestion_samples
    from vh_lens.distributed import is_main_process
    from vh_lens.functional_heads.activations import collect_head_activations
    from vh_lens.functional_heads.interventions import intervene_on_functions
    from vh_lens.functional_heads.probes import probe_heads
    from vh_lens.plotting.functional import (
        plot_function_head_maps,
        plot_function_interventions,
        plot_function_overlap,
        plot_heads_per_layer,
        plot_sorted_scores,
    )
    from vh_lens.reports.experiments import write_probe_report
    from vh_lens.reports.page import command_settings

    progress = not args.no_progress and is_main_process()
    selection: dict[str, Any] = {} if args.k is None else {"k": args.k}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    items = load_cogvision(args.data, images_dir=args.images, on_missing="skip" if args.skip_bad else "error")
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise ValueError(f"{args.data} holds no items")
    samples = subquestion_samples(items, context=args.context, functions=args.functions)
    if not samples:
        raise ValueError(f"no subquestion of {args.data} has one of the labels {args.functions}")

    t0 = time.perf_counter()
    model = load_model(args)
    timings["load_model_s"] = time.perf_counter() - t0
    generated = args.max_new_tokens - 1 if args.intervene != "none" and args.eval_method == "generate" else 0
    samples, record = screen_and_record(
        args, model, samples, with_answers=args.position == "answer_mean", extra_tokens=generated
    )
    if args.intervene != "none":  # the main questions are evaluated too
        from vh_lens.commands._inputs import check_context
        from vh_lens.data.cogvision import main_question_samples

        kept = {s.metadata.get("item_id") for s in samples}
        mains = [m for m in main_question_samples(items) if m.metadata["item_id"] in kept]
        check_context(model, mains, extra_tokens=generated, what="main question of")
    warnings = [unknown_token_warning(model, samples)]
    with staged_output(args.out, args.overwrite) as tmp:
        cfg = model.cfg
        size_mb = len(samples) * cfg.n_layers * cfg.n_heads * cfg.d_head * 2 / 2**20
        stream = args.save_activations or size_mb > args.stream_mb
        t0 = time.perf_counter()
        acts = collect_head_activations(model, samples, position=args.position, batch_size=args.batch_size,
                                        out_dir=tmp / "activations" if stream else None, progress=progress)  # fmt: skip
        timings["collect_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = probe_heads(acts, functions=args.functions, seed=args.split_seed, test_fraction=args.test_fraction,
                             mode=args.mode)  # fmt: skip
        timings["probe_s"] = time.perf_counter() - t0
        warnings = [w for w in [*warnings, few_items_warning(result)] if w]
        for line in warnings if is_main_process() else ():
            print(f"vh-lens probe: warning: {line}", file=sys.stderr)
        result.save(tmp / "probe")
        write_csv(tmp / "head_scores.csv", result.to_rows())

        tables = _tables(result, selection)
        for name in ("sparsity", "functional_heads", "heads_per_layer", "overlap"):
            (tmp / f"{name}.csv").write_text(_csv(*tables[name]), encoding="utf-8")

        report = None
        if args.intervene != "none":
            t0 = time.perf_counter()
            report = intervene_on_functions(
                model, samples, result, mode=args.intervene, removal=args.removal, emphasis=args.emphasis,
                alpha=args.alpha, k=args.k, control_seeds=args.seeds, acts=acts, eval_method=args.eval_method,
                main_answer=args.main_answer, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                progress=progress,
            )  # fmt: skip
            timings["intervene_s"] = time.perf_counter() - t0
            report.save(tmp / "interventions")
        matrix = None
        if args.cross_function:
            from vh_lens.functional_heads.cross_function import cross_function_matrix

            matrix = cross_function_matrix(report)
            matrix.save(tmp / "cross_function")

        heads = "the elbow of the sorted scores" if args.k is None else f"the top {args.k}"
        summary = [f"# Functional heads: {args.data.name}", "",
                   f"{len(items)} items, {len(samples)} subquestions, {len(result.functions)} functions; "
                   f"train {result.config['n_train']} / test {result.config['n_test']} subquestions (split by main "
                   f"question, seed {args.split_seed}); hook_z at {args.position}; context {args.context}; heads per "
                   f"function: {heads}. Scores are held-out; chance is 0.5 for function-vs-rest balanced accuracy.",
                   "", *[f"**Warning:** {w}\n" for w in warnings]]  # fmt: skip
        for name, (header, rows) in tables.items():
            summary += [f"## {_TITLES[name]}", "", _markdown(header, rows)]
        if report is not None:
            summary += ["## Interventions", "", report.to_markdown()]
        if matrix is not None:
            order = ", ".join(f"{f} ({100 * v:+.1f})" for f, v in matrix.upstream_order())
            summary += ["## Cross-function matrix", "", "Extra accuracy lost (pp) on the column's subquestions when "
                        "the row's heads are removed, vs as many random heads.", "", matrix.to_markdown(), "",
                        f"Upstream order (gives minus takes): {order}", ""]  # fmt: skip
        summary_text = "\n".join(summary)
        (tmp / _SUMMARY_FILE).write_text(summary_text, encoding="utf-8")

        figures = [plot_function_head_maps(result, **selection), plot_heads_per_layer(result, **selection),
                   plot_function_overlap(result, **selection),
                   *[plot_sorted_scores(result, f) for f in result.functions]]  # fmt: skip
        if report is not None:
            figures.append(plot_function_interventions(report))
        if matrix is not None:
            from vh_lens.functional_heads.cross_function import plot_cross_function

            figures.append(plot_cross_function(matrix))
        write_probe_report(tmp / "report.html", title=f"Functional heads: {args.data.name}", tables=tables,
                           titles=_TITLES, figures=figures, report=report, notes=[summary[2]], warnings=warnings,
                           settings=command_settings(args, "vh-lens probe"), plotlyjs=args.plotlyjs)  # fmt: skip
        timings["total_s"] = time.perf_counter() - start
        info = {"argv": sys.argv[1:], "data": str(args.data), "model": str(args.model), "n_items": len(items),
                "n_subquestions": len(samples), "functions": list(result.functions), "activations_streamed": stream,
                "activations_mb": size_mb, "timings": timings, "torch_threads": torch.get_num_threads(), "warnings": warnings} | record  # fmt: skip
        (tmp / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if is_main_process():  # under torchrun every rank runs its shard of the samples; rank 0 writes
        print(summary_text, end="")
        print(f"wrote {args.out} in {timings['total_s']:.1f} s", file=sys.stderr)
    return 0


def unknown_fraction(model: Any, samples: Sequence[Any]) -> float:
    """The fraction of the prompts' text tokens that are the tokenizer's unknown token (0 without one)."""
    from vh_lens.evaluation.answers import format_question

    tokenizer = model.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0.0
    total = unknown = 0
    for sample in samples:
        ids = tokenizer(format_question(sample), add_special_tokens=False)["input_ids"]
        total += len(ids)
        unknown += sum(int(i) == int(unk) for i in ids)
    return unknown / total if total else 0.0


def unknown_token_warning(model: Any, samples: Sequence[Any]) -> str | None:
    """A warning when most text tokens are unknown to the tokenizer (:data:`MAX_UNKNOWN`), else ``None``."""
    fraction = unknown_fraction(model, samples)
    if fraction <= MAX_UNKNOWN:
        return None
    token = getattr(model.tokenizer, "unk_token", None) or "unknown"
    return (f"{fraction:.0%} of the prompts' text tokens are {token} to this model's tokenizer: the probes can read "
            "little more than prompt length, digits and punctuation, not what the questions ask")  # fmt: skip


def few_items_warning(result: Any) -> str | None:
    """A warning naming the functions with fewer than :data:`MIN_TEST_ITEMS` held-out subquestions."""
    counts = result.config.get("test_counts") or []
    few = [(f, int(n)) for f, n in zip(result.functions, counts) if int(n) < MIN_TEST_ITEMS]
    if not few:
        return None
    shown = ", ".join(f"{f} ({n})" for f, n in few)
    return (f"fewer than {MIN_TEST_ITEMS} held-out subquestions for {shown}: their scores rest on too few items to "
            "call any head functional")  # fmt: skip
