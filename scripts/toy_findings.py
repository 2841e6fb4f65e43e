"""Paper A's masking experiment and logit lens on the bundled toy LLaVA; prints the figures.

Usage:
    python scripts/toy_findings.py [--n 96] [--ks 2 4 8 16 24] [--accuracy-n 400]

Prints the model's accuracy per question family on fresh samples (seed 4242, as tests/toy/test_toy.py),
the top heads per stage, paper A's masking table (each stage's top-k heads against k
random heads of the same stage), the same over all layers (the findings test's comparison), and
the logit lens at the answer query.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import vh_lens
from vh_lens.data.shapes import COUNT_KINDS, shapes
from vh_lens.toy import format_question, load_toy

COUNTING = ("count_super", "count_general")  # the pointer questions, which the bundled model answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96, help="samples for the scan and for the evaluation")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16, 24])
    parser.add_argument("--accuracy-n", type=int, default=400, help="fresh samples per question family (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_toy()

    def accuracy(samples, heads=None) -> float:
        hooks = [] if heads is None else vh_lens.ablate_heads(heads, method="zero")
        return vh_lens.evaluate(
            model, samples, fwd_hooks=hooks, format_question=format_question, progress=False
        ).accuracy

    families = {
        "counting": COUNT_KINDS,
        "pointer counting": COUNTING,
        "object counting": ("count_object",),
        "yes/no": ("exists",),
    }
    if args.accuracy_n:
        for name, kinds in families.items():
            acc = accuracy(shapes(args.accuracy_n, seed=4242, kinds=kinds))
            print(f"accuracy, {name}: {acc:.1%} (n={args.accuracy_n}, seed 4242)")
    scores = vh_lens.scan_visual_heads(model, shapes(args.n, seed=123, kinds=COUNTING), batch_size=16, progress=False)
    for stage in ("early", "mid", "late"):
        print(f"top heads, {stage}: {scores.top_heads(4, stage=stage)}")
    held_out = shapes(args.n, seed=999, kinds=COUNTING)
    result = vh_lens.masking_experiment(
        model,
        held_out,
        scores,
        ks=tuple(args.ks),
        control_seeds=(0, 1, 2),
        format_question=format_question,
        progress=False,
    )
    print(result.to_markdown())

    print(f"\nall layers, zero ablation (baseline {accuracy(held_out):.1%}):")
    for k in args.ks:
        random = [accuracy(held_out, scores.random_heads(k, seed=seed)) for seed in (0, 1, 2)]
        print(
            f"  top {k} by detection: {accuracy(held_out, scores.top_heads(k)):.1%}; "
            f"{k} random heads: {', '.join(f'{r:.1%}' for r in random)} (seeds 0, 1, 2)"
        )
    batch = model.prepare_samples(held_out, format_question=format_question)
    trace = vh_lens.logit_lens(model, batch, answers=[s.answer for s in held_out])
    print("\nlogit lens at the answer query (gold answer):")
    for row in trace.to_rows():
        print(
            f"  after layer {row['layer']}: top-1 for {row['answer_top1']:.0%}, mean rank {row['answer_rank_mean']:.2f}, "
            f"mean prob {row['answer_prob_mean']:.3f}"
        )
    early = (trace.answer_rank[:-1] == 1).any(0).float().mean().item()
    print(f"  answer at rank 1 before the last layer: {early:.0%} of samples")


if __name__ == "__main__":
    main()
