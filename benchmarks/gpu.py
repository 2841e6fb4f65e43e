"""GPU benchmark: the visual-head scan at real 7B shapes in bfloat16, against four other ways to run.

Two random-weight models at their real shapes (weights drawn on the GPU; nothing is read or
downloaded): LLaVA-1.5-7B (Llama 32 x 4096, MLP 11008, vocab 32064; CLIP ViT-L/14 at 336 px,
576 image tokens) and LLaVA-NeXT-7B (llava-v1.6-vicuna-7b: the same backbone, anyres tiles and
image-newline tokens; a 640 x 480 image gives 2,340 image tokens). For each batch size
(default 1, 2, 4, 8, 16, 32), on one prepared batch (vision tower run once, outside every
measurement), under ``torch.inference_mode``:

- ``plain``: ``model(batch)``, vh_lens' HookedTransformer forward (fused attention);
- ``scan``: the scan's forward, ``run_with_hooks`` + ``visual_head_qk_hooks`` into a ``ScoreAccumulator``;
- ``tl_cache``: ``run_with_cache`` of every ``hook_pattern`` (TransformerLens attention), metrics from the cache;
- ``hf_eager``: Hugging Face eager attention with ``output_attentions=True`` (the authors' method), metrics;
- ``hf_sdpa``: Hugging Face SDPA, plain forward (no attentions).

Per cell: median wall time of ``--repeats`` runs after one warm-up (``torch.cuda.synchronize``
around each), samples/s, achieved TFLOP/s and its fraction of the device's bfloat16 dense peak,
and the peak memory allocated during the run (``torch.cuda.max_memory_allocated``; weights of
both models included, as they are resident). FLOPs of one forward are counted as
``batch * (2 * P * T + 2 * L * T^2 * d_model)``: ``P`` the language model's parameters without
the token embedding, ``T`` positions, ``L`` layers, the second term the causal attention's
``QK^T`` and ``AV`` (half of the full ``4 L T^2 d``). A method that runs out of memory is
marked ``OOM`` and skipped at larger batch sizes; cells past ``--budget-s`` are skipped.
Prints a table and, last, one line ``JSON {...}`` with every figure.

Usage:
    python benchmarks/gpu.py [--models llava-1.5-7b llava-next-7b] [--batch-sizes 1 2 4 8 16 32]
        [--repeats 3] [--budget-s 420] [--peak-tflops X]
    python benchmarks/gpu.py --tiny --device cpu      # a seconds-long smoke run of the same code

It refuses to run (exit 1, one line) without CUDA unless ``--tiny``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

METHODS = ("plain", "scan", "tl_cache", "hf_eager", "hf_sdpa")
MODELS = ("llava-1.5-7b", "llava-next-7b")
_QUESTION = "what color is the dog in this picture ? answer with one word from the given choices directly"
# bfloat16 dense tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment
PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 PCIe": 756.5,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "4090": 165.2,
    "3090": 71.0,
}


def _image(size: tuple[int, int]):
    import torch
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def real_config(name: str) -> tuple[type, Any, Any]:
    """``(model class, config, processor)`` of ``name`` at its real shape (CLIP ViT-L/14 at 336 px,
    Llama 32 x 4096); the processor is a tiny model's at the same image geometry (its token ids
    fit the 32,064-entry vocabulary)."""
    from vh_lens.testing import tiny_llava

    kind = "llava_next" if name == "llava-next-7b" else "llava"
    skeleton, processor = tiny_llava(kind, "llama", n_layers=1, image_size=336, patch_size=14, vision_layers=1)
    config = skeleton.config
    text, vision = config.text_config, config.vision_config
    for key, value in dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=128,
        vocab_size=32064,
        max_position_embeddings=4096,
    ).items():
        setattr(text, key, value)
    for key, value in dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768
    ).items():
        setattr(vision, key, value)
    for c in (config, text, vision):
        c._attn_implementation = "sdpa"
    return type(skeleton), config, processor


def build(name: str, *, tiny: bool, device: str) -> tuple[Any, Any, Any]:
    """``(hf_model, lens, image)``: a random-weight model of ``name``'s shape (tiny: a few layers)."""
    import torch

    import vh_lens
    from vh_lens.testing import tiny_llava

    kind = "llava_next" if name == "llava-next-7b" else "llava"
    if tiny:
        hf, processor = tiny_llava(kind, "llama", n_layers=2, image_size=56, patch_size=14)
        hf.to(device)
        lens = vh_lens.load_llava(hf, processor=processor, device=device, n_ctx=512)
        return hf, lens, _image((80, 60) if kind == "llava_next" else (56, 56))
    model_cls, config, processor = real_config(name)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            hf = model_cls(config).eval()  # Hugging Face's own init, drawn on the GPU
    finally:
        torch.set_default_dtype(default)
    lens = vh_lens.load_llava(hf, processor=processor, device=device, dtype=torch.bfloat16, n_ctx=4096)
    return hf, lens, _image((640, 480) if kind == "llava_next" else (336, 336))


