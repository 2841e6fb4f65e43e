"""``vh-lens mask``: paper A's head-masking table for a model, a benchmark and saved head scores.

Writes into ``--out``: ``masking.csv``, ``masking.md`` (the table), ``masking.json`` (the full
result, :meth:`vh_lens.visual_heads.masking.MaskingResult.load` reads it) and ``masking.html`` (the curves).
The folder appears only when the run succeeds: everything is written into a temporary sibling
folder first and renamed at the end.

The data and model options (``add_data_arguments``, ``load_samples``, ``add_model_arguments``,
``load_model``, ``staged_output``) are shared with ``vh-lens lens``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vh_lens.commands._inputs import (
    MODEL_HELP,
    add_input_arguments,
    add_n_ctx_argument,
    add_report_arguments,
    check_data_file,
    check_n_ctx,
    model_path,
)
from vh_lens.core.io import write_json

FORMATS = ("mmbench", "pope", "seed", "qbench", "pointqa", "jsonl")
QUESTION_FORMAT_REMOVED = (
    "--question-format was removed: the toy model was trained on LLaVA's evaluation prompts "
    "(vh_lens.evaluation.answers.format_question), the one format every command uses, so 'toy' changed nothing"
)
PAPER_KS = (10, 20, 30, 50)
"""Paper A's ks, the default of ``vh-lens mask`` when every stage has room for them and their random control."""
_DTYPES = ("float32", "float16", "bfloat16")


