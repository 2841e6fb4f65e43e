"""Why the bundled toy LLaVA answers object questions ("How many red circles are there?") only half the time.

Four measurements on a toy checkpoint (default: the bundled one), each printed:

0. ``selectivity``: per head, at the answer query, the mean attention on one patch of the asked
   class divided by the mean attention on one patch of another shape (1 = no preference).
1. ``probe``: does the answer query know the asked class? A least-squares linear probe on the
   residual stream at the answer query (after each layer) predicts the asked colour and shape
   (trained on 400 questions, tested on 200).
2. ``select``: can the frozen image features answer the question at all? One attention head
   over the 64 image tokens of the checkpoint's own vision tower and projector (RMSNorm, keys
   and values from the image tokens, the query a learned embedding of the asked colour plus one
   of the asked shape, rotary positions as in the language model, a sink), then an MLP to the
   count, trained with Adam on 3000 questions and tested on 500 others.
3. ``mean``: the same without selection: the mean of the values over all image tokens plus the
   question's class, read by a deeper MLP. This is what a model that does not find the asked
   class's patches can reach.

Usage:
    python scripts/toy_object_diagnosis.py [--path CHECKPOINT] [--steps 2000]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import nn

from vh_lens.data.shapes import COLORS, SHAPE_KINDS, shapes
from vh_lens.toy import TOY_PATH, format_question, load_toy, load_toy_hf, toy_inputs


def asked_class(sample) -> tuple[int, int]:
    """(colour index, shape index) of the class an object question names (the generator records it)."""
    target = sample.metadata["target"]
    return list(COLORS).index(target["color"]), SHAPE_KINDS.index(target["kind"])


@torch.no_grad()
def selectivity(path, n: int = 48) -> torch.Tensor:
    """``[n_layers, n_heads]`` per-patch attention on the asked class over that on other shapes."""
    model = load_toy(path)
    samples = shapes(n, seed=4242, kinds=("count_object",))
    batch = model.prepare_samples(samples, format_question=format_question)
    _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
    pattern = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)], 1)
    on_asked, on_other = torch.zeros(pattern.shape[1:3]), torch.zeros(pattern.shape[1:3])
    n_asked = n_other = 0
    for i, s in enumerate(samples):
        layout = batch.layout[i]
        target = s.metadata["target"]
        grid = s.metadata["grid"]
        rows = pattern[i, :, :, layout.query_position]  # [layers, heads, keys]
        for shape in s.metadata["shapes"]:
            key = layout.image_positions[shape["row"] * grid + shape["col"]]
            if (shape["color"], shape["kind"]) == (target["color"], target["kind"]):
                on_asked += rows[..., key]
                n_asked += 1
            else:
                on_other += rows[..., key]
                n_other += 1
    return (on_asked / n_asked) / (on_other / n_other)


def probe_query(path, n_train: int = 400, n_test: int = 200) -> list[tuple[str, float, float]]:
    model = load_toy(path)
    samples = shapes(n_train + n_test, seed=31, kinds=("count_object",))
    feats: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(samples), 50):
        chunk = samples[i : i + 50]
        batch = model.prepare_samples(chunk, format_question=format_question)
        _, cache = model.run_with_cache(
            batch, names_filter=lambda n: n.endswith("resid_post") or n == "blocks.0.hook_resid_pre"
        )
        rows = torch.arange(len(chunk))
        for name, value in cache.items():
            feats.setdefault(name, []).append(value[rows, torch.as_tensor(batch.query_positions)])
    labels = torch.tensor([asked_class(s) for s in samples])
    out = []
    for name in ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)
    ]:
        x = torch.cat(feats[name])
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        accs = []
        for j, m in ((0, len(COLORS)), (1, len(SHAPE_KINDS))):
            y = F.one_hot(labels[:, j], m).float()
            w = torch.linalg.lstsq(x[:n_train], y[:n_train]).solution
            accs.append(((x[n_train:] @ w).argmax(-1) == labels[n_train:, j]).float().mean().item())
        out.append((name, *accs))
    return out


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    d = x.shape[-1]
    angle = pos[:, None].float() * base ** (-torch.arange(0, d, 2).float() / d)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Reader(nn.Module):
    """One attention head (``select``) or a plain mean (``mean``) over the image tokens, then an MLP."""

    def __init__(self, d: int, select: bool, base: float, d_head: int = 16):
        super().__init__()
        self.select, self.base = select, base
        self.norm = nn.RMSNorm(d)
        self.color, self.kind = nn.Embedding(len(COLORS), d_head), nn.Embedding(len(SHAPE_KINDS), d_head)
        self.k, self.v, self.q_out = nn.Linear(d, d_head), nn.Linear(d, 64), nn.Linear(d_head, 64)
        self.sink = nn.Parameter(torch.zeros(1))
        self.out = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 7))

    def forward(self, x: torch.Tensor, color: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q = self.color(color) + self.kind(kind)
        if self.select:
            n = x.shape[1]
            keys = rope(self.k(x), torch.arange(5, 5 + n), self.base)
            query = rope(q[:, None], torch.tensor([n + 16]), self.base)[:, 0]
            scores = torch.einsum("bd,bpd->bp", query, keys) / q.shape[-1] ** 0.5
            attn = torch.cat([scores, self.sink.expand(len(x), 1)], 1).softmax(-1)[:, :-1]
            return self.out(torch.einsum("bp,bpe->be", attn, self.v(x)))
        return self.out(self.v(x).mean(1) + self.q_out(q))


@torch.no_grad()
def image_tokens(hf, processor, samples) -> torch.Tensor:
    feats = []
    for i in range(0, len(samples), 100):
        pixels = toy_inputs(processor, samples[i : i + 100])["pixel_values"]
        feats.append(torch.stack(list(hf.model.get_image_features(pixel_values=pixels).pooler_output)))
    return torch.cat(feats)


def train_reader(path, select: bool, steps: int, seed: int = 0) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    hf, processor = load_toy_hf(path)
    hf.eval()
    base = float(hf.config.text_config.rope_parameters.get("rope_theta", 10000.0))
    data = {}
    for split, (n, data_seed) in {"train": (3000, 1), "test": (500, 2)}.items():
        s = shapes(n, seed=data_seed, kinds=("count_object",))
        cls = torch.tensor([asked_class(x) for x in s])
        data[split] = (
            image_tokens(hf, processor, s),
            cls[:, 0],
            cls[:, 1],
            torch.tensor([int(x.answer) - 1 for x in s]),
        )
    reader = Reader(data["train"][0].shape[-1], select, base)
    opt = torch.optim.Adam(reader.parameters(), 3e-3)
    x, c, k, y = data["train"]
    history = []
    for step in range(steps + 1):
        i = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(reader(x[i], c[i], k[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            with torch.no_grad():
                xt, ct, kt, yt = data["test"]
                history.append((step, (reader(xt, ct, kt).argmax(-1) == yt).float().mean().item()))
    return history


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=str(TOY_PATH), help="toy checkpoint folder")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps of each reader")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratio = selectivity(args.path)
    print("0. per-patch attention at the answer query, asked class / other shapes (layers x heads):")
    print(ratio.numpy().round(2))
    print(f"   range {ratio.min():.2f} - {ratio.max():.2f}")
    print("1. linear probe of the asked class at the answer query (held-out accuracy):")
    for name, color, kind in probe_query(args.path):
        print(f"  {name}: colour {color:.0%}, shape {kind:.0%}")
    for select, title in (
        (True, "2. one selecting attention head on the frozen image tokens"),
        (False, "3. no selection (mean over image tokens)"),
    ):
        print(f"{title}, held-out object counting accuracy (chance 1/7):")
        for step, acc in train_reader(args.path, select, args.steps):
            print(f"  step {step}: {acc:.1%}")


if __name__ == "__main__":
    main()
