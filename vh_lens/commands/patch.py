"""``vh-lens patch``: causal maps over the image by activation and attribution patching.

Two ways to run it:

``vh-lens patch --out DIR``
    The toy LLaVA shipped with the package on generated shape-counting samples
    (:func:`vh_lens.data.shapes.shapes`, ``--kinds``, ``--n-samples``, ``--seed``).

``vh-lens patch --model DIR --data FILE --format FMT --out DIR``
    A local LLaVA checkpoint on a benchmark file (the readers of ``vh-lens mask``). Samples
    need a fixed candidate list (counting, yes/no or multiple choice) for the metric.

Per sample, clean run c = the sample; corrupted run r (``--corruption``): ``embed-noise``
(Gaussian noise on the image features, ``--noise-scale`` x their std, causal tracing),
``grey`` / ``blur`` / ``noise`` (the sample's box region of the image), or ``other`` (the next
sample's image, which must have the same token geometry). Metric (``--metric``): logit
difference of the gold answer's token against the foil, the candidate the corrupted run
prefers (``logit_diff``), or the gold token's log-probability (``logprob``), at the answer
query position, averaged over the samples. Effects are normalised, 1 = the full clean
effect: ``(m_patched - m(r)) / (m(c) - m(r))``.

Writes into ``--out``, which appears only when the run succeeds:

- ``heads_activation/``, ``heads_attribution/``: per layer x head (``hook_z``, at the query
  position or at all positions, ``--head-positions``);
- ``positions_activation/``, ``positions_attribution/``: per layer x image token
  (``--activation``, default ``resid_pre``), averaged over the samples (all images must have one
  token geometry);
- ``regions_activation/``, ``regions_attribution/``: the image tokens of each sample's box, and
  the rest of the image, patched together (samples with a box only);
- ``summary.json`` (metrics, correlation of attribution with activation patching per grid, the
  box's share of the region effect), ``patch.md`` (the same as a table), ``patch.html``
  (figures: layer x head maps, the per-position map over the first sample's image, attribution
  against patching).

Each result folder is a :class:`vh_lens.patching.PatchingResult` (``PatchingResult.load``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vh_lens.commands._inputs import (
    MODEL_HELP,
    add_n_ctx_argument,
    check_n_ctx,
    model_path,
)
from vh_lens.commands.mask import (
    FORMATS,
    add_output_arguments,
    add_question_format_refusal,
    staged_output,
)

CORRUPTIONS = ("embed-noise", "grey", "blur", "noise", "other")
GRIDS = ("heads", "positions", "regions")
_DTYPES = ("float32", "float16", "bfloat16")


def register(subparsers: Any) -> None:
    """Add ``patch`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "patch",
        help="causal maps over the image: activation and attribution patching of heads, image tokens, regions",
        description="Activation patching (clean -> corrupted) and attribution patching per head, per image token "
        "and per image region; normalised effects (1 = the full clean effect).",
    )
    src = parser.add_argument_group("model and data (leave out for the toy model on generated samples)")
    src.add_argument(
        "--model",
        type=model_path,
        default=None,
        help=f"{MODEL_HELP} (the default, on generated samples, when --data is not given)",
    )
    src.add_argument("--data", type=Path, default=None, help="the benchmark's annotation file")
    src.add_argument("--format", choices=FORMATS, default=None, help="the data file's format")
    src.add_argument("--images", type=Path, default=None, help="folder of the images (see vh-lens mask)")
    src.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    add_question_format_refusal(src)
    demo = parser.add_argument_group("generated samples (toy model)")
    demo.add_argument("--n-samples", type=int, default=8, help="generated samples (default 8)")
    demo.add_argument("--kinds", default="count_super", help="comma-separated question kinds (default count_super)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the samples and of the noise (default 0)")
    run = parser.add_argument_group("patching")
    run.add_argument(
        "--corruption", choices=CORRUPTIONS, default="embed-noise", help="the corrupted run (default embed-noise)"
    )
    run.add_argument(
        "--noise-scale", type=float, default=3.0, help="embed-noise std in units of the features' std (default 3)"
    )
    run.add_argument("--metric", choices=("logit_diff", "logprob"), default="logit_diff", help="default logit_diff")
    run.add_argument(
        "--grids", default="heads,positions,regions", help="comma-separated subset of heads,positions,regions"
    )
    run.add_argument(
        "--head-positions", choices=("query", "all"), default="query", help="heads: patch hook_z where (default query)"
    )
    run.add_argument(
        "--activation", default="resid_pre", help="positions and regions: the activation (default resid_pre)"
    )
    run.add_argument("--layers", default=None, help="comma-separated layers for positions and regions (default all)")
    run.add_argument("--no-attribution", action="store_true", help="skip attribution patching")
    run.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    run.add_argument("--device", default=None, help="torch device (default cpu)")
    run.add_argument("--dtype", choices=_DTYPES, default=None, help="parameter dtype (default: the checkpoint's)")
    add_n_ctx_argument(run)
    add_output_arguments(parser)
    parser.set_defaults(func=run_patch)


def _csv(text: str | None, what: str, choices: Sequence[str] | None = None, cast: Any = str) -> list[Any] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what} is empty")
    if choices is not None:
        bad = [t for t in items if t not in choices]
        if bad:
            raise ValueError(f"--{what}: unknown {bad[0]!r}; expected some of {', '.join(choices)}")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None


def _check(args: argparse.Namespace) -> None:
    from vh_lens.commands.mask import check_inputs, refuse_question_format
    from vh_lens.patching.sites import RESID_ACTIVATIONS
    from vh_lens.toy import TOY_PATH

    refuse_question_format(args)
    check_n_ctx(args)
    if args.model is not None and args.model == Path(TOY_PATH) and args.data is None and args.format is None:
        args.model = None  # --model toy alone: the toy model on generated samples
    if (args.model is None) != (args.data is None) or (args.data is None) != (args.format is None):
        raise ValueError("give --model, --data and --format together, or none of them (the toy model)")
    if args.model is not None:
        check_inputs(args)
    elif args.n_samples < 1:
        raise ValueError(f"--n-samples must be at least 1, got {args.n_samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.noise_scale > 0:
        raise ValueError(f"--noise-scale must be positive, got {args.noise_scale}")
    if args.activation not in RESID_ACTIVATIONS:
        raise ValueError(f"--activation must be one of {', '.join(RESID_ACTIVATIONS)}, got {args.activation!r}")
    _csv(args.grids, "grids", GRIDS)
    _csv(args.layers, "layers", cast=int)


def _samples(args: argparse.Namespace) -> list[Any]:
    if args.data is not None:
        from vh_lens.commands.mask import load_samples

        return load_samples(args)
    from vh_lens.data.shapes import KINDS, shapes

    kinds = _csv(args.kinds, "kinds", KINDS)
    return shapes(args.n_samples, seed=args.seed, kinds=kinds)


def _model(args: argparse.Namespace) -> Any:
    import torch

    import vh_lens
    from vh_lens.commands._inputs import warn_n_ctx
    from vh_lens.toy import TOY_PATH

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = vh_lens.load_llava(str(args.model or TOY_PATH), device=args.device, dtype=dtype, n_ctx=args.n_ctx)
    warn_n_ctx(model, args, "patch")
    return model


def _formatter(args: argparse.Namespace) -> Any:
    """LLaVA's evaluation prompts (:func:`vh_lens.evaluation.answers.format_question`), on which the toy was trained."""
    from vh_lens.evaluation.answers import format_question

    return format_question


def _corrupt(
    model: Any, args: argparse.Namespace, clean: Any, samples: Sequence[Any], nexts: Sequence[Any], fmt: Any
) -> Any:
    from vh_lens import patching

    if args.corruption == "embed-noise":
        return patching.noise_image_embeddings(clean, scale=args.noise_scale, seed=args.seed)
    images = []
    for i, (s, other) in enumerate(zip(samples, nexts)):
        image = s.load_image()
        if image is None:
            raise ValueError(f"sample {s.metadata.get('id', i)!r} has no image to corrupt")
        if args.corruption == "other":
            images.append(other.load_image())
            continue
        if s.box is None:
            raise ValueError(f"--corruption {args.corruption} edits the sample's box, and sample {i} has none")
        images.append(patching.corrupt_image(image, s.box, args.corruption, seed=args.seed + i))
    corrupt = model.prepare(images=images, questions=[fmt(s) for s in samples])
    patching.check_aligned(clean, corrupt)
    return corrupt


def _metric(model: Any, args: argparse.Namespace, clean: Any, corrupt: Any, samples: Sequence[Any]) -> Any:
    import torch

    from vh_lens import patching
    from vh_lens.evaluation.answers import candidate_strings, gold_index
    from vh_lens.evaluation.scoring import candidate_token_ids

    with torch.no_grad():
        corrupt_logits = model(corrupt)[torch.arange(len(clean)), clean.query_positions.to(model.device)]
    gold, foil = [], []
    for i, s in enumerate(samples):
        candidates = candidate_strings(s)
        prefix, ids = candidate_token_ids(model.tokenizer, clean.prompts[i], candidates)
        if prefix:
            raise ValueError(
                f"sample {i}: the candidates {candidates!r} share leading tokens; the metric reads one token"
            )
        g = gold_index(s)
        others = [j for j in range(len(ids)) if j != g]
        best = max(others, key=lambda j: float(corrupt_logits[i, ids[j]]))
        gold.append(ids[g])
        foil.append(ids[best])
    if args.metric == "logprob":
        return patching.answer_logprob_metric(clean, gold)
    return patching.logit_diff_metric(clean, gold, foil)


def _chunk_results(
    model: Any,
    args: argparse.Namespace,
    clean: Any,
    corrupt: Any,
    metric: Any,
    samples: Sequence[Any],
    grids: list[str],
    layers: list[int] | None,
) -> dict[str, Any]:
    from vh_lens import patching

    sites = {}
    if "heads" in grids:
        sites["heads"] = (patching.head_sites(clean, model.cfg.n_heads, args.head_positions), None)
    if "positions" in grids:
        sites["positions"] = (patching.position_sites(clean, args.activation), layers)
    if "regions" in grids:
        if any(s.box is None for s in samples):
            raise ValueError("--grids regions needs a box in every sample (leave regions out of --grids)")
        region = patching.region_sites(
            clean, [[s.box for s in samples]], ["box"], activation=args.activation, rest=True
        )
        sites["regions"] = (region, layers)
    out = {}
    description = f"corruption {args.corruption}" + (
        f", head positions {args.head_positions}" if "heads" in grids else ""
    )
    for grid, (site, lay) in sites.items():
        out[f"{grid}_activation"] = patching.activation_patch(
            model, clean, corrupt, metric, site, layers=lay, description=description
        )
        if not args.no_attribution:
            out[f"{grid}_attribution"] = patching.attribution_patch(
                model, clean, corrupt, metric, site, layers=lay, description=description
            )
    return out


def run_patch(args: argparse.Namespace) -> int:
    """Run ``vh-lens patch``; returns the exit code."""
    _check(args)
    from tqdm import tqdm

    from vh_lens import patching
    from vh_lens.core import io as _io
    from vh_lens.reports.experiments import write_patch_report
    from vh_lens.reports.page import command_settings

    samples = _samples(args)
    if args.corruption == "other" and len(samples) < 2:
        raise ValueError("--corruption other needs at least two samples")
    grids = _csv(args.grids, "grids", GRIDS)
    layers = _csv(args.layers, "layers", cast=int)
    fmt = _formatter(args)
    with staged_output(args.out, args.overwrite) as tmp:
        model = _model(args)
        from vh_lens.commands._inputs import check_context

        check_context(model, samples, format_question=fmt, exhaustive=args.data is not None)
        parts: dict[str, list[Any]] = {}
        starts = range(0, len(samples), args.batch_size)
        for start in tqdm(starts, desc="patching", unit="batch", disable=args.no_progress):
            chunk = samples[start : start + args.batch_size]
            nexts = [samples[(start + j + 1) % len(samples)] for j in range(len(chunk))]
            clean = model.prepare(images=[s.load_image() for s in chunk], questions=[fmt(s) for s in chunk])
            corrupt = _corrupt(model, args, clean, chunk, nexts, fmt)
            metric = _metric(model, args, clean, corrupt, chunk)
            for name, result in _chunk_results(model, args, clean, corrupt, metric, chunk, grids, layers).items():
                parts.setdefault(name, []).append(result)
        results = {name: patching.merge(rs) for name, rs in parts.items()}
        for name, result in results.items():
            result.save(tmp / name)
        summary = _summary(args, results, len(samples))
        _io.write_json(tmp / "summary.json", _io.nan_to_none(summary), indent=1)
        (tmp / "patch.md").write_text(_markdown(summary), encoding="utf-8")
        write_patch_report(results, tmp / "patch.html", image=samples[0].load_image(), summary_markdown=_markdown(summary),
                           settings=command_settings(args, "vh-lens patch"), plotlyjs=args.plotlyjs)  # fmt: skip
    print(_markdown(summary), end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _summary(args: argparse.Namespace, results: dict[str, Any], n: int) -> dict[str, Any]:
    any_result = next(iter(results.values()))
    out: dict[str, Any] = {
        "model": str(args.model) if args.model else "toy",
        "n_samples": n,
        "corruption": args.corruption,
        "metric": args.metric,
        "clean_metric": any_result.clean_metric,
        "corrupt_metric": any_result.corrupt_metric,
        "grids": {},
    }
    for grid in GRIDS:
        act = results.get(f"{grid}_activation")
        if act is None:
            continue
        entry: dict[str, Any] = {"top": [list(t) for t in act.top(5)]}
        att = results.get(f"{grid}_attribution")
        if att is not None:
            try:
                entry["attribution_correlation"] = act.correlation(att)
            except ValueError:
                entry["attribution_correlation"] = float("nan")
        if grid == "regions":
            box, rest = act.effect[:, 0], act.effect[:, 1]
            entry["box_effect"] = box.tolist()
            entry["rest_effect"] = rest.tolist()
        out["grids"][grid] = entry
    return out


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"patching: {summary['model']}, {summary['n_samples']} samples, corruption {summary['corruption']}, "
        f"metric {summary['metric']}: m(c) = {summary['clean_metric']:.4g}, m(r) = {summary['corrupt_metric']:.4g}",
        "",
        "| grid | attribution vs patching (r) | top cells (layer, index, effect) |",
        "|---|---|---|",
    ]
    for grid, entry in summary["grids"].items():
        r = entry.get("attribution_correlation")
        top = "; ".join(f"L{l} {label} {e:.3f}" for l, label, e in entry["top"][:3])
        lines.append(f"| {grid} | {'-' if r is None else f'{r:.3f}'} | {top} |")
    if "regions" in summary["grids"]:
        e = summary["grids"]["regions"]
        lines += ["", "| layer row | box effect | rest effect |", "|---|---|---|"]
        lines += [f"| {i} | {b:.3f} | {r:.3f} |" for i, (b, r) in enumerate(zip(e["box_effect"], e["rest_effect"]))]
    return "\n".join(lines) + "\n"
