"""Peak host memory while loading a LLaVA checkpoint, against the size of what stays loaded.

Writes a random-weight LLaVA checkpoint (Llama backbone) to a temporary folder, then loads it with
``vh_lens.load_llava`` in a fresh process and reports:

- ``loaded``: bytes of the parameters and buffers that stay loaded (language model, vision
  tower, projector);
- ``peak``: the process's peak resident memory during loading, minus its resident memory just
  before loading (after imports);
- their ratio (target: at most 1.3).

Usage:
    python benchmarks/load_memory.py [--d-model 1024] [--layers 12] [--heads 16] [--vocab 32064] [--dtype float32]

The default shape is embedding-heavy (the two vocabulary matrices are 31% of the weights);
``--d-model 2048 --layers 16`` has the proportions of Llama-2-7B (14%), and
``--d-model 4096 --layers 32 --heads 32 --dtype float16`` is the real 7B size (about 14 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _child(folder: str, dtype: str) -> None:
    import torch

    import vh_lens

    before = _rss_bytes()
    # reset the peak counter to the current resident size (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model = vh_lens.load_llava(folder, dtype=getattr(torch, dtype))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    loaded = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    after = _rss_bytes()
    print(json.dumps({"before": before, "peak_hwm": hwm, "peak_ru": peak, "after": after, "loaded": loaded}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32064)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dtype)
        return

    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vh_lens.testing import tiny_llava

    _, processor = tiny_llava("llava", "llama")
    text = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_model * 11 // 4,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=4096,
    )
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=56, patch_size=14)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"))
    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        model = model.to_empty(device="cpu").to(getattr(torch, args.dtype))  # contents do not matter here
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.01)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        size_on_disk = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
        del model
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", tmp, "--dtype", args.dtype],
            capture_output=True, text=True, env=env, check=True,
        )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2**30
    grown = r["peak_hwm"] - r["before"]
    print(f"checkpoint on disk      {size_on_disk / gib:8.3f} GiB ({args.layers} layers, d_model {args.d_model}, {args.dtype})")
    print(f"stays loaded (tensors)  {r['loaded'] / gib:8.3f} GiB")
    print(f"RSS before loading      {r['before'] / gib:8.3f} GiB")
    print(f"RSS after loading       {r['after'] / gib:8.3f} GiB  (+{(r['after'] - r['before']) / gib:.3f})")
    print(f"peak RSS while loading  {r['peak_hwm'] / gib:8.3f} GiB  (+{grown / gib:.3f})")
    print(f"peak growth / loaded    {grown / r['loaded']:8.3f}   (target <= 1.3)")


if __name__ == "__main__":
    main()
