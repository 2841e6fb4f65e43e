"""``vh-lens scan``: paper A's visual-head scan of a model over a data set, with an HTML report.

Two ways to run it:

``vh-lens scan --model DIR --data FILE --format looktwice|vip-pointqa|jsonl --out DIR ...``
    Scan a local LLaVA checkpoint over a PointQA / LookTwice-QA file (one question type,
    ``--question``, plain or with the box drawn, ``--visual-prompt``) or a JSON-lines file.

``vh-lens scan`` (and ``vh-lens`` alone): the main job
    Scan the toy LLaVA shipped with the package (``vh_lens/assets/toy_llava``) on generated
    shape-counting samples (:func:`vh_lens.data.shapes.shapes`, paper A's three counting
    question types, box drawn as the toy was trained) and write the report to
    ``./vh_lens_report`` (or ``--out``). When the toy checkpoint is not installed it falls back
    to a random-weight tiny LLaVA and says so, in the output and in the report: such a demo
    shows the pipeline, not findings.

Output folder ``--out``:

- ``scores/``: the :class:`~vh_lens.visual_heads.scores.VisualHeadScores` (``scores.safetensors``,
  ``metadata.json``, ``heads.csv`` with one row per head);
- ``report.html``: :func:`vh_lens.reports.scan.write_scan_report` (heatmaps of every metric, weight
  against concentration, per-layer totals, the top heads' attention over example samples' images
  and the mean map; with ``--compare`` the plain vs visual-prompt comparison, with ``--lens`` the
  logit-lens rank traces; then top-heads tables per stage), and ``plotly.min.js`` beside it (``--plotlyjs``);
- ``checkpoint/``: the running statistics, saved every ``--checkpoint-every`` samples.
  Rerunning the same command after an interruption continues from there and ends with the
  result of an uninterrupted run; a larger ``--limit`` (or ``--n-samples``) extends a finished
  run. The checkpoint remembers the run's settings and the fingerprints of what it read
  (:mod:`vh_lens.core.fingerprint`: checkpoint files, data file, images) and refuses another model,
  data set or option, or the same paths with other contents, naming the file that changed
  (``--overwrite`` starts afresh).

``scores/`` and ``report.html`` appear only at the end, complete (written in a temporary
folder and moved into place together, :func:`vh_lens.core.io.publish`). Bad input (a missing data
file, model folder or image, a malformed file, an image that does not decode, a box outside its
image, a prompt longer than the context) is found before anything is written: the command then
exits with status 1 and a one-line message listing the bad items by file and line;
``--skip-bad`` leaves them out instead and records how many in the scores' metadata.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
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
from vh_lens.commands.scan_output import (
    REPORT,
    SCORES,
    finish_interrupted,
    prepare_checkpoint,
    publish_outputs,
    run_settings,
    scan_summary,
)

FORMATS = ("looktwice", "vip-pointqa", "jsonl")
QUESTIONS = ("general", "object", "super")
QUERIES = ("last_prompt", "answer_token")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OUT = Path("vh_lens_report")
DEFAULT_N_SAMPLES = 240
"""Generated samples of the no-argument main job (80 per counting question type)."""
RANDOM_MODEL_NOTE = "demo on a random-weight model: no findings"


def register(subparsers: Any) -> None:
    """Add ``scan`` to the ``vh-lens`` subcommands."""
    parser = subparsers.add_parser(
        "scan",
        help="score every attention head as a visual head (paper A); with no arguments, scan the shipped toy model",
        description=(
            "Paper A's visual-head scan: each head's attention weight on the image, on the question's box and on "
            "the text, its concentration over the image tokens and the detection score, averaged over a data set; "
            "writes the scores and an HTML report. With no --model/--data: scan the toy LLaVA shipped with the "
            "package on generated shape-counting samples (a random-weight demo model if the toy is not installed)."
        ),
    )
    data = parser.add_argument_group("model and data (leave both out for the toy-model demo)")
    data.add_argument(
        "--model", type=model_path, default=None,
        help=f"{MODEL_HELP} (--model toy without --data: the demo on the toy model)",
    )  # fmt: skip
    data.add_argument("--data", type=Path, default=None, help="the data file")
    data.add_argument("--format", choices=FORMATS, default=None, help="the data file's format")
    data.add_argument(
        "--images", type=Path, default=None,
        help="image folder (needed by looktwice and vip-pointqa; jsonl: relative paths start here, default the "
        "data file's folder)",
    )  # fmt: skip
    data.add_argument(
        "--question", choices=QUESTIONS, default=None,
        help="PointQA question type (looktwice, vip-pointqa; default general). Demo: only this counting type "
        "(default all three)",
    )  # fmt: skip
    data.add_argument(
        "--visual-prompt", action="store_true",
        help="draw each question's box on its image in red (the demo always shows the box, as the toy was trained)",
    )  # fmt: skip
    data.add_argument("--limit", type=int, default=None, help="use at most this many samples of the data file")

    demo = parser.add_argument_group("the demo (no --model/--data)")
    demo.add_argument(
        "--n-samples", type=int, default=DEFAULT_N_SAMPLES,
        help=f"generated samples (default {DEFAULT_N_SAMPLES})",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default 0)")

    scan = parser.add_argument_group("scan")
    scan.add_argument(
        "--query", choices=QUERIES, default="last_prompt",
        help="attention row read: the last prompt position (default) or the greedy first answer token "
        "(the authors' code)",
    )  # fmt: skip
    scan.add_argument(
        "--detection-weight", choices=("image", "region"), default="image",
        help="weight W in the detection score f(l) * W * C (default image)",
    )  # fmt: skip
    scan.add_argument(
        "--min-overlap", type=float, default=0.0,
        help="fraction of a patch the box must cover to count in the region (default 0: any overlap)",
    )  # fmt: skip
    scan.add_argument("--keep-per-sample", action="store_true", help="also save [samples, layers, heads] arrays")
    scan.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    scan.add_argument("--device", default=None, help="torch device (default cpu)")
    scan.add_argument("--dtype", choices=DTYPES, default=None, help="parameter dtype (default: the checkpoint's)")
    add_n_ctx_argument(scan)
    scan.add_argument(
        "--checkpoint-every", type=int, default=64,
        help="save the running statistics to OUT/checkpoint every N samples (default 64)",
    )  # fmt: skip

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help=f"output folder (default for the demo: ./{DEFAULT_OUT})")
    out.add_argument("--top-k", type=int, default=10, help="heads per top-heads table (default 10)")
    out.add_argument(
        "--overwrite", action="store_true",
        help="discard a checkpoint of a run with other settings in --out and start afresh",
    )  # fmt: skip
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument(
        "--compare", type=Path, default=None, metavar="SCAN_OUT",
        help="the other scan of a plain / --visual-prompt pair (its --out folder or scores/; same model, data and "
        "questions): the report adds the plain vs visual-prompt comparison",
    )  # fmt: skip
    out.add_argument("--lens", type=Path, default=None, metavar="LENS_OUT",
                     help="a vh-lens lens --out folder of the same model: the report adds its rank traces")  # fmt: skip
    add_input_arguments(out)
    add_report_arguments(out)
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# Checking the arguments (before anything is loaded or written)


def is_demo(args: argparse.Namespace) -> bool:
    """Whether this is the demo (no --model or --model toy, and no --data); refuses half of --model / --data."""
    if args.data is None and args.model is not None and args.model == toy_path():
        if not toy_available():
            raise FileNotFoundError(f"--model toy: the toy checkpoint is not installed at {toy_path()}")
        args.model = None  # --model toy alone: the demo, on the toy model (no random-weight fallback)
    if args.model is None and args.data is None:
        for name in ("format", "images", "limit"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name} needs --model and --data (leave all three out for the toy-model demo)")
        return True
    if args.model is None or args.data is None:
        raise ValueError("give both --model and --data (or neither, for the toy-model demo)")
    return False


def check_arguments(args: argparse.Namespace, demo: bool) -> None:
    """Fail fast on bad option values and missing files.

    Raises:
        FileNotFoundError: the data file, image folder or model folder is missing.
        ValueError: an option is out of range or does not fit the others.
    """
    positive = {"--batch-size": args.batch_size, "--checkpoint-every": args.checkpoint_every, "--top-k": args.top_k}
    positive |= {"--n-samples": args.n_samples} if demo else {"--limit": args.limit}
    for name, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    check_n_ctx(args)
    if not 0.0 <= args.min_overlap <= 1.0:
        raise ValueError(f"--min-overlap must be in [0, 1], got {args.min_overlap}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    if demo:
        return
    if args.format is None:
        raise ValueError(f"--data needs --format ({' | '.join(FORMATS)})")
    if args.out is None:
        raise ValueError("--data needs --out DIR (where the scores and the report go)")
    check_data_file(args.data)
    if args.format == "jsonl" and args.question is not None:
        raise ValueError("--question selects a PointQA question type; a jsonl file carries its own questions")
    if args.format != "jsonl" and args.images is None:
        raise ValueError(f"--format {args.format} needs --images DIR (the folder of the images)")
    if args.images is not None and not args.images.is_dir():
        raise FileNotFoundError(f"image folder {args.images} does not exist")
    if not args.model.is_dir():
        raise FileNotFoundError(f"model folder {args.model} does not exist")


# --------------------------------------------------------------------------------------------
# Samples and model


def load_data_samples(args: argparse.Namespace) -> Any:
    """The samples of ``--data`` (a :class:`~vh_lens.data.SampleSet`).

    Raises:
        FileNotFoundError: images listed in the file are missing (one line naming the first ones).
        ValueError: the file is malformed (the reader's message names the record).
    """
    from vh_lens.data import (
        MissingImagesError,
        load_jsonl,
        load_looktwice,
        load_vip_pointqa,
        with_visual_prompt,
    )

    question = args.question or "general"
    on_missing = "skip" if args.skip_bad else "error"
    try:
        if args.format == "looktwice":
            samples = load_looktwice(
                args.data, args.images, question, args.visual_prompt, on_missing=on_missing, limit=args.limit
            )
        elif args.format == "vip-pointqa":
            samples = load_vip_pointqa(
                args.data, args.images, question, args.visual_prompt, on_missing=on_missing, limit=args.limit
            )
        else:
            samples = load_jsonl(args.data, images_dir=args.images, on_missing=on_missing, limit=args.limit)
            if args.visual_prompt:
                samples = with_visual_prompt(samples)
    except MissingImagesError as err:
        shown = ", ".join(path for path, _ in err.problems[:3]) + (", ..." if len(err.problems) > 3 else "")
        raise FileNotFoundError(
            f"{len(err.problems)} of the {err.n_checked} images listed in {args.data} are missing or unreadable: "
            + shown
        ) from None
    if not len(samples):
        raise ValueError(f"{args.data} holds no samples")
    if samples.n_skipped:
        print(
            f"vh-lens scan: left out {samples.n_skipped} samples whose image is missing (--skip-bad)", file=sys.stderr
        )
    return samples


def toy_path() -> Path:
    """Where the shipped toy checkpoint lives (:data:`vh_lens.toy.TOY_PATH`)."""
    from vh_lens.toy import TOY_PATH

    return Path(TOY_PATH)


def toy_available(path: Path | None = None) -> bool:
    """Whether the toy checkpoint (``config.json`` and ``model.safetensors``) is installed."""
    path = toy_path() if path is None else path
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def demo_samples(args: argparse.Namespace) -> list[Any]:
    """``--n-samples`` generated counting samples (:func:`vh_lens.data.shapes.shapes`, box drawn)."""
    from vh_lens.data.shapes import COUNT_KINDS, shapes

    kinds = COUNT_KINDS if args.question is None else (f"count_{args.question}",)
    return shapes(args.n_samples, seed=args.seed, kinds=kinds)


def _dtype(args: argparse.Namespace) -> Any:
    import torch

    return getattr(torch, args.dtype) if args.dtype else None


def load_demo_model(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """``(model, name, note)``: the toy LLaVA, or a random tiny LLaVA with ``note`` saying so."""
    import vh_lens

    path = toy_path()
    if toy_available(path):
        from vh_lens.toy import load_toy

        model = load_toy(path, device=args.device, dtype=_dtype(args), n_ctx=args.n_ctx)
        return model, f"toy LLaVA ({path})", None
    from vh_lens.data.shapes import shapes
    from vh_lens.testing import tiny_llava

    meta = shapes(1)[0].metadata
    size, grid = int(meta["image_size"]), int(meta["grid"])  # one patch per shape cell, as in the toy model
    hf, processor = tiny_llava(
        "llava", "llama", seed=0, n_layers=6, d_model=128, n_heads=8, d_mlp=256,
        image_size=size, patch_size=size // grid,
    )  # fmt: skip
    model = vh_lens.load_llava(hf, processor=processor, device=args.device, dtype=_dtype(args), n_ctx=args.n_ctx)
    return model, "random-weight tiny LLaVA (vh_lens.testing.tiny_llava, seed 0)", RANDOM_MODEL_NOTE


# --------------------------------------------------------------------------------------------
# Output folder


# --------------------------------------------------------------------------------------------
# The command


def _figure_sample(samples: Sequence[Any]) -> Any:
    """The first sample with an image and a box (else with an image), for the attention figure."""
    first_image = None
    for sample in samples:
        if sample.image is not None:
            if sample.box is not None:
                return sample
            first_image = first_image or sample
    return first_image


def run(args: argparse.Namespace) -> int:
    """Run ``vh-lens scan``; returns the exit code."""
    from vh_lens.reports.companions import load_companions

    demo = is_demo(args)
    check_arguments(args, demo)
    companions = load_companions(args.compare, args.lens)  # --compare, --lens: refused before anything is loaded
    if not demo:
        return _run(args, demo, companions)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo models are tiny: thread start-up costs more than it saves
    try:
        return _run(args, demo, companions)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, demo: bool, companions: Mapping[str, Any]) -> int:
    out = (args.out if args.out is not None else DEFAULT_OUT).absolute()

    if demo:
        samples = demo_samples(args)
        model, model_name, note = load_demo_model(args)
        source = f"vh_lens.data.shapes.shapes(n={args.n_samples}, seed={args.seed}), box drawn"
    else:
        samples = load_data_samples(args)
        model, model_name, note = _load_model(args), str(args.model), None
        details = [args.format] + ([] if args.format == "jsonl" else [f"{args.question or 'general'} questions"])
        details += ["visual prompt"] if args.visual_prompt else []
        source = f"{args.data} ({', '.join(details)})"
    if note is not None:
        print(f"NOTE: the toy checkpoint is not installed at {toy_path()}; {note}.", file=sys.stderr)
    print(f"vh-lens scan: {model_name} on {len(samples)} samples of {source}", file=sys.stderr)

    from vh_lens.commands._inputs import (
        check_context,
        input_fingerprint,
        screen_samples,
        summary_fingerprint,
        warn_n_ctx,
    )
    from vh_lens.reports.companions import check_companions, prompt_pair
    from vh_lens.reports.scan import write_scan_report
    from vh_lens.visual_heads.scan import scan_visual_heads

    warn_n_ctx(model, args, "scan")
    extra: dict[str, Any] = {}
    if demo:  # generated samples of one image geometry: the longest questions are checked
        check_context(model, samples, exhaustive=False, extra_tokens=1 if args.query == "answer_token" else 0)
    else:  # every sample checked before anything is written (the demo's are generated)
        screened = screen_samples(
            model, samples, skip_bad=args.skip_bad, source=str(args.data), command="scan",
            extra_tokens=1 if args.query == "answer_token" else 0,
        )  # fmt: skip
        extra = screened.record() | {"n_skipped_missing_image": int(getattr(samples, "n_skipped", 0))}
        samples = screened.samples
    model_dir = toy_path() if demo and note is None else (None if demo else args.model)
    inputs = input_fingerprint(model_dir, None if demo else args.data, samples, args.fingerprint)
    metadata = {"command": "vh-lens scan", "model": model_name, "data": source, "inputs": summary_fingerprint(inputs)}
    question = (args.question or "all") if demo else (None if args.format == "jsonl" else args.question or "general")
    metadata |= {"visual_prompt": demo or bool(args.visual_prompt), "question": question} | extra
    if note is not None:
        metadata["note"] = note
    check_companions(companions, n_layers=int(model.cfg.n_layers), n_heads=int(model.cfg.n_heads),
                     count=len(samples), metadata=metadata)  # fmt: skip
    settings = run_settings(args, demo, model_name)

    def setup() -> Path:
        out.mkdir(parents=True, exist_ok=True)
        finish_interrupted(out)
        return prepare_checkpoint(out, settings, overwrite=args.overwrite, demo=demo, n_samples=len(samples),
                                  inputs=inputs)  # fmt: skip

    # under torchrun rank 0 prepares the folder (each rank then checkpoints in checkpoint/rank{r}-of-{N})
    from vh_lens.distributed import init, on_main_first

    ctx = init()
    ckpt = on_main_first(setup, ctx, "preparing the output folder")
    try:
        scores = scan_visual_heads(
            model, samples, batch_size=args.batch_size, query=args.query, detection_weight=args.detection_weight,
            min_overlap=args.min_overlap, keep_per_sample=args.keep_per_sample, progress=not args.no_progress,
            checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every, metadata=metadata,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"\nvh-lens scan: interrupted; rerun the same command to continue from {ckpt}", file=sys.stderr)
        return 130

    def write(tmp: Path) -> None:
        scores.save(tmp / SCORES)
        pair = prompt_pair(scores, companions["compare"]) if "compare" in companions else None
        write_scan_report(scores, tmp / REPORT, model=model, samples=samples, k=args.top_k, note=note,
                          prompt_pair=pair, lens=companions.get("lens"), plotlyjs=args.plotlyjs)  # fmt: skip

    if not ctx.is_main:  # every rank holds the merged scores; rank 0 writes them
        return 0
    publish_outputs(out, write)
    print(scan_summary(scores, min(args.top_k, 5)))
    if note is not None:
        print(f"NOTE: {note} (the toy checkpoint is not installed).")
    print(f"wrote {out / SCORES} and {out / REPORT}", file=sys.stderr)
    return 0


def _load_model(args: argparse.Namespace) -> Any:
    import vh_lens

    return vh_lens.load_llava(args.model, device=args.device, dtype=_dtype(args), n_ctx=args.n_ctx)