def methods(hf: Any, lens: Any, batch: Any) -> dict[str, Callable[[], Any]]:
    import torch

    from vh_lens.visual_heads.scan import ScoreAccumulator, head_metrics, visual_head_qk_hooks

    n_layers, n_heads = lens.cfg.n_layers, lens.cfg.n_heads
    layouts = batch.layout
    image = torch.stack([lay.image_mask for lay in layouts]).to(lens.device)
    text = torch.stack([lay.text_mask for lay in layouts]).to(lens.device)
    region = torch.zeros_like(image)
    query = batch.query_positions.to(lens.device)
    rows = torch.arange(len(batch), device=lens.device)
    lm = hf.model.language_model
    embeds = batch.embeds.to(lens.device, next(lm.parameters()).dtype)
    mask = batch.attention_mask.to(lens.device)

    def reduce(patterns: Any) -> ScoreAccumulator:
        acc = ScoreAccumulator(n_layers, n_heads)
        for layer, pattern in enumerate(patterns):
            acc.add(layer, head_metrics(pattern[rows, :, query, :].float(), image, region, text))
        return acc

    def scan() -> Any:
        acc = ScoreAccumulator(n_layers, n_heads)
        lens.run_with_hooks(batch, fwd_hooks=visual_head_qk_hooks(lens.lm, layouts, acc))
        return acc

    def tl_cache() -> Any:
        logits, cache = lens.run_with_cache(batch, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        return logits, reduce(cache["pattern", layer] for layer in range(n_layers))

    def hf_run(implementation: str, attentions: bool) -> Any:
        for c in (hf.config, hf.config.text_config):
            c._attn_implementation = implementation
        out = lm(inputs_embeds=embeds, attention_mask=mask, output_attentions=attentions)
        logits = hf.lm_head(out.last_hidden_state)
        return (logits, reduce(out.attentions)) if attentions else logits

    return {
        "plain": lambda: lens(batch),
        "scan": scan,
        "tl_cache": tl_cache,
        "hf_eager": lambda: hf_run("eager", True),
        "hf_sdpa": lambda: hf_run("sdpa", False),
    }


def forward_flops(lens: Any, batch_size: int, seq: int) -> float:
    cfg = lens.cfg
    params = sum(p.numel() for name, p in lens.lm.named_parameters() if not name.startswith("embed."))
    return float(batch_size * (2 * params * seq + 2 * cfg.n_layers * seq * seq * cfg.d_model))


def measure(fn: Callable[[], Any], repeats: int, cuda: bool) -> dict[str, Any]:
    import torch

    times, peaks = [], []
    for step in range(repeats + 1):  # step 0: warm-up
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        del result
        if step:
            times.append(elapsed)
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated())
    return {"time_s": statistics.median(times), "peak_bytes": max(peaks) if peaks else None}


