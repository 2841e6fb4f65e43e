"""Train the chain-of-thought toy shipped in ``vh_lens/assets/toy_cog/`` (CPU, deterministic).

The model starts from the shipped toy (``--init-from``, :mod:`vh_lens.toy`): its vision tower
and projector (frozen, as LLaVA freezes CLIP), its language model, and the embedding and
unembedding rows of every word the two vocabularies share; the new words
(:func:`vh_lens.toy_cog.cog_toy_vocabulary`) start from the fresh model's seeded initialisation.
It then learns :func:`vh_lens.data.cogvision_shapes.cogvision_shapes`: each step draws
``--items`` fresh items from a fixed stream (seed ``--seed``) and trains on every subquestion
(with its chain-of-thought context, as :func:`vh_lens.data.cogvision.subquestion_samples`
formats it) and on each item's main question without the chain. The loss is
``scripts/train_toy.py``'s: cross-entropy of the answer and ``</s>``, plus ``--question-weight``
times the mean cross-entropy of the prompt tokens after the image (which include the earlier
steps' answers A1, A2, ...).

Held-out accuracy (seed ``--eval-seed``) is the argmax of the first answer token, per function
and on the main questions (per template too).

Usage (the shipped checkpoint; the defaults are its settings)::

    HF_HUB_OFFLINE=1 python scripts/train_cog_toy.py --out vh_lens/assets/toy_cog --max-minutes 28
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_toy import FastInputs, answer_loss  # noqa: E402 - the first toy's script, reused

from vh_lens.data.cogvision import main_question_samples, subquestion_samples  # noqa: E402
from vh_lens.data.cogvision_shapes import FUNCTIONS, TEMPLATES, cogvision_shapes  # noqa: E402
from vh_lens.data.sample import Sample  # noqa: E402
from vh_lens.toy import TOY_PATH, toy_config  # noqa: E402
from vh_lens.toy_cog import COG_TOY_PATH, build_cog_toy_processor  # noqa: E402

CHANCE = {
    "Low-level Visual Reception": 0.25,
    "High-level Visual Reception": 1 / 3,
    "Counting": 1 / 6,
    "Logical Reasoning": 0.5,
    "Decision-making": "mix: 1/2 (yes/no), 1/4 (colour), 1/6 (count)",
    "main": "mix: 1/2 (compare, same_kind), 1/4 (left_color), 1/6 (share_color)",
}
CHANCE_NOTE = (
    "uniform guess among the answers of the question's type: colours 4, shapes 3, counts 1..6, yes/no; "
    "the label (or majority) baseline within a type is at most ~0.55 (yes/no) and 0.3 (counts)"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=COG_TOY_PATH, help="output folder")
    p.add_argument("--init-from", type=Path, default=TOY_PATH, help="toy checkpoint to start from")
    p.add_argument("--steps", type=int, default=3000, help="steps (also the length of the cosine schedule)")
    p.add_argument("--items", type=int, default=8, help="items per step (each gives its subquestions + main question)")
    p.add_argument("--main-repeat", type=int, default=1, help="copies of each main question per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--question-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--eval-seed", type=int, default=778)
    p.add_argument("--eval-items", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    p.add_argument("--no-save", action="store_true", help="trial runs: print figures, write nothing")
    return p.parse_args(argv)


def step_samples(items: Sequence, main_repeat: int) -> list[Sample]:
    """Every subquestion (chain context) and each main question (``main_repeat`` copies) of ``items``."""
    mains = [s for s in main_question_samples(items) for _ in range(main_repeat)]
    for s in mains:
        s.metadata["function"] = "main"
    return subquestion_samples(items) + mains


def chunks_by_length(fast: FastInputs, samples: Sequence[Sample], n_chunks: int = 2) -> list[list[Sample]]:
    """Split into groups of similar prompt length (left padding wastes less)."""
    order = sorted(samples, key=lambda s: len(s.question))
    size = math.ceil(len(order) / n_chunks)
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, fast: FastInputs, samples: Sequence[Sample], batch_size: int = 64
) -> dict[str, float]:
    """First-token argmax accuracy per function label (``"main"``: main questions; ``"main:<template>"`` too)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for chunk in chunks_by_length(fast, samples, max(1, len(samples) // batch_size)):
        logits = model(**fast(chunk), logits_to_keep=1).logits[:, -1]
        for s, tok in zip(chunk, fast.tok.convert_ids_to_tokens(logits.argmax(-1).tolist()), strict=True):
            hits[s.metadata["function"]].append(tok == s.answer)
            if s.metadata["function"] == "main":
                hits["main:" + s.metadata["template"]].append(tok == s.answer)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def init_model(args: argparse.Namespace, processor) -> torch.nn.Module:  # noqa: ANN001
    """A fresh toy-sized model with the new vocabulary, then ``--init-from``'s weights copied in."""
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

    donor = LlavaForConditionalGeneration.from_pretrained(args.init_from)
    donor_tok = PreTrainedTokenizerFast.from_pretrained(args.init_from)
    t = donor.config.text_config
    v = donor.config.vision_config
    config = toy_config(processor, n_layers=t.num_hidden_layers, d_model=t.hidden_size, n_heads=t.num_attention_heads,
                        d_mlp=t.intermediate_size, vision_layers=v.num_hidden_layers, vision_hidden=v.hidden_size,
                        vision_heads=v.num_attention_heads, vision_feature_layer=donor.config.vision_feature_layer)  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    state = {k: w for k, w in donor.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("embed_tokens" not in k and "lm_head" not in k for k in missing):
        raise RuntimeError(f"--init-from does not match the toy architecture: {missing} {unexpected}")
    old_vocab, new_vocab = donor_tok.get_vocab(), processor.tokenizer.get_vocab()
    shared = [(new_vocab[w], old_vocab[w]) for w in new_vocab if w in old_vocab]
    new_ids, old_ids = (torch.tensor(x) for x in zip(*shared, strict=True))
    with torch.no_grad():
        for get in (lambda m: m.model.language_model.embed_tokens.weight, lambda m: m.lm_head.weight):
            get(model)[new_ids] = get(donor)[old_ids]
    return model


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    processor = build_cog_toy_processor()
    model = init_model(args, processor)
    model.model.vision_tower.requires_grad_(False)
    fast = FastInputs(processor, step_samples(cogvision_shapes(4, args.eval_seed + 1), 1))
    held_out_items = cogvision_shapes(args.eval_items, args.eval_seed)
    held_out = step_samples(held_out_items, 1)
    for s in held_out:
        if s.metadata["function"] == "main":
            s.metadata["template"] = held_out_items[s.metadata["group"]].metadata["template"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    before = accuracy(model.eval(), fast, held_out)
    print(f"params {n_params:,}; held-out before training {before}", flush=True)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    history, running = [], []
    t0 = time.perf_counter()
    step = 0
    for step in range(args.steps):
        model.train()
        samples = step_samples(cogvision_shapes(args.items, args.seed, start=step * args.items), args.main_repeat)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for chunk in chunks_by_length(fast, samples):
            loss = answer_loss(model, fast(chunk, answers=True), model.config.image_token_id, args.question_weight)
            loss = loss / (2 * len(samples))
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        running.append(loss_sum)
        elapsed = time.perf_counter() - t0
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1} loss {sum(running) / len(running):.4f} lr {lr_at(step):.2e} "
                  f"s/step {elapsed / (step + 1):.3f} elapsed {elapsed:.0f}s", flush=True)  # fmt: skip
            running = []
        out_of_time = args.max_minutes is not None and elapsed > 60 * args.max_minutes
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps or out_of_time:
            acc = accuracy(model.eval(), fast, held_out)
            history.append({"step": step + 1, "elapsed_s": round(time.perf_counter() - t0, 1), "accuracy": acc})
            print(f"eval step {step + 1}: {acc}", flush=True)
        if out_of_time:
            print("stopping: --max-minutes reached", flush=True)
            break
    total = time.perf_counter() - t0
    if args.no_save:
        return
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    log = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in (sys.argv if argv is None else ["scripts/train_cog_toy.py", *argv])),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "steps_done": step + 1,
        "train_seconds": round(total, 1),
        "seconds_per_step": round(total / (step + 1), 4),
        "n_params": n_params,
        "init_from_log": (
            json.loads((args.init_from / "train_log.json").read_text())
            if (args.init_from / "train_log.json").is_file()
            else None
        ),
        "functions": list(FUNCTIONS),
        "templates": list(TEMPLATES),
        "accuracy_before_training": before,
        "final_accuracy": history[-1]["accuracy"],
        "held_out": {
            "seed": args.eval_seed,
            "items": args.eval_items,
            "metric": "first-token argmax",
            "samples": "every subquestion (chain context) and every main question (no chain)",
        },
        "chance": CHANCE,
        "chance_note": CHANCE_NOTE,
        "history": history,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "note": "2 CPU cores shared with other jobs while training: timings are pessimistic",
    }
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps(log["final_accuracy"]), f"total {total:.0f}s", flush=True)


if __name__ == "__main__":
    main()
