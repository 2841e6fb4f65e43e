"""Max differences between vh_lens and the Hugging Face LLaVA model, per family.

For each supported family on tiny random-weight models (``vh_lens.testing.tiny_llava``): a
left-padded batch of three prompts of different lengths (two images, one text only) through
``model(batch)`` and ``run_with_cache``, against each sample run alone through the Hugging Face
model (eager attention), in float32. Prints the max absolute difference of log-softmax and of the
attention patterns (every layer), with weight processing on and off.

Usage:
    python benchmarks/equivalence.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image

import vh_lens
from vh_lens.testing import FAMILIES, tiny_llava

QUESTIONS = ["how many dogs?", "what color is the cat in this picture ?", "is there a red circle in the image"]


def _image(size, seed):
    g = torch.Generator().manual_seed(seed)
    w, h = size
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


@torch.no_grad()
def max_differences(kind, backbone, kv, processed):
    hf, processor = tiny_llava(kind, backbone, n_kv_heads=kv)
    loader = vh_lens.load_llava if processed else vh_lens.core.load_llava_no_processing
    model = loader(hf, processor=processor)
    images = [_image((70, 40), 0), _image((50, 90), 1), None]
    batch = model.prepare(images=images, questions=QUESTIONS)
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    d_logp = d_pattern = 0.0
    for i, image in enumerate(images):
        enc = processor(images=[image] if image is not None else None, text=[batch.prompts[i]], return_tensors="pt")
        ref = hf(**enc, output_attentions=True)
        n = enc.input_ids.shape[1]
        d_logp = max(d_logp, (logits[i, -n:].log_softmax(-1) - ref.logits[0].log_softmax(-1)).abs().max().item())
        for layer in range(model.cfg.n_layers):
            d = (cache["pattern", layer][i, :, -n:, -n:] - ref.attentions[layer][0]).abs().max().item()
            d_pattern = max(d_pattern, d)
    return d_logp, d_pattern


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'family':<32} {'processing':<11} {'max |d log-softmax|':>20} {'max |d pattern|':>16}")
    for kind, backbone, kv in FAMILIES:
        name = f"{kind} / {backbone}" + (f" (GQA, {kv} KV heads)" if kv else "")
        for processed in (True, False):
            d_logp, d_pattern = max_differences(kind, backbone, kv, processed)
            print(f"{name:<32} {'on' if processed else 'off':<11} {d_logp:>20.2e} {d_pattern:>16.2e}")


if __name__ == "__main__":
    main()