def device_peak(device: str, override: float | None) -> tuple[str, float | None]:
    import torch

    if override is not None:
        return (torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"), override
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    cuda = args.device.startswith("cuda")
    device_name, peak = device_peak(args.device, args.peak_tflops)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for name in args.models:
        hf, lens, image = build(name, tiny=args.tiny, device=args.device)
        built = time.perf_counter() - start
        out_of_memory: set[str] = set()
        for batch_size in args.batch_sizes:
            batch = lens.prepare(images=[image] * batch_size, questions=[_QUESTION] * batch_size)
            seq = int(batch.input_ids.shape[1])
            models[name] = {
                "seq_len": seq,
                "image_tokens": int(batch.layout[0].n_image_tokens),
                "n_layers": int(lens.cfg.n_layers),
                "d_model": int(lens.cfg.d_model),
                "built_s": built,
            }
            flops = forward_flops(lens, batch_size, seq)
            for method, fn in methods(hf, lens, batch).items():
                if method not in args.methods:
                    continue
                row: dict[str, Any] = {"model": name, "method": method, "batch_size": batch_size, "seq_len": seq}
                if method in out_of_memory:
                    row["status"] = "OOM"
                elif time.perf_counter() - start > args.budget_s:
                    row["status"] = "skipped (time budget)"
                else:
                    try:
                        with torch.inference_mode():
                            row |= measure(fn, args.repeats, cuda)
                        row["status"] = "ok"
                        row["samples_per_s"] = batch_size / row["time_s"]
                        row["tflops"] = flops / row["time_s"] / 1e12
                        row["fraction_of_peak"] = None if peak is None else row["tflops"] / peak
                    except torch.OutOfMemoryError:
                        out_of_memory.add(method)
                        row["status"] = "OOM"
                    finally:
                        gc.collect()
                        if cuda:
                            torch.cuda.empty_cache()
                rows.append(row)
            del batch
        del hf, lens
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return {
        "device": device_name,
        "peak_tflops_bf16": peak,
        "dtype": "float32" if args.tiny else "bfloat16",
        "tiny": bool(args.tiny),
        "models": models,
        "rows": rows,
        "total_s": time.perf_counter() - start,
        "flops_formula": "batch * (2 * P * T + 2 * L * T^2 * d_model), P = LM parameters without the embedding",
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"device {result['device']}, bf16 dense peak {result['peak_tflops_bf16']} TFLOP/s, "
        f"dtype {result['dtype']}, total {result['total_s']:.0f} s"
    ]
    for name, info in result["models"].items():
        lines.append(
            f"{name}: {info['n_layers']} layers x d_model {info['d_model']}, {info['image_tokens']} image "
            f"tokens, {info['seq_len']} positions"
        )
    lines.append(
        f"{'model':<14} {'method':<9} {'batch':>5} {'s/batch':>9} {'samples/s':>10} {'TFLOP/s':>8} "
        f"{'of peak':>8} {'peak GiB':>9}"
    )
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['model']:<14} {r['method']:<9} {r['batch_size']:>5} {r['status']:>9}")
            continue
        frac = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
        mem = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.1f}"
        lines.append(
            f"{r['model']:<14} {r['method']:<9} {r['batch_size']:>5} {r['time_s']:>9.4f} "
            f"{r['samples_per_s']:>10.2f} {r['tflops']:>8.2f} {frac:>8} {mem:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip cells that would start after this")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, if not known")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny float32 models: a smoke run of the same code")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device is available; run it on a GPU, or `--tiny --device cpu` "
            "for the smoke run",
            file=sys.stderr,
        )
        return 1
    if not args.tiny and not args.device.startswith("cuda"):
        print(
            f"benchmarks/gpu.py: the 7B shapes need a CUDA device, got --device {args.device}; "
            "`--tiny` runs small models anywhere",
            file=sys.stderr,
        )
        return 1
    if args.batch_sizes is None:
        args.batch_sizes = [1, 2] if args.tiny else [1, 2, 4, 8, 16, 32]
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1:
        parser.error("batch sizes and --repeats must be positive")
    if args.tiny:
        args.repeats = min(args.repeats, 1)
        torch.set_num_threads(1)
    result = run(args)
    print(table(result))
    print("JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
