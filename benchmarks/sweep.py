"""The cost of paper A's masking sweep: shared prefix (:mod:`vh_lens.sweep`) against the naive sweep.

Two figures:

1. Layer forwards per batch for paper A's table (3 stages x ks 10, 20, 30, 50 x (top + 3 random
   seeds) + the baseline = 49 conditions) on a 32-layer, 32-head model (LLaVA-1.5-7B's shape),
   with the heads chosen exactly as :func:`vh_lens.masking_experiment` chooses them, from
   visual-head scores drawn at random (``--seed``): each condition's first ablated layer is the
   lowest layer of its heads (:func:`vh_lens.sweep.sweep_cost`).
2. Measured on the bundled toy model (6 layers x 8 heads, one thread): wall time of
   ``masking_experiment(..., sweep="naive")``, ``sweep="shared"`` and ``sweep="batched"``
   (``--conditions-per-forward`` conditions stacked per forward) on the same samples
   (3 stages x ks 2, 4, 8, 12 x (top + 3 seeds); a stage has 16 heads, so k = 12 leaves too few
   for a random control and those rows have none: 40 conditions), and whether the two results
   are equal.

Usage:
    python benchmarks/sweep.py [--n-samples 32] [--batch-size 8] [--repeats 3] [--seed 0] [--conditions-per-forward 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _random_scores(n_layers: int, n_heads: int, seed: int):
    import torch

    import vh_lens
    from vh_lens.visual_heads import METRICS

    gen = torch.Generator().manual_seed(seed)
    maps = {m: torch.rand(n_layers, n_heads, generator=gen, dtype=torch.float64) for m in METRICS}
    return vh_lens.VisualHeadScores(mean=maps, variance={m: torch.zeros_like(v) for m, v in maps.items()}, count=1)


def paper_a_cost(seed: int, n_layers: int = 32, n_heads: int = 32, ks=(10, 20, 30, 50), seeds=(0, 1, 2)) -> dict:
    from vh_lens.sweep import sweep_cost

    scores = _random_scores(n_layers, n_heads, seed)
    starts: list[int | None] = [None]  # the baseline
    per_stage = {}
    for stage in ("early", "mid", "late"):
        first = []
        for k in ks:
            top = scores.top_heads(k, stage, metric="detection")
            sets = [top] + [
                scores.random_heads(len(top), stage, seed=s, exclude_top=top, metric="detection") for s in seeds
            ]
            first += [min(layer for layer, _ in heads) for heads in sets]
        per_stage[stage] = sorted(set(first))
        starts += first
    cost = sweep_cost(n_layers, starts)
    return {"n_conditions": len(starts), "first_ablated_layers": per_stage, **cost, "speedup": 1 / cost["ratio"]}


def measured(n_samples: int, batch_size: int, repeats: int, per_forward: int = 4) -> dict:
    import torch

    import vh_lens
    from vh_lens.data.shapes import shapes
    from vh_lens.toy import load_toy

    torch.set_num_threads(1)
    model = load_toy()
    scores = vh_lens.scan_visual_heads(model, shapes(32, seed=123), batch_size=16, progress=False)
    samples = shapes(n_samples, seed=999)
    kw = dict(ks=(2, 4, 8, 12), control_seeds=(0, 1, 2), batch_size=batch_size, progress=False)
    times: dict[str, list[float]] = {"naive": [], "shared": [], "batched": []}
    results = {}
    for step in range(repeats + 1):  # round 0: warm-up; the two alternate so load changes hit both
        for sweep in ("naive", "shared", "batched"):
            start = time.perf_counter()
            extra = {"conditions_per_forward": per_forward} if sweep == "batched" else {}
            results[sweep] = vh_lens.masking_experiment(model, samples, scores, sweep=sweep, **kw, **extra)
            if step:
                times[sweep].append(time.perf_counter() - start)
    n_layers = int(model.cfg.n_layers)
    from vh_lens.sweep import sweep_cost

    starts = [None] + [
        min(layer for layer, _ in heads)
        for row in results["shared"].rows
        for heads in (row.top_heads, *row.random_heads)
    ]
    naive, shared, batched = (statistics.median(times[s]) for s in ("naive", "shared", "batched"))
    return {
        "model": f"toy LLaVA {n_layers} layers x {model.cfg.n_heads} heads",
        "n_samples": n_samples,
        "batch_size": batch_size,
        "n_conditions": len(starts),
        "naive_s": naive,
        "shared_s": shared,
        "batched_s": batched,
        "conditions_per_forward": per_forward,
        "wall_ratio": shared / naive,
        "batched_wall_ratio": batched / naive,
        "layer_forward_ratio": sweep_cost(n_layers, starts)["ratio"],
        "equal": results["naive"].rows == results["shared"].rows
        and results["naive"].baseline == results["shared"].baseline,
        "batched_equal": results["naive"].rows == results["batched"].rows
        and results["naive"].baseline == results["batched"].baseline,
        "times": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conditions-per-forward", type=int, default=4, help="conditions stacked per forward (batched)"
    )
    args = parser.parse_args(argv)
    paper = paper_a_cost(args.seed)
    toy = measured(args.n_samples, args.batch_size, args.repeats, args.conditions_per_forward)
    print(
        f"paper A's table at 32 layers x 32 heads ({paper['n_conditions']} conditions): layer forwards per batch "
        f"naive {paper['naive']:.0f}, shared prefix {paper['shared']:.0f}: ratio {paper['ratio']:.3f} "
        f"({paper['speedup']:.2f}x); first ablated layers {paper['first_ablated_layers']}"
    )
    print(
        f"{toy['model']}, {toy['n_samples']} samples, batch {toy['batch_size']}, {toy['n_conditions']} conditions: "
        f"naive {toy['naive_s']:.2f} s, shared {toy['shared_s']:.2f} s (wall ratio {toy['wall_ratio']:.3f}; "
        f"layer-forward ratio {toy['layer_forward_ratio']:.3f}); results equal: {toy['equal']}"
    )
    print(
        f"  batched ({toy['conditions_per_forward']} conditions per forward): {toy['batched_s']:.2f} s (wall ratio "
        f"{toy['batched_wall_ratio']:.3f} of naive, {toy['batched_s'] / toy['shared_s']:.3f} of shared); "
        f"results equal: {toy['batched_equal']}"
    )
    print("JSON " + json.dumps({"paper_a_32x32": paper, "toy": toy}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
