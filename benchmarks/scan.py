"""Time and peak memory per sample of the visual-head scan against three other ways to run a model.

Methods, all on the same prepared batch (image features already spliced in: the vision tower
is run once, outside every measurement) and under ``torch.inference_mode``:

- ``plain``: the HookedTransformer forward, ``model(batch)`` as loaded (the baseline; layers
  take the fused attention path of :mod:`vh_lens.core.fast_attention`, as no hook reads a pattern);
- ``plain_tl``: the same with ``model.fast_attention = False`` (TransformerLens' own attention);
- ``scan``: what :func:`~vh_lens.visual_heads.scan.scan_visual_heads` runs per batch:
  ``model.run_with_hooks(batch, fwd_hooks=visual_head_qk_hooks(...))`` into a
  :class:`~vh_lens.visual_heads.scan.ScoreAccumulator` (one attention row per head computed from the
  queries and keys, reduced layer by layer, nothing cached);
- ``scan_pattern``: the scan through ``hook_pattern`` (:func:`~vh_lens.visual_heads.scan.visual_head_hooks`,
  ``attention="pattern"``), which runs TransformerLens' attention;
- ``cache``: ``model.run_with_cache(batch, names_filter=<every hook_pattern>)``, then the same
  metrics computed from the cached patterns;
- ``hf``: the Hugging Face eager forward with ``output_attentions=True`` (the paper's authors'
  method): the LLaVA language model on the same spliced embeddings, ``lm_head``, then the same
  metrics from the returned attentions.

The model is a random-weight LLaVA from :func:`vh_lens.testing.tiny_llava`; by default a
Llama backbone of 12 layers, d_model 512, 8 heads, d_mlp 1376, and a 336 px image with 14 px
patches (24 x 24 = 576 image tokens) in a prompt of about 600 tokens.

Measurement. Time: one process runs the methods round-robin (so that the changing load of a
shared machine hits all of them alike): one warm-up round, then ``--repeats`` timed rounds (wall
clock, ``time.perf_counter``); the median is reported, with the min and max. Peak memory: each
method in its own fresh process, one warm-up run and ``--repeats`` measured runs; on CPU, the
growth of the resident set during the run (``VmHWM`` after resetting the high-water mark through
``/proc/self/clear_refs``, minus ``VmRSS`` just before), with glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the system and do not hide the
next run's allocations (that setting slows allocation, hence the separate timing process); on
CUDA, ``torch.cuda.max_memory_allocated`` minus the memory allocated before the run. Both are
medians, divided by the batch size.

Usage:
    python benchmarks/scan.py [--layers 12] [--d-model 512] [--heads 8] [--d-mlp 1376]
        [--image-size 336] [--patch-size 14] [--batch-size 1] [--repeats 5] [--threads N]
        [--device cpu|cuda] [--methods plain plain_tl scan scan_pattern cache hf] [--no-trim]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

METHODS = ("plain", "plain_tl", "scan", "scan_pattern", "cache", "hf")
_QUESTION = "what color is the dog in this picture ? answer with one word from the given choices directly"
_LABELS = {
    "plain": "HookedTransformer forward, model(batch)",
    "plain_tl": "same, TransformerLens' attention",
    "scan": "scan: run_with_hooks + visual_head_qk_hooks",
    "scan_pattern": "scan via hook_pattern (visual_head_hooks)",
    "cache": "run_with_cache of all hook_pattern + metrics",
    "hf": "HF eager, output_attentions=True + metrics",
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# --------------------------------------------------------------------------------------------
# The child process: one method


def _build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(hf_model, lens, batch)`` for the benchmark's shape."""
    import torch
    from PIL import Image

    import vh_lens
    from vh_lens.testing import tiny_llava

    hf, processor = tiny_llava(
        "llava", "llama", seed=0, n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
        d_mlp=args.d_mlp, image_size=args.image_size, patch_size=args.patch_size,
    )  # fmt: skip
    hf.to(args.device)
    grid = args.image_size // args.patch_size
    lens = vh_lens.load_llava(hf, processor=processor, device=args.device, n_ctx=max(1024, grid * grid + 128))
    gen = torch.Generator().manual_seed(0)
    pixels = (torch.rand(args.image_size, args.image_size, 3, generator=gen) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    batch = lens.prepare(images=[image] * args.batch_size, questions=[_QUESTION] * args.batch_size)
    return hf, lens, batch


def _methods(hf: Any, lens: Any, batch: Any) -> dict[str, Callable[[], Any]]:
    import torch

    from vh_lens.visual_heads.scan import ScoreAccumulator, head_metrics, visual_head_hooks, visual_head_qk_hooks

    n_layers, n_heads = lens.cfg.n_layers, lens.cfg.n_heads
    layouts = batch.layout
    image = torch.stack([lay.image_mask for lay in layouts]).to(lens.device)
    text = torch.stack([lay.text_mask for lay in layouts]).to(lens.device)
    region = torch.zeros_like(image)
    query = batch.query_positions.to(lens.device)
    rows_of = torch.arange(len(batch), device=lens.device)

    def reduce(patterns: list[torch.Tensor]) -> ScoreAccumulator:
        acc = ScoreAccumulator(n_layers, n_heads)
        for layer, pattern in enumerate(patterns):
            acc.add(layer, head_metrics(pattern[rows_of, :, query, :], image, region, text))
        return acc

    def plain() -> Any:
        return lens(batch)

    def plain_tl() -> Any:
        lens.fast_attention = False
        try:
            return lens(batch)
        finally:
            lens.fast_attention = True

    def scan() -> Any:
        acc = ScoreAccumulator(n_layers, n_heads)
        lens.run_with_hooks(batch, fwd_hooks=visual_head_qk_hooks(lens.lm, layouts, acc))
        return acc

    def scan_pattern() -> Any:
        acc = ScoreAccumulator(n_layers, n_heads)
        lens.run_with_hooks(batch, fwd_hooks=visual_head_hooks(layouts, acc, n_layers=n_layers))
        return acc

    def cache() -> Any:
        logits, activations = lens.run_with_cache(batch, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        return logits, reduce([activations["pattern", layer] for layer in range(n_layers)])

    def hugging_face() -> Any:
        out = hf.model.language_model(
            inputs_embeds=batch.embeds.to(lens.device), attention_mask=batch.attention_mask.to(lens.device),
            output_attentions=True,
        )  # fmt: skip
        return hf.lm_head(out.last_hidden_state), reduce(list(out.attentions))

    return {
        "plain": plain, "plain_tl": plain_tl, "scan": scan, "scan_pattern": scan_pattern, "cache": cache,
        "hf": hugging_face,
    }  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    hf, lens, batch = _build(args)
    methods = _methods(hf, lens, batch)
    info: dict[str, Any] = {
        "seq_len": int(batch.input_ids.shape[1]), "image_tokens": int(batch.layout[0].n_image_tokens),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    with torch.inference_mode():
        if args.child == "time":
            info["times"] = _time_interleaved({m: methods[m] for m in args.methods}, args.repeats, args.device)
        else:
            info["peaks"] = _peaks(methods[args.child], args.repeats, args.device)
    print("RESULT " + json.dumps(info))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_interleaved(methods: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, list[float]]:
    """Wall-clock seconds of each method, run round-robin so that a change of machine load hits all alike."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    for step in range(repeats + 1):  # round 0 is the warm-up
        for name, fn in methods.items():
            gc.collect()
            _sync(device)
            start = time.perf_counter()
            result = fn()
            _sync(device)
            elapsed = time.perf_counter() - start
            del result
            if step:
                times[name].append(elapsed)
    return times


def _peaks(fn: Callable[[], Any], repeats: int, device: str) -> list[int]:
    """Peak extra memory (bytes) of each run of ``fn`` after one warm-up."""
    import torch

    cuda = device.startswith("cuda")
    peaks = []
    for step in range(repeats + 1):
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the resident-set high-water mark (Linux >= 4.0)
        result = fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM")) - before
        del result
        if step:
            peaks.append(peak)
    return peaks


# --------------------------------------------------------------------------------------------
# The parent: one process for the timings, one per method for the memory, then the table


def _run_child(mode: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", **env), check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark child {mode!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-mlp", type=int, default=1376)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median; at least 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--no-trim", action="store_true",
        help="time with glibc never returning freed memory to the system (MALLOC_TRIM_THRESHOLD_ and "
        "MALLOC_MMAP_THRESHOLD_ huge): separates the cost of page faults from the computation",
    )  # fmt: skip
    parser.add_argument("--child", choices=(*METHODS, "time"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the median of at least 5 runs is reported)")
    if args.child:
        _child(args)
        return

    forwarded = [
        "--layers", str(args.layers), "--d-model", str(args.d_model), "--heads", str(args.heads),
        "--d-mlp", str(args.d_mlp), "--image-size", str(args.image_size), "--patch-size", str(args.patch_size),
        "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--device", args.device,
    ]  # fmt: skip
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    forwarded += ["--methods", *args.methods]
    print("timing all methods (one process, round-robin) ...", file=sys.stderr, flush=True)
    no_trim = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**30)} if args.no_trim else {}
    timing = _run_child("time", forwarded, no_trim)
    results: dict[str, dict[str, Any]] = {m: {"times": timing["times"][m]} for m in args.methods}
    for method in args.methods:
        print(f"peak memory of {method} (own process) ...", file=sys.stderr, flush=True)
        cpu_env = {} if args.device.startswith("cuda") else {"MALLOC_MMAP_THRESHOLD_": "65536"}
        results[method]["peaks"] = _run_child(method, forwarded, cpu_env)["peaks"]

    first = timing
    b = args.batch_size
    memory_how = (
        "torch.cuda.max_memory_allocated growth"
        if args.device.startswith("cuda")
        else "resident-set growth (VmHWM reset via /proc/self/clear_refs, minus VmRSS before; "
        "MALLOC_MMAP_THRESHOLD_=65536), one process per method"
    )
    print(
        f"model: random LLaVA (Llama), {args.layers} layers, d_model {args.d_model}, {args.heads} heads, "
        f"d_mlp {args.d_mlp}; sequence {first['seq_len']} tokens of which {first['image_tokens']} image tokens; "
        f"batch {b}; device {args.device}, {first['threads']} torch thread(s)"
    )
    print(
        f"time: median of {args.repeats} runs after 1 warm-up round (min-max in brackets), per sample; the methods "
        "run round-robin in one process, so that the load of a shared machine affects them alike"
        + ("; glibc set never to return freed memory (--no-trim)" if args.no_trim else "")
    )
    print(f"peak memory: {memory_how}; median over the runs, per sample")
    print()
    header = f"{'method':<46} {'time/sample':>22} {'x plain':>8} {'peak MiB/sample':>16} {'x plain':>8}"
    print(header)
    print("-" * len(header))
    summary = {
        m: (statistics.median(r["times"]) / b, statistics.median(r["peaks"]) / b / 2**20) for m, r in results.items()
    }
    base_t, base_m = summary.get("plain", (None, None))
    for method, (t, m) in summary.items():
        r = results[method]
        spread = f"{t * 1e3:.1f} ms [{min(r['times']) / b * 1e3:.0f}-{max(r['times']) / b * 1e3:.0f}]"
        print(f"{_LABELS[method]:<46} {spread:>22} {_ratio(t, base_t):>8} {m:>16.1f} {_ratio(m, base_m):>8}")
    if {"plain", "scan"} <= summary.keys():
        (tp, mp), (ts, ms) = summary["plain"], summary["scan"]
        others = [k for k in ("plain_tl", "scan_pattern", "cache", "hf") if k in summary]
        within = ts <= 1.10 * tp and (ms <= 1.10 * mp or ms - mp < 1.0)  # under 1 MiB apart counts as equal
        print()
        print(f"target: scan <= 1.10x plain in time ({_ratio(ts, tp)}x) and memory ({_ratio(ms, mp)}x): "
              f"{'met' if within else 'NOT met'}")  # fmt: skip
        for k in others:
            tk, mk = summary[k]
            print(f"scan vs {k}: time {_ratio(ts, tk)}x ({'faster' if ts < tk else 'NOT faster'}), "
                  f"memory {_ratio(ms, mk)}x")  # fmt: skip


def _ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}"


if __name__ == "__main__":
    main()
