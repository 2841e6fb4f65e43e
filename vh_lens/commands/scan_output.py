"""The output folder of ``vh-lens scan``: its checkpoint, the final files' publication, the printed summary.

:func:`prepare_checkpoint` creates ``out/checkpoint`` or checks that the one there belongs to
this run (same settings, same inputs); :func:`publish_outputs` moves ``scores/`` and
``report.html`` into place together; :func:`finish_interrupted` finishes what a killed run left.
:mod:`vh_lens.commands.scan` re-exports these names.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_RUN_FILE = "run.json"
_INPUTS_FILE = "inputs.json"
_JOURNAL = ".scan-publish.json"
_STALE = (".scan-*.partial", ".scan-*.old", ".scan-publish.json.*.old", "..scan-publish.json.*.tmp")
SCORES = "scores"
REPORT = "report.html"
_CHECKPOINT = "checkpoint"


def run_settings(args: argparse.Namespace, demo: bool, model_name: str) -> dict[str, Any]:
    """What a checkpoint must share with the run that continues it (not batch size, limit, device)."""
    settings: dict[str, Any] = {
        "query": args.query, "detection_weight": args.detection_weight, "min_overlap": args.min_overlap,
        "keep_per_sample": args.keep_per_sample, "dtype": args.dtype,
    }  # fmt: skip
    if demo:
        return settings | {"model": model_name, "data": "shapes", "seed": args.seed, "question": args.question}
    return settings | {
        "model": str(args.model.resolve()), "data": str(args.data.resolve()), "format": args.format,
        "images": None if args.images is None else str(args.images.resolve()), "question": args.question,
        "visual_prompt": args.visual_prompt,
    }  # fmt: skip


def prepare_checkpoint(
    out: Path,
    settings: Mapping[str, Any],
    *,
    overwrite: bool,
    demo: bool,
    n_samples: int,
    inputs: Mapping[str, Any] | None = None,
) -> Path:
    """Create ``out/checkpoint`` for this run, or check that the one there belongs to it.

    Args:
        out: the output folder.
        settings: what the checkpoint must share with this run (:func:`run_settings`).
        overwrite: discard a checkpoint that does not belong to this run.
        demo: the demo's checkpoint is simply replaced when it does not belong.
        n_samples: the samples of this run.
        inputs: the fingerprints of what this run reads
            (:func:`vh_lens.commands._inputs.input_fingerprint`); a checkpoint whose saved
            fingerprints differ (the same paths, other contents) is refused.

    Raises:
        ValueError: the checkpoint there was written by a run with other settings or other
            input files, or has already seen more samples than this run has (not for the demo,
            whose checkpoint is simply replaced).
    """
    from vh_lens.commands._inputs import changed_inputs

    ckpt = out / _CHECKPOINT
    run_file = ckpt / _RUN_FILE
    inputs_file = ckpt / _INPUTS_FILE
    saved = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    wanted = json.loads(json.dumps(dict(settings)))
    problem = None
    if ckpt.exists() and saved is None and any(ckpt.iterdir()):
        problem = f"{ckpt} holds files of an unknown run"
    elif saved is not None and saved != wanted:
        diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        diff |= {k: (v, None) for k, v in saved.items() if k not in wanted}
        problem = f"{ckpt} is a checkpoint of a run with other settings (then, now): {diff}"
    elif (
        saved is not None and inputs is not None and (ckpt / "checkpoint.json").is_file() and not inputs_file.is_file()
    ):
        problem = f"{ckpt} does not record what its run read (written by an older vh_lens), so it cannot be checked"
    elif saved is not None and inputs is not None and inputs_file.is_file():
        changes = changed_inputs(json.loads(inputs_file.read_text(encoding="utf-8")), dict(inputs))
        if changes:
            shown = ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
            problem = f"the inputs changed since {ckpt} was written: {shown}"
    if problem is None:
        seen = _checkpoint_count(ckpt)
        if seen is not None and seen > n_samples:
            problem = f"{ckpt} has already seen {seen} samples but this run has only {n_samples} (a smaller --limit?)"
    if problem is not None and (overwrite or demo):
        print(f"vh-lens scan: starting afresh: {problem}", file=sys.stderr)
        shutil.rmtree(ckpt)
        problem = None
    if problem is not None:
        raise ValueError(f"{problem}; pass --overwrite to start afresh, or choose another --out")
    if overwrite and ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    from vh_lens.core.io import write_json

    write_json(run_file, wanted, indent=2, sort_keys=True)
    if inputs is not None:
        write_json(inputs_file, dict(inputs), indent=1, sort_keys=True)
    return ckpt


def _checkpoint_count(ckpt: Path) -> int | None:
    info = ckpt / "checkpoint.json"
    if not info.is_file():
        return None
    try:
        return int(json.loads(info.read_text(encoding="utf-8"))["count"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{info} is unreadable ({err}); pass --overwrite to start afresh") from err


def publish_outputs(out: Path, write: Any) -> None:
    """Write the final files into a temporary folder inside ``out``, then move them into place in one step.

    ``write(tmp)`` creates ``tmp/scores/`` and ``tmp/report.html``; they replace the ones in
    ``out`` together (:func:`vh_lens.core.io.publish`): a failure leaves the previous pair, a kill
    between the renames is finished by the next run (:func:`finish_interrupted`).
    """
    from vh_lens.core.io import make_temp_dir, publish

    tmp = make_temp_dir(out, ".scan-", ".partial")
    try:
        write(tmp)
        pages = [(p, out / p.name) for p in sorted(tmp.glob("*")) if p.name.endswith((".html", ".js"))]
        publish([(tmp / SCORES, out / SCORES), *pages], out / _JOURNAL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from vh_lens.reports.outputs import link_output_folder

    link_output_folder(out)  # sibling output folders' pages linked, their parent's index.html


def finish_interrupted(out: Path) -> None:
    """Finish a publish that a killed run left half done; delete temporary folders of killed runs."""
    from vh_lens.core.io import recover_publish, remove_stale

    if recover_publish(out / _JOURNAL):
        print(f"vh-lens scan: finished publishing the result of an interrupted run in {out}", file=sys.stderr)
    remove_stale(out, _STALE)


def scan_summary(scores: Any, k: int) -> str:
    from vh_lens.visual_heads.scores import STAGES, stage_layers

    lines = [f"top heads by detection score over {scores.count} samples (layer.head score):"]
    for stage in STAGES:
        span = stage_layers(stage, scores.n_layers)
        if not len(span):
            continue
        heads = scores.top_heads(min(k, len(span) * scores.n_heads), stage)
        cells = " ".join(f"L{layer}.H{head} {float(scores.detection[layer, head]):.3f}" for layer, head in heads)
        lines.append(f"  {stage:>5} (layers {span.start}-{span.stop - 1}): {cells}")
    return "\n".join(lines)
