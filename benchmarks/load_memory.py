"""Time and peak host memory of loading a LLaVA checkpoint: vh_lens against Hugging Face.

Writes a random-weight LLaVA checkpoint (Llama backbone, sharded safetensors like the real ones),
then, each in a fresh process and after one untimed read of the files (page cache warm), loads it
with

- ``hf``: ``LlavaForConditionalGeneration.from_pretrained(folder, dtype=...)``: the weights
  stay memory-mapped views of the files, read from disk or page cache only when first used;
- ``hf_touched``: the same, then every weight read once (what the first forward pass pays), so
  time and peak count the weights in memory;
- ``load_llava``: ``vh_lens.load_llava(folder, dtype=...)`` (weight processing on);
- ``load_llava_unchecked``: the same with ``check_finite=False`` (no NaN / inf scan);
- ``no_processing``: ``vh_lens.core.load_llava_no_processing(folder, dtype=...)``;

and reports for each the wall time of the load call, ``loaded`` (bytes of the parameters and
buffers that stay loaded), ``peak`` (the process's peak resident memory during loading minus its
resident memory just before, after imports) and their ratio, then the time ratio of each vh_lens
loader to Hugging Face. Targets: time <= 2x Hugging Face's, peak <= 1.1x loaded. The last line is
the same as one JSON object.

Usage:
    python benchmarks/load_memory.py [--shape llava-1.5-7b] [--d-model 1024] [--layers 12]
        [--heads 16] [--intermediate N] [--vocab 32064] [--dtype float32]
        [--keep DIR | --checkpoint DIR] [--loaders hf,load_llava,no_processing] [--repeat 1]

``--keep DIR`` writes the checkpoint to ``DIR`` and keeps it; ``--checkpoint DIR`` loads an
existing one (written by ``--keep``; the shape flags are then ignored). ``--shape llava-1.5-7b`` is
the real size (Llama-2-7B backbone: d_model 4096, 32 layers, 32 heads, intermediate 11008, vocab
32064, CLIP ViT-L/336 tower, float16: about 13 GiB). The checkpoint is written tensor by tensor,
so writing it holds one tensor in memory, never the model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "llava-1.5-7b": dict(
        d_model=4096, layers=32, heads=32, intermediate=11008, vocab=32064, dtype="float16", vision="clip-l-336"
    ),
}
LOADERS = ("hf", "hf_touched", "load_llava", "load_llava_unchecked", "no_processing")
SHARD_BYTES = 5 * 2**30
GIB = 2**30


def _rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def _child(folder: str, loader: str, dtype_name: str) -> None:
    import torch

    dtype = getattr(torch, dtype_name)
    if loader.startswith("hf"):
        from transformers import LlavaForConditionalGeneration

        def load():
            model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
            if loader == "hf_touched":
                with torch.no_grad():
                    for p in model.parameters():
                        torch.aminmax(p)  # reads every byte
            return model
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this worktree's vh_lens
        import vh_lens
        import vh_lens.core.loading  # imports are not timed
        import vh_lens.core.model

        def load():
            if loader == "no_processing":
                return vh_lens.core.load_llava_no_processing(folder, dtype=dtype)
            return vh_lens.load_llava(folder, dtype=dtype, check_finite=loader == "load_llava")

    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak counter (Linux >= 4.0)
        f.write("5")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    hwm = _rss_bytes("VmHWM")
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    loaded = sum(t.numel() * t.element_size() for t in tensors)
    print(
        json.dumps(
            {
                "loader": loader,
                "seconds": seconds,
                "user_s": used.ru_utime - cpu.ru_utime,
                "sys_s": used.ru_stime - cpu.ru_stime,
                "before": before,
                "peak_hwm": hwm,
                "after": _rss_bytes(),
                "loaded": loaded,
            }
        )
    )


def _config(args):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from vh_lens.testing import tiny_llava

    _, processor = tiny_llava("llava", "llama")
    text = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.intermediate or args.d_model * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    if args.vision == "clip-l-336":
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
    else:
        vision = CLIPVisionConfig(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
        )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>")
    )
    config.dtype = args.dtype
    return config, processor


def write_checkpoint(folder: Path, args) -> None:
    """A random checkpoint (normal weights, std 0.02; norms near 1) written one tensor at a time."""
    import torch
    from transformers import LlavaForConditionalGeneration

    config, processor = _config(args)
    dtype = getattr(torch, args.dtype)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    code = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    item = torch.empty(0, dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = item * int(torch.Size(shape).numel())
        if size and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            nbytes = item * int(torch.Size(shapes[name]).numel())
            header[name] = {"dtype": code, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / file, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for name in names:
                shape = shapes[name]
                norm = name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name
                t = torch.randn(shape, generator=gen)
                t = 1 + 0.1 * t if norm else 0.02 * t
                f.write(t.to(dtype).contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                del t
        total += offset
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config.save_pretrained(folder)
    processor.save_pretrained(folder)


def _warm(folder: Path) -> None:
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(64 * 2**20):
                pass


def _run(folder: Path, loader: str, dtype: str) -> dict:
    _warm(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), "--loader", loader, "--dtype", dtype],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        sys.exit(f"{loader} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES))
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=None, help="default: d_model * 11 // 4")
    parser.add_argument("--vocab", type=int, default=32064)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--vision", default="small", choices=["small", "clip-l-336"])
    parser.add_argument("--keep", type=Path, help="write the checkpoint to this folder and keep it")
    parser.add_argument(
        "--checkpoint", type=Path, help="load this checkpoint (written by --keep) instead of writing one"
    )
    parser.add_argument(
        "--loaders",
        default="hf,load_llava,no_processing",
        help=f"comma-separated, run in this order, each in a fresh process: {', '.join(LOADERS)}",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all loaders")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--loader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.loader, args.dtype)
        return
    for key, value in SHAPES.get(args.shape, {}).items():
        setattr(args, key, value)
    loaders = args.loaders.split(",")
    if unknown := set(loaders) - set(LOADERS):
        parser.error(f"unknown loaders {sorted(unknown)}; known: {', '.join(LOADERS)}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            folder = args.checkpoint
            args.dtype = json.loads((folder / "config.json").read_text()).get("dtype", args.dtype)
        else:
            folder = args.keep or Path(tmp) / "ckpt"
            start = time.perf_counter()
            write_checkpoint(folder, args)
            print(f"wrote {folder} in {time.perf_counter() - start:.1f} s")
        runs = [_run(folder, loader, args.dtype) for _ in range(args.repeat) for loader in loaders]
        size_on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    best = {
        name: min((r["seconds"] for r in runs if r["loader"] == name), default=None) for name in ("hf", "hf_touched")
    }
    print(
        f"checkpoint {folder}: {size_on_disk / GIB:.3f} GiB on disk, {args.dtype}; the machine is shared with "
        "other work: compare ratios, not seconds"
    )
    print(
        f"{'loader':22s} {'seconds':>8s} {'x hf':>6s} {'x hf_t':>6s} {'cpu s':>6s} {'loaded GiB':>10s} {'peak GiB':>9s} "
        f"{'peak/loaded':>11s}"
    )
    for r in runs:
        r["peak"] = r["peak_hwm"] - r["before"]
        r["peak_over_loaded"] = r["peak"] / r["loaded"]
        cells = []
        for name in ("hf", "hf_touched"):
            r[f"time_over_{name}"] = r["seconds"] / best[name] if best[name] else None
            cells.append(f"{r[f'time_over_{name}']:6.2f}" if best[name] else "     -")
        print(
            f"{r['loader']:22s} {r['seconds']:8.2f} {cells[0]} {cells[1]} {r['user_s'] + r['sys_s']:6.1f} "
            f"{r['loaded'] / GIB:10.3f} {r['peak'] / GIB:9.3f} {r['peak_over_loaded']:11.3f}"
        )
    print(
        "targets: vh_lens time <= 2.00 x hf (best run of each), peak/loaded <= 1.10; "
        "x hf_t: against Hugging Face with every weight read once"
    )
    print(json.dumps({"checkpoint": str(folder), "size_on_disk": size_on_disk, "dtype": args.dtype, "runs": runs}))


if __name__ == "__main__":
    main()
