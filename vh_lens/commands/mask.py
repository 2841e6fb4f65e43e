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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vh_lens.core.io import write_json
from vh_lens.commands._inputs import add_input_arguments, check_data_file

FORMATS = ("mmbench", "pope", "seed", "qbench", "pointqa", "jsonl")
QUESTION_FORMATS = ("llava", "toy")
_DTYPES = ("float32", "float16", "bfloat16")


# --------------------------------------------------------------------------------------------
# Shared options


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--format``, ``--images``, ``--limit``, ``--question-format``."""
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
    parser.add_argument(
        "--question-format",
        choices=QUESTION_FORMATS,
        default="llava",
        help="how questions are written: LLaVA's evaluation prompts (default) or the shipped toy model's",
    )
    add_input_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--batch-size``."""
    parser.add_argument("--model", required=True, type=Path, help="a local Hugging Face LLaVA checkpoint folder")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="parameter dtype (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--overwrite``, ``--no-progress``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must not hold files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before loading anything, on missing files and bad option values.

    Raises:
        FileNotFoundError: the data file, image folder or model folder is missing.
        ValueError: an option is out of range, or ``--out`` is in the way.
    """
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


def screen_and_record(args: argparse.Namespace, model: Any, samples: list[Any], **kwargs: Any) -> tuple[list[Any], dict]:
    """Check every sample on ``model`` before anything is written; ``(kept samples, run record)``.

    The record (written by the command as ``inputs.json``) holds the fingerprints of the
    checkpoint, data file and images and the count of items left out by ``--skip-bad``.

    Raises:
        vh_lens.commands._inputs.BadInputError: some sample is bad and ``--skip-bad`` is off.
    """
    from vh_lens.commands._inputs import input_fingerprint, screen_samples, summary_fingerprint

    screened = screen_samples(
        model, samples, skip_bad=args.skip_bad, source=str(args.data), command=_command(args), **kwargs
    )
    inputs = input_fingerprint(args.model, args.data, screened.samples, args.fingerprint)
    record = {"command": f"vh-lens {_command(args)}", "inputs": summary_fingerprint(inputs)} | screened.record()
    record["n_skipped_missing_image"] = int(getattr(args, "n_skipped_missing_image", 0))
    return screened.samples, record


def question_formatter(args: argparse.Namespace) -> Callable[[Any], str] | None:
    """The ``format_question`` function of ``--question-format`` (``None``: the default)."""
    if args.question_format == "toy":
        from vh_lens.toy import format_question

        return format_question
    return None


def load_model(args: argparse.Namespace) -> Any:
    """The :class:`~vh_lens.LlavaLens` of ``--model`` on ``--device`` in ``--dtype``."""
    import torch

    import vh_lens

    dtype = getattr(torch, args.dtype) if args.dtype else None
    return vh_lens.load_llava(args.model, device=args.device, dtype=dtype)


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
    or the new one, whole). Temporary folders of earlier killed runs are removed first. Folders
    and files get the umask's permissions. Parent folders created here are removed again when
    the run fails.
    """
    from vh_lens.core.io import make_temp_dir, publish

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
    parser.add_argument("--scores", required=True, type=Path, help="folder of saved VisualHeadScores (vh-lens scan)")
    parser.add_argument(
        "--ks", type=int, nargs="+", default=[10, 20, 30, 50], help="numbers of heads to remove (default 10 20 30 50)"
    )
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
    if not (args.scores / "metadata.json").is_file():
        raise FileNotFoundError(f"no saved VisualHeadScores in {args.scores} (run vh-lens scan first)")
    from vh_lens.visual_heads.masking import masking_experiment
    from vh_lens.plotting.masking import plot_masking_curves
    from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

    if args.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {args.metric!r}")
    if any(k < 1 for k in args.ks):
        raise ValueError(f"--ks must be positive, got {args.ks}")
    scores = VisualHeadScores.load(args.scores)
    samples = load_samples(args)
    model = load_model(args)
    samples, record = screen_and_record(args, model, samples, format_question=question_formatter(args))
    with staged_output(args.out, args.overwrite) as tmp:
        write_json(tmp / "inputs.json", record, indent=2)
        result = masking_experiment(
            model,
            samples,
            scores,
            ks=args.ks,
            stages=args.stages,
            control_seeds=args.seeds,
            method=args.method,
            metric=args.metric,
            eval_method=args.eval_method,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            format_question=question_formatter(args),
            progress=not args.no_progress,
        )
        result.save(tmp)
        plot_masking_curves(result).write_html(tmp / "masking.html", include_plotlyjs=True)
    print(result.to_markdown(), end="")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