# --------------------------------------------------------------------------------------------
# Shared options


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--format``, ``--images``, ``--limit`` (and the removed ``--question-format``, refused)."""
    parser.add_argument("--data", required=True, type=Path, help="the benchmark's annotation file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the file's format")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the images (needed by pope, seed, qbench and pointqa; jsonl: relative paths start here, "
        "default the data file's folder; mmbench keeps its images in the TSV)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    add_question_format_refusal(parser)
    add_input_arguments(parser)


def add_question_format_refusal(parser: Any) -> None:  # an ArgumentParser or an argument group
    """A hidden ``--question-format`` that :func:`refuse_question_format` turns into a one-line error."""
    parser.add_argument("--question-format", default=None, help=argparse.SUPPRESS)


def refuse_question_format(args: argparse.Namespace) -> None:
    """Raise when the removed ``--question-format`` was given.

    Raises:
        ValueError: ``--question-format`` is on the command line.
    """
    if getattr(args, "question_format", None) is not None:
        raise ValueError(QUESTION_FORMAT_REMOVED)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--batch-size``."""
    parser.add_argument("--model", required=True, type=model_path, help=MODEL_HELP)
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="parameter dtype (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    add_n_ctx_argument(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--overwrite``, ``--no-progress``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must not hold files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_report_arguments(parser)


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before loading anything, on missing files and bad option values.

    Raises:
        FileNotFoundError: the data file, image folder or model folder is missing.
        ValueError: an option is out of range, or ``--out`` is in the way.
    """
    refuse_question_format(args)
    check_n_ctx(args)
    check_data_file(args.data)
    needs_images = args.format in ("pope", "seed", "qbench", "pointqa")
    if needs_images and args.images is None:
        raise ValueError(f"--format {args.format} needs --images DIR (the folder of the benchmark's images)")
    if args.images is not None and not args.images.is_dir():
        raise FileNotFoundError(f"image folder {args.images} does not exist")
    if not args.model.is_dir():
        raise FileNotFoundError(f"model folder {args.model} does not exist")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_out(args.out, args.overwrite)


def load_samples(args: argparse.Namespace) -> list[Any]:
    """The samples of ``--data`` read with the reader of ``--format``."""
    from vh_lens.data import (
        load_jsonl,
        load_mmbench,
        load_pointqa_counting,
        load_pope,
        load_qbench,
        load_seed_bench,
    )

    fmt, path, images, limit = args.format, args.data, args.images, args.limit
    miss = "skip" if getattr(args, "skip_bad", False) else "error"
    readers: dict[str, Callable[[], Any]] = {
        "mmbench": lambda: load_mmbench(path, limit=limit, on_missing=miss),
        "pope": lambda: load_pope(path, images, limit=limit, on_missing=miss),
        "seed": lambda: load_seed_bench(path, images, limit=limit, on_missing=miss),
        "qbench": lambda: load_qbench(path, images, limit=limit, on_missing=miss),
        "pointqa": lambda: load_pointqa_counting(path, images, limit=limit, on_missing=miss),
        "jsonl": lambda: load_jsonl(path, images_dir=images, limit=limit, on_missing=miss),
    }
    read = readers[fmt]()
    samples = list(read)
    if not samples:
        raise ValueError(f"{path} holds no samples")
    if read.n_skipped:
        print(f"vh-lens {_command(args)}: left out {read.n_skipped} samples whose image is missing (--skip-bad)",
              file=sys.stderr)  # fmt: skip
    args.n_skipped_missing_image = read.n_skipped
    return samples


def _command(args: argparse.Namespace) -> str:
    return str(getattr(args, "command", None) or "mask")


def screen_and_record(
    args: argparse.Namespace, model: Any, samples: list[Any], **kwargs: Any
) -> tuple[list[Any], dict]:
    """Check every sample on ``model`` before anything is written; ``(kept samples, run record)``.

    The record (written by the command as ``inputs.json``) holds the fingerprints of the
    checkpoint, data file and images and the count of items left out by ``--skip-bad``.

    Raises:
        vh_lens.commands._inputs.BadInputError: some sample is bad and ``--skip-bad`` is off.
    """
    from vh_lens.commands._inputs import (
        input_fingerprint,
        screen_samples,
        summary_fingerprint,
    )

    screened = screen_samples(
        model, samples, skip_bad=args.skip_bad, source=str(args.data), command=_command(args), **kwargs
    )
    inputs = input_fingerprint(args.model, args.data, screened.samples, args.fingerprint)
    record = {"command": f"vh-lens {_command(args)}", "inputs": summary_fingerprint(inputs)} | screened.record()
    record["n_skipped_missing_image"] = int(getattr(args, "n_skipped_missing_image", 0))
    return screened.samples, record


def load_model(args: argparse.Namespace) -> Any:
    """The :class:`~vh_lens.LlavaLens` of ``--model`` on ``--device`` in ``--dtype`` with ``--n-ctx``."""
    import torch

    import vh_lens
    from vh_lens.commands._inputs import warn_n_ctx

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = vh_lens.load_llava(args.model, device=args.device, dtype=dtype, n_ctx=getattr(args, "n_ctx", None))
    warn_n_ctx(model, args, _command(args))
    return model


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def finish_interrupted(out: Path) -> None:
    """Finish a publish of ``out`` that a killed run left half done, and delete its temporary folders.

    A run killed between the two renames of :func:`vh_lens.core.io.publish` leaves a journal beside
    ``out``; the complete new output it names is moved into place. Leftover ``.{out}.*.partial``
    (killed while writing) and ``.{out}.*.old`` folders are removed.
    """
    from vh_lens.core.io import recover_publish, remove_stale

    out = Path(out).absolute()
    recover_publish(out.parent / f".{out.name}.publish.json")
    stem = glob.escape(f".{out.name}.")
    remove_stale(out.parent, [f"{stem}*.partial", f"{stem}*.old", f".{stem}publish.json.*.tmp"])


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``, on error it is removed.

    An existing ``out`` is replaced only with ``overwrite`` and only once the new output is
    complete, in one step (:func:`vh_lens.core.io.publish`: a failure or a kill leaves the old output
    or the new one, whole), then linked with sibling output folders
    (:func:`vh_lens.reports.outputs.link_output_folder`). Temporary folders of earlier killed runs are removed first. Folders
    and files get the umask's permissions. Parent folders created here are removed again when
    the run fails.
    """
    from vh_lens.core.io import make_temp_dir, publish
    from vh_lens.distributed import is_main_process

    if not is_main_process():  # under torchrun only rank 0 writes; the others write to a scratch folder
        scratch = Path(tempfile.mkdtemp(prefix="vh_lens_rank_"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    out = Path(out).absolute()
    finish_interrupted(out)
    _check_out(out, overwrite)
    created = next((p for p in reversed([out.parent, *out.parent.parents]) if not p.exists()), None)
    tmp = make_temp_dir(out.parent, f".{out.name}.", ".partial")
    try:
        yield tmp
        publish([(tmp, out)], out.parent / f".{out.name}.publish.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    from vh_lens.reports.outputs import link_output_folder

    link_output_folder(out)  # sibling output folders' pages linked, their parent's index.html


# --------------------------------------------------------------------------------------------
# The command


def register(subparsers: Any) -> None:
    """Add ``mask`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "mask",
        help="accuracy with each stage's top-k visual heads (or k random heads) removed",
        description=(
            "Paper A's head masking: remove the top-k heads of each stage (early/mid/late layers) by a saved "
            "head score, or k random heads of the stage, and measure benchmark accuracy."
        ),
    )
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument(
        "--scores", required=True, type=Path,
        help="saved VisualHeadScores: vh-lens scan's --out folder, or its scores/ folder",
    )  # fmt: skip
    parser.add_argument(
        "--ks", type=int, nargs="+", default=None,
        help="numbers of heads to remove (default: paper A's 10 20 30 50 where every stage has room for them and "
        "their random control, else four ks below half the smallest stage's heads)",
    )  # fmt: skip
    parser.add_argument(
        "--stages", nargs="+", choices=("early", "mid", "late"), default=["early", "mid", "late"], help="stages"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the random controls")
    parser.add_argument("--method", choices=("zero", "mean", "uniform"), default="zero", help="ablation (default zero)")
    parser.add_argument(
        "--metric",
        default="detection",
        help="score that ranks the heads: image_weight, region_weight, text_weight, concentration or detection "
        "(default)",
    )
    parser.add_argument(
        "--eval-method", choices=("score", "generate"), default="score",
        help="read answers by first-token logits (default) or by greedy generation",
    )  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=8, help="generation length for --eval-method generate")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens mask``; returns the exit code."""
    check_inputs(args)
    scores_dir = scores_folder(args.scores)
    from vh_lens.reports.experiments import write_mask_report
    from vh_lens.reports.page import command_settings
    from vh_lens.visual_heads.masking import masking_experiment
    from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

    if args.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {args.metric!r}")
    if args.ks is not None and any(k < 1 for k in args.ks):
        raise ValueError(f"--ks must be positive, got {args.ks}")
    scores = VisualHeadScores.load(scores_dir)
    ks, notes = plan_ks(args.ks, args.stages, scores.n_layers, scores.n_heads, n_seeds=len(args.seeds))
    for note in notes:
        print(f"vh-lens mask: {note}", file=sys.stderr)
    samples = load_samples(args)
    model = load_model(args)
    samples, record = screen_and_record(args, model, samples, extra_tokens=_eval_extra_tokens(args))
    record["ks"] = list(ks)
    record["warnings"] = [n for n in notes if n.startswith("warning:")]
    with staged_output(args.out, args.overwrite) as tmp:
        write_json(tmp / "inputs.json", record, indent=2)
        result = masking_experiment(
            model,
            samples,
            scores,
            ks=ks,
            stages=args.stages,
            control_seeds=args.seeds,
            method=args.method,
            metric=args.metric,
            eval_method=args.eval_method,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
        )
        result.save(tmp)
        write_mask_report(result, tmp / "masking.html", settings=command_settings(args, "vh-lens mask"),
                          plotlyjs=args.plotlyjs)  # fmt: skip
    print(result.to_markdown(), end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _eval_extra_tokens(args: argparse.Namespace) -> int:
    """Positions generation adds after the prompt (the last new token is not fed back)."""
    return args.max_new_tokens - 1 if args.eval_method == "generate" else 0


def scores_folder(path: Path) -> Path:
    """The folder of saved scores that ``--scores`` names: itself, or a scan's output folder's ``scores/``.

    Raises:
        FileNotFoundError: neither ``path`` nor ``path/scores`` holds saved scores.
    """
    if (path / "metadata.json").is_file():
        return path
    if (path / "scores" / "metadata.json").is_file():
        return path / "scores"
    raise FileNotFoundError(
        f"no saved VisualHeadScores in {path} or {path / 'scores'} (run vh-lens scan --out {path} first)"
    )


def plan_ks(
    ks: list[int] | None, stages: list[str], n_layers: int, n_heads: int, *, n_seeds: int
) -> tuple[tuple[int, ...], list[str]]:
    """The ks to run, and the lines to print about them (``"warning: ..."`` where a result is degraded).

    Without ``ks``: paper A's :data:`PAPER_KS` when each stage has more than twice as many heads
    as the largest (so none is capped and the random control, ``k`` heads drawn from those
    outside the top ``k``, has a choice), else four ks up to ``(smallest stage - 1) // 2``. With
    ``ks``: a warning for the ks capped at a stage's head count (identical columns), for those
    too large for a random control, and for those whose control is forced (exactly half a stage).
    """
    from vh_lens.visual_heads.scores import stage_layers

    sizes = {s: len(stage_layers(s, n_layers)) * n_heads for s in stages}  # type: ignore[arg-type]
    sizes = {s: n for s, n in sizes.items() if n > 0}
    if not sizes:
        return tuple(ks or PAPER_KS), []  # masking_experiment refuses this model with its own message
    smallest = min(sizes.values())
    notes: list[str] = []
    if ks is None:
        most = (smallest - 1) // 2  # k heads outside the top k, and more than k: the draw has a choice
        if max(PAPER_KS) <= most:
            return PAPER_KS, []
        chosen = tuple(sorted({max(1, most * j // 4) for j in range(1, 5)}))
        notes.append(
            f"--ks not given: using {' '.join(map(str, chosen))} (paper A's 10 20 30 50 do not fit: a stage has "
            f"{smallest} heads here, and a random control needs k below half of them)"
        )
        return chosen, notes
    ks_sorted = tuple(sorted(set(ks)))
    for n in sorted(set(sizes.values())):
        where = "stage" + ("s " if sum(v == n for v in sizes.values()) > 1 else " ")
        where += ", ".join(s for s, v in sizes.items() if v == n)
        capped = [k for k in ks_sorted if k > n]
        if capped:
            notes.append(
                f"warning: k={', '.join(map(str, capped))} capped at the {n} heads of {where} (the same heads as "
                f"k={n}: identical columns)"
            )
        no_control = [k for k in ks_sorted if n - min(k, n) < min(k, n)]
        if no_control and n_seeds:
            notes.append(
                f"warning: no random control for k={', '.join(map(str, no_control))} in {where}: it needs k heads "
                f"outside the top k, so k at most {n // 2} of {n} heads"
            )
        fixed = [k for k in ks_sorted if n - k == k]
        if fixed and n_seeds:
            notes.append(
                f"warning: k={', '.join(map(str, fixed))} in {where}: the random control is the only {fixed[0]} heads "
                "outside the top k, the same for every seed (std 0)"
            )
    return tuple(ks), notes
