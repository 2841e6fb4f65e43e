"""The program the distributed tests launch: ``torchrun --standalone --nproc-per-node N worker.py TASK ...``.

Rank 0 writes the task's result under ``--out``; ``--die-rank R --die-at K`` makes rank ``R``
exit hard (``os._exit``) when it reads its ``K``-th sample, after its first checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import torch

torch.set_num_threads(1)


class DyingSamples(Sequence):
    """Samples whose reading of index ``die_at`` (within this rank's shard) kills the process."""

    def __init__(self, samples, die_at: int | None, log: str | None):
        self.samples, self.die_at, self.log = samples, die_at, log
        self.start = None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self.start is None:
            self.start = i
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{i}\n")
        if self.die_at is not None and i - self.start == self.die_at:
            sys.stderr.write(f"worker: rank {os.environ.get('RANK')} dies at sample {i}\n")
            sys.stderr.flush()
            os._exit(17)
        return self.samples[i]


def probe_samples(n: int):
    """Shapes samples labelled f0 / f1 alternately, two per group (a group may straddle two ranks)."""
    import dataclasses

    from vh_lens.data.shapes import shapes

    return [
        dataclasses.replace(s, metadata={**s.metadata, "function": f"f{i % 2}", "group": i // 2})
        for i, s in enumerate(shapes(n, seed=9))
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["scan", "mask", "lens_probe"])
    parser.add_argument("--n-samples", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--die-rank", type=int)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--log-dir")
    args = parser.parse_args(argv)

    import vh_lens
    from vh_lens import distributed
    from vh_lens.analysis.logit_lens import logit_lens_samples
    from vh_lens.data.shapes import shapes
    from vh_lens.toy import load_toy

    ctx = distributed.init()
    with distributed.guard(ctx):
        model = load_toy()
        samples = shapes(args.n_samples, seed=5)
        die = args.die_at if args.die_rank == ctx.rank else None
        log = os.path.join(args.log_dir, f"rank{ctx.rank}.log") if args.log_dir else None
        samples = DyingSamples(samples, die, log)
        if args.task == "scan":
            scores = vh_lens.scan_visual_heads(
                model,
                samples,
                batch_size=args.batch_size,
                keep_per_sample=True,
                progress=False,
                checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every,
            )
            if ctx.is_main:
                scores.save(args.out)
        elif args.task == "mask":
            scores = vh_lens.scan_visual_heads(model, shapes(6, seed=1), batch_size=3, progress=False)
            for method in ("zero", "mean"):
                result = vh_lens.masking_experiment(
                    model,
                    samples,
                    scores,
                    ks=(2, 5),
                    control_seeds=(0, 1),
                    method=method,
                    batch_size=args.batch_size,
                    progress=False,
                )
                if ctx.is_main:
                    result.save(os.path.join(args.out, method))
        elif args.task == "lens_probe":
            lensed = logit_lens_samples(model, samples, batch_size=args.batch_size)
            acts = vh_lens.collect_head_activations(
                model, probe_samples(args.n_samples), batch_size=args.batch_size, progress=False
            )
            evaluated = vh_lens.evaluate(model, samples.samples, batch_size=args.batch_size, progress=False)
            if ctx.is_main:
                lensed.save(os.path.join(args.out, "lens"))
                acts.save(os.path.join(args.out, "acts"))
                with open(os.path.join(args.out, "evaluate.json"), "w") as f:
                    json.dump([dataclasses.asdict(p) for p in evaluated.predictions], f)
        distributed.barrier(ctx, "end of run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
