"""Paper B's pipeline on the chain-of-thought toy (``vh_lens/assets/toy_cog``): what it shows.

1. Probe every head for the five function labels (:func:`vh_lens.probe_heads` on
   :func:`vh_lens.collect_head_activations` at the last prompt token of each subquestion prompt,
   chain context included); functional heads by the elbow; sparsity, layers, overlap.
2. Controls for the probe scores: the same probes on shuffled labels; on the input embeddings only
   (the last prompt token's, which is always ``:``, and the mean over the prompt's text tokens, a
   bag of words); on surface features (step index, prompt length in tokens).
3. Remove each function's top ``--k`` heads (zero) vs as many random heads (``--seeds``): accuracy on that
   function, the others, the main questions; the cross-function matrix read off the same runs.
4. Emphasise (scale x2, shift along the probe direction) on harder held-out items (more distractors).

Usage::

    HF_HUB_OFFLINE=1 python scripts/cog_findings.py --out /tmp/cog_findings

Prints markdown; writes ``findings.json`` and the reports (reloadable) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vh_lens
from vh_lens.data import cogvision_shapes, subquestion_samples
from vh_lens.data.cogvision_shapes import FUNCTIONS
from vh_lens.functional_heads.cross_function import cross_function_matrix
from vh_lens.functional_heads.interventions import intervene_on_functions
from vh_lens.functional_heads.probes import HeadActivations, collect_head_activations, probe_heads
from vh_lens.toy_cog import COG_TOY_PATH, load_cog_toy


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=COG_TOY_PATH)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--probe-items", type=int, default=200)
    p.add_argument("--eval-items", type=int, default=100)
    p.add_argument("--hard-distractors", type=int, nargs=2, default=(10, 16))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--k",
        type=int,
        default=6,
        help="heads per function for the interventions (the elbow picks most heads here: see the probe table)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-emphasis", action="store_true")
    return p.parse_args(argv)


def _pct(x: float) -> str:
    return "nan" if x != x else f"{100 * x:.1f}"


def control_features(model: Any, items: Sequence[Any]) -> dict[str, HeadActivations]:
    """Baseline features as one-"head" activations: last-token embedding, mean text embedding, step & length."""
    samples = subquestion_samples(items)
    batch = model.prepare_samples(samples)
    emb = model.lm.W_E.detach()  # [vocab, d_model]
    ids = batch.input_ids if hasattr(batch, "input_ids") else batch.tokens
    last, mean, surface = [], [], []
    for i, lay in enumerate(batch.layout):
        text = lay.text_positions
        q = int(lay.query_position)
        last.append(emb[ids[i, q]])
        mean.append(emb[ids[i, text]].mean(0))
        surface.append([float(samples[i].metadata["sub_index"]), float(len(text))])
    labels = [s.metadata["function"] for s in samples]
    groups = [s.metadata["group"] for s in samples]

    def acts(x: list) -> HeadActivations:
        t = torch.as_tensor(np.asarray([np.asarray(v, dtype=np.float32) for v in x]))
        return HeadActivations(acts=t[:, None, None, :].float(), labels=labels, groups=groups)

    return {"last_token_embedding": acts([v.numpy() for v in last]),
            "mean_text_embedding": acts([v.numpy() for v in mean]),
            "step_index_and_length": acts(surface)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = load_cog_toy(args.model)
    probe_items = cogvision_shapes(args.probe_items, seed=900)
    eval_items = cogvision_shapes(args.eval_items, seed=901)
    hard_items = cogvision_shapes(args.eval_items, seed=902, distractors=tuple(args.hard_distractors))
    out: dict[str, Any] = {"model": str(args.model), "args": {k: str(v) for k, v in vars(args).items()}}

    acts = collect_head_activations(model, probe_items, batch_size=args.batch_size, progress=False)
    probes = probe_heads(acts, functions=FUNCTIONS, seed=0, mode="ovr")
    heads = {f: probes.functional_heads(f) for f in FUNCTIONS}
    out["probe"] = {
        f: {"best": round(float(probes.scores(f).max()), 4), "median": round(float(probes.scores(f).median()), 4),
            "n_heads": len(heads[f]), "heads": heads[f],
            "layers": probes.layer_distribution(f).tolist(), "scores": probes.scores(f).tolist()}
        for f in FUNCTIONS
    }  # fmt: skip
    out["sparsity"] = probes.sparsity()
    out["overlap"] = probes.overlap().tolist()

    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(acts.n_samples, generator=gen).tolist()
    shuffled = HeadActivations(acts=acts.acts, labels=[acts.labels[i] for i in perm], groups=acts.groups)
    controls = {"shuffled_labels": probe_heads(shuffled, functions=FUNCTIONS, seed=0, mode="ovr")}
    for name, feats in control_features(model, probe_items).items():
        controls[name] = probe_heads(feats, functions=FUNCTIONS, seed=0, mode="ovr")
    out["controls"] = {name: {f: round(float(r.scores(f).max()), 4) for f in FUNCTIONS} for name, r in controls.items()}
    out["probe_seconds"] = round(time.perf_counter() - t0, 1)

    common = {"control_seeds": tuple(args.seeds), "k": args.k, "eval_method": "generate", "max_new_tokens": 2,
              "batch_size": args.batch_size, "progress": False}  # fmt: skip
    removal = intervene_on_functions(model, eval_items, probes, mode="remove", removal="zero", **common)
    matrix = cross_function_matrix(removal)
    out["removal"] = [removal.summary(f) for f in FUNCTIONS]
    out["cross_function"] = matrix.to_json()
    out["upstream_order"] = matrix.upstream_order()
    emph = {}
    if not args.no_emphasis:
        for emphasis in ("scale", "shift"):
            emph[emphasis] = intervene_on_functions(model, hard_items, probes, mode="emphasise", emphasis=emphasis,
                                                    acts=acts, **common)  # fmt: skip
            out[f"emphasis_{emphasis}"] = [emph[emphasis].summary(f) for f in FUNCTIONS]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        probes.save(args.out / "probes")
        removal.save(args.out / "removal")
        matrix.save(args.out / "cross_function")
        for name, rep in emph.items():
            rep.save(args.out / f"emphasis_{name}")
        (args.out / "findings.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    out["_reports"] = {
        "probes": probes,
        "removal": removal,
        "matrix": matrix,
        **{f"emphasis_{k}": v for k, v in emph.items()},
    }
    return out


def print_findings(out: dict[str, Any]) -> None:
    print("## Probe scores (held-out balanced accuracy, function vs rest) and functional heads (elbow)\n")
    print(
        "| function | best head | median head | elbow heads | sparsity | heads per layer | shuffled | last-token emb | mean text emb | step+length |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    c = out["controls"]
    for f in FUNCTIONS:
        p = out["probe"][f]
        print(f"| {f} | {_pct(p['best'])} | {_pct(p['median'])} | {p['n_heads']} | {_pct(out['sparsity'][f])} | "
              f"{p['layers']} | {_pct(c['shuffled_labels'][f])} | {_pct(c['last_token_embedding'][f])} | "
              f"{_pct(c['mean_text_embedding'][f])} | {_pct(c['step_index_and_length'][f])} |")  # fmt: skip
    print("\nOverlap (Jaccard) of the head sets:", np.round(np.asarray(out["overlap"]), 2).tolist())
    reports = out["_reports"]
    print("\n## Removal (zero) of each function's heads vs random heads\n")
    print(reports["removal"].to_markdown())
    print("\n## Cross-function matrix: extra accuracy lost vs random heads (pp), rows = heads removed\n")
    print(reports["matrix"].to_markdown())
    print("\nupstream order (gives minus takes):", [(f, round(s, 3)) for f, s in out["upstream_order"]])
    for name in ("emphasis_scale", "emphasis_shift"):
        if name in reports:
            print(f"\n## {name.replace('_', ': ')} on harder items\n")
            print(reports[name].to_markdown())
    print(f"\n(total {out['seconds']} s)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    vh_lens  # noqa: B018 - the package is imported for load_llava
    print_findings(run(args))


if __name__ == "__main__":
    main()
