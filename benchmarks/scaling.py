"""Data-parallel scaling on this machine: ``torchrun --nproc-per-node 2`` against 1 process.

Launches itself under ``torchrun --standalone --nproc-per-node N`` (gloo, ``OMP_NUM_THREADS=1``,
one intra-op thread per rank) for each ``N`` of ``--nprocs``, on the bundled toy model:

- the visual-head scan of ``--scan-samples`` generated samples
  (:func:`vh_lens.scan_visual_heads`, split by the engine);
- the masking sweep (3 stages x ks 2, 4, 8, 12 x (top + 3 seeds), zero ablation, shared prefix)
  on ``--mask-samples`` samples (:func:`vh_lens.masking_experiment`, sharded by the engine).

Each is timed on rank 0 between two barriers (model loading and imports excluded), as the
median of ``--repeats`` runs after a warm-up. The parent prints the times, the speed-up and
whether each multi-process result equals the one-process one (scan: max absolute difference
of every mean and variance; masking: every row equal), then one ``JSON {...}`` line.

Usage:
    python benchmarks/scaling.py [--nprocs 1 2] [--scan-samples 64] [--mask-samples 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    import vh_lens
    from vh_lens import distributed
    from vh_lens.data.shapes import shapes
    from vh_lens.toy import load_toy

    ctx = distributed.init()
    with distributed.guard(ctx):
        model = load_toy()
        scan_samples = shapes(args.scan_samples, seed=11)
        mask_samples = shapes(args.mask_samples, seed=12)
        scores = vh_lens.scan_visual_heads(model, shapes(32, seed=123), batch_size=16, progress=False)
        kw = dict(ks=(2, 4, 8, 12), control_seeds=(0, 1, 2), batch_size=args.batch_size, progress=False)
        times: dict[str, list[float]] = {"scan": [], "mask": []}
        out: dict[str, object] = {}
        for step in range(args.repeats + 1):
            for task in ("scan", "mask"):
                distributed.barrier(ctx, "start")
                start = time.perf_counter()
                if task == "scan":
                    result = vh_lens.scan_visual_heads(model, scan_samples, batch_size=args.batch_size, progress=False)
                else:
                    result = vh_lens.masking_experiment(model, mask_samples, scores, **kw)
                distributed.barrier(ctx, "end")
                if step:
                    times[task].append(time.perf_counter() - start)
                out[task] = result
        if ctx.is_main:
            scan = out["scan"]
            payload = {
                "world_size": ctx.world_size,
                "times": times,
                "scan": {
                    "mean": {m: v.tolist() for m, v in scan.mean.items()},
                    "variance": {m: v.tolist() for m, v in scan.variance.items()},
                    "samples_per_rank": scan.metadata["samples_per_rank"],
                },
                "mask": out["mask"].to_json(),
            }
            Path(args.out).write_text(json.dumps(payload))
        distributed.barrier(ctx, "done")


def _launch(n: int, args: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        __file__,
        "--worker",
        "--out",
        str(out),
        "--scan-samples",
        str(args.scan_samples),
        "--mask-samples",
        str(args.mask_samples),
        "--repeats",
        str(args.repeats),
        "--batch-size",
        str(args.batch_size),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"torchrun --nproc-per-node {n} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _max_diff(a: dict, b: dict) -> float:
    import torch

    return max(
        float((torch.tensor(a[k][m], dtype=torch.float64) - torch.tensor(b[k][m], dtype=torch.float64)).abs().max())
        for k in ("mean", "variance")
        for m in a["mean"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--scan-samples", type=int, default=64)
    parser.add_argument("--mask-samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            runs[n] = _launch(n, args, Path(tmp) / f"n{n}.json")
    base = runs[args.nprocs[0]]
    rows = []
    for n, run in runs.items():
        row = {"nproc": n}
        for task in ("scan", "mask"):
            row[f"{task}_s"] = statistics.median(run["times"][task])
            row[f"{task}_speedup"] = statistics.median(base["times"][task]) / row[f"{task}_s"]
        row["scan_max_abs_diff"] = _max_diff(run["scan"], base["scan"])
        row["samples_per_rank"] = run["scan"]["samples_per_rank"]
        row["mask_equal"] = (
            run["mask"]["rows"] == base["mask"]["rows"] and run["mask"]["baseline"] == base["mask"]["baseline"]
        )
        rows.append(row)
    n_conditions = 1 + sum(1 + len(r["random_accs"]) for r in base["mask"]["rows"])
    print(
        f"toy LLaVA, scan {args.scan_samples} samples, masking sweep {args.mask_samples} samples x {n_conditions} conditions, "
        f"batch {args.batch_size}, one thread per rank, median of {args.repeats}"
    )
    print(
        f"{'nproc':>5} {'scan s':>8} {'speed-up':>8} {'max |diff|':>11} {'mask s':>8} {'speed-up':>8} {'mask equal':>10}"
    )
    for r in rows:
        print(
            f"{r['nproc']:>5} {r['scan_s']:>8.2f} {r['scan_speedup']:>8.2f} {r['scan_max_abs_diff']:>11.2e} "
            f"{r['mask_s']:>8.2f} {r['mask_speedup']:>8.2f} {str(r['mask_equal']):>10}"
        )
    print(
        "JSON "
        + json.dumps(
            {
                "rows": rows,
                "cpu_count": os.cpu_count(),
                "mask_conditions": n_conditions,
                "load_average": os.getloadavg(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
