"""Train the toy LLaVA shipped in ``vh_lens/assets/toy_llava/`` (CPU, deterministic).

The model (:func:`vh_lens.toy.toy_config`) learns the synthetic pointing task of
:func:`vh_lens.data.shapes.shapes` from scratch: every step draws a fresh batch from a
fixed stream (seed ``--seed``, sample indices ``step * batch ..``), so no sample repeats and
the data order is fixed. Two stages:

1. Vision (``--vision-pretrain-steps``): the vision tower and projector learn, through a
   linear probe on each image token that is then thrown away, what the patch holds (empty or
   colour x shape), whether the box is drawn on it, and how many patches of the image hold
   the same class (``--vision-objective count``). A real LLaVA's CLIP encoder brings rich
   features; this stands in for it. The tower is then frozen, as LLaVA freezes CLIP.
2. Language model and projector: cross-entropy of the answer token and the ``</s>`` after
   it, plus (``--question-weight``) the mean cross-entropy of the question tokens. The first
   ``--first-steps`` steps see object questions only (``--first-kinds``). With the other
   kinds mixed in from the start, object counting stayed near 50% in every run made (up to
   2000-3000 steps): the model read an image-wide summary instead of finding the class the
   question names (``scripts/toy_object_diagnosis.py``); on object questions alone it
   learns to find it after about 1000-1300 steps, and to tell colours apart (the last errors:
   another shape of the same kind in another colour) by about 2300. Then the mix, half of it
   yes/no questions: with 3/8 yes/no and 1300 mixed steps, yes/no ended at 88% on fresh samples.

Held-out accuracy is measured on another seed (``--eval-seed``) by the argmax of the first
answer token, on the trained question kinds. Multiple-choice questions are not trained by
default.

Usage (the shipped checkpoint; the defaults are its settings)::

    HF_HUB_OFFLINE=1 python scripts/train_toy.py --out vh_lens/assets/toy_llava --max-minutes 26

The shipped run stopped at step 4041 of 4200 on ``--max-minutes 26`` (29 minutes with the vision
stage on this 2-core machine; ``steps_done`` in its train log), so a rerun on a faster machine
trains the last steps too and its checkpoint differs in those final, low learning-rate steps.

Writes ``config.json``, ``model.safetensors`` (float32), the processor files (image processor,
tokenizer, chat template) and ``train_log.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vh_lens.data.sample import Sample
from vh_lens.data.shapes import shapes
from vh_lens.toy import TOY_PATH, build_toy_processor, toy_config, toy_inputs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=TOY_PATH, help="output folder")
    p.add_argument("--steps", type=int, default=4200, help="stage-2 steps (also the length of the cosine schedule)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine decay floor, as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1000, help="training data and initialisation seed")
    p.add_argument("--eval-seed", type=int, default=777, help="held-out data seed")
    p.add_argument("--eval-n", type=int, default=240, help="held-out samples (the trained kinds, balanced)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    p.add_argument(
        "--kinds",
        default="exists,count_object,exists,count_super,exists,count_object,exists,count_general",
        help="comma-separated training kind cycle (repeats weight a kind)",
    )
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--d-mlp", type=int, default=256)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--vision-feature-layer", type=int, default=-1)
    p.add_argument(
        "--vision-pretrain-steps",
        type=int,
        default=2000,
        help="stage 1: steps of per-patch supervision for the vision tower and projector",
    )
    p.add_argument("--vision-pretrain-lr", type=float, default=3e-3)
    p.add_argument(
        "--vision-word-probe",
        action="store_true",
        help="the class probe scores a patch against the language model's word vectors of colour + kind",
    )
    p.add_argument("--vision-objective", choices=("probe", "count", "align"), default="count")
    p.add_argument(
        "--train-vision",
        action="store_true",
        help="keep training the vision tower in stage 2 (default: frozen after stage 1, as LLaVA freezes CLIP)",
    )
    p.add_argument(
        "--curriculum-steps",
        type=int,
        default=0,
        help="first steps on easy images (0 or 1 other class instead of 1 or 2)",
    )
    p.add_argument(
        "--word-init",
        action="store_true",
        help="after the vision stage, set the colour and shape word embeddings from the image features",
    )
    p.add_argument(
        "--question-weight",
        type=float,
        default=1.0,
        help="weight of the language-model loss on the question tokens (per sample mean), beside the answer loss",
    )
    p.add_argument("--turns", type=int, default=1, help="questions per training image (multi-turn conversation)")
    p.add_argument(
        "--first-kinds",
        default="count_object",
        help="comma-separated kind cycle of the first --first-steps steps (for example count_object: "
        "the language model learns to find the asked class before the other kinds join)",
    )
    p.add_argument("--first-steps", type=int, default=2300)
    p.add_argument(
        "--vision-from",
        default=None,
        help="copy the vision tower and projector of this toy checkpoint and skip stage 1 "
        "(for experiments on the language model; the train log records it)",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    return p.parse_args(argv)


class FastInputs:
    """``toy_inputs`` without the per-sample chat-template rendering (checked equal at start-up).

    The processor renders the Jinja chat template once per sample and converts images one by
    one; on two shared CPU cores that costs as much as a training step of the small model.
    Here the LLaVA-1.5 prompt is formatted directly, ``<image>`` expanded to the grid size,
    and pixels normalised with the image processor's mean and std in one numpy call (the
    images are already at the processor's size, so its resize and crop are the identity).
    """

    def __init__(self, processor, check: Sequence[Sample]):
        from vh_lens.evaluation.answers import format_question

        self.processor = processor
        self.tok = processor.tokenizer
        self.format_question = format_question
        ip = processor.image_processor
        self.size = ip.crop_size["height"]
        self.n_image = (self.size // processor.patch_size) ** 2
        self.mean = np.asarray(ip.image_mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(ip.image_std, dtype=np.float32)[:, None, None]
        for answers in (False, True):
            ref, got = toy_inputs(processor, check, answers=answers), self(check, answers=answers)
            for key in ("input_ids", "attention_mask"):
                if not torch.equal(ref[key], got[key]):
                    raise RuntimeError(f"fast inputs differ from the processor's in {key}")
            if not torch.allclose(ref["pixel_values"], got["pixel_values"], atol=1e-5, rtol=0):
                raise RuntimeError("fast pixel values differ from the processor's")

    @staticmethod
    def first_turn(question: str) -> str:
        """LLaVA-1.5's user turn with the image, up to the assistant's answer."""
        return f"USER: <image>\n{question} ASSISTANT:"

    def prompt(self, sample: Sample) -> str:
        return self.first_turn(self.format_question(sample))

    def __call__(self, samples: Sequence[Sample], answers: bool = False) -> dict[str, torch.Tensor]:
        texts = [self.prompt(s) for s in samples]
        if answers:
            texts = [f"{t} {s.answer}{self.tok.eos_token}" for t, s in zip(texts, samples, strict=True)]
        return self.encode(texts, samples)

    def encode(self, texts: Sequence[str], samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """Tokenise ``texts`` (one ``<image>`` each) and normalise the samples' images."""
        texts = [t.replace("<image>", "<image>" * self.n_image) for t in texts]
        enc = self.tok(texts, padding=True, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": self.pixels(samples),
        }

    def pixels(self, samples: Sequence[Sample]) -> torch.Tensor:
        """``pixel_values`` ``[b, 3, size, size]`` of the samples' images."""
        images = [s.load_image() for s in samples]
        if any(im.size != (self.size, self.size) for im in images):
            raise ValueError("FastInputs needs images at the processor's size")
        x = np.stack([np.asarray(im, dtype=np.float32) for im in images]).transpose(0, 3, 1, 2)
        return torch.from_numpy(((x / 255.0 - self.mean) / self.std).astype(np.float32))


def buckets(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Split ``samples`` into groups of similar prompt length (counting, yes/no, choice) to save padding."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        qtype = s.metadata["question_type"]
        groups["count" if qtype in ("object", "super", "general") else qtype].append(s)
    return [g for _, g in sorted(groups.items())]


def conversation(sample: Sample, turns: int, seed: int) -> list[tuple[str, str]]:
    """``turns`` (user text, answer) pairs about ``sample``'s image, its own question first.

    The extra turns ask other questions about the same scene (counts and presence of other
    classes; counts, colour and shape of the pointed shape when the box is drawn), never two
    questions whose answers give each other away (each class is asked about once).
    """
    from collections import Counter

    from vh_lens.data.shapes import COLORS, QUESTION_TEMPLATES, SHAPE_KINDS
    from vh_lens.evaluation.answers import format_question

    rng = np.random.default_rng([seed, int(sample.metadata["id"].rsplit("-", 1)[1]), 7])
    meta = sample.metadata
    present = Counter((x["color"], x["kind"]) for x in meta["shapes"])
    classes = [(c, k) for c in COLORS for k in SHAPE_KINDS]
    target = (meta["target"]["color"], meta["target"]["kind"])
    used = {target}
    out = [(format_question(sample), str(sample.answer))]
    options = ["count_object", "exists", "exists_no"]
    if meta["pointed"] is not None:
        options += [k for k in ("choice_color", "choice_shape") if k != meta["kind"]]
        if meta["kind"] in ("choice_color", "choice_shape"):  # the pointed class's count not yet asked
            options += ["pointer_count"]
    for _ in range(50):
        if len(out) >= turns:
            break
        kind = options[int(rng.integers(len(options)))]
        free_present = [c for c in present if c not in used]
        free_absent = [c for c in classes if c not in present and c not in used]
        if kind == "count_object" and free_present:
            c = free_present[int(rng.integers(len(free_present)))]
            q, a = QUESTION_TEMPLATES["count_object"].format(color=c[0], kind=c[1]), str(present[c])
        elif kind in ("exists", "exists_no") and (free_present if kind == "exists" else free_absent):
            pool = free_present if kind == "exists" else free_absent
            c = pool[int(rng.integers(len(pool)))]
            q, a = QUESTION_TEMPLATES["exists"].format(color=c[0], kind=c[1]), "yes" if kind == "exists" else "no"
        elif kind == "pointer_count":
            c = target
            q = QUESTION_TEMPLATES["count_super" if rng.random() < 0.5 else "count_general"]
            a = str(present[target])
            options.remove("pointer_count")
        elif kind in ("choice_color", "choice_shape"):
            values = tuple(COLORS) if kind == "choice_color" else SHAPE_KINDS
            gold = target[0] if kind == "choice_color" else target[1]
            choices = tuple(values[int(j)] for j in rng.permutation(len(values)))
            q_sample = Sample(None, QUESTION_TEMPLATES[kind], "ABCD"[choices.index(gold)], choices=choices)
            out.append((format_question(q_sample), str(q_sample.answer)))
            options.remove(kind)
            continue
        else:
            continue
        used.add(c)
        out.append((format_question(Sample(None, q, a)), a))
    return out


def conversation_inputs(fast: FastInputs, samples: Sequence[Sample], turns: int, seed: int) -> dict[str, torch.Tensor]:
    """Left-padded multi-turn LLaVA-1.5 conversations and the positions of their answer tokens.

    Text: ``"USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>..."``; the
    first turn is exactly the single-turn prompt the model is evaluated on.
    """
    tok = fast.tok
    texts = []
    for s in samples:
        parts = []
        for i, (q, a) in enumerate(conversation(s, turns, seed)):
            user = fast.first_turn(q) if i == 0 else f"USER: {q} ASSISTANT:"
            parts.append(f"{user} {a}{tok.eos_token}")
        texts.append("".join(parts))
    batch = fast.encode(texts, samples)
    ids = batch["input_ids"]
    assistant, colon = tok.convert_tokens_to_ids(["ASSISTANT", ":"])
    is_answer = torch.zeros_like(ids, dtype=torch.bool)
    is_answer[:, 2:] = (ids[:, :-2] == assistant) & (ids[:, 1:-1] == colon)
    is_eos = torch.zeros_like(is_answer)
    is_eos[:, 1:] = is_answer[:, :-1]
    batch["target_mask"] = is_answer | is_eos
    return batch


def conversation_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of every answer token and the ``</s>`` after it, and their number."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
    ).logits
    mask = batch["target_mask"][:, 1:]
    pred = logits[:, :-1][mask]
    return F.cross_entropy(pred.float(), batch["input_ids"][:, 1:][mask], reduction="sum"), int(mask.sum())


def answer_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], image_token_id: int = -1, question_weight: float = 0.0
) -> torch.Tensor:
    """Summed cross-entropy of the last two tokens (answer, ``</s>``); inputs are left padded.

    With ``question_weight > 0``, plus that weight times the mean cross-entropy of the text
    tokens after the image (the question and the chat template), per sample: predicting
    "red" and "circles" in "How many red circles are there?" (a class that is in the image)
    needs the image, so this dense signal teaches the model to tie words to image tokens.
    """
    ids = batch["input_ids"]
    logits = model(
        input_ids=ids,
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        logits_to_keep=0 if question_weight > 0 else 3,
    ).logits  # predictions for positions -2 and -1 sit at -3 and -2
    targets = ids[:, -2:]
    loss = F.cross_entropy(logits[:, -3:-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
    if question_weight > 0:
        is_image = ids == image_token_id
        after_image = (is_image.cumsum(1) > 0) & ~is_image & batch["attention_mask"].bool()
        after_image[:, -2:] = False  # the answer and </s>: counted above
        target_mask = after_image[:, 1:]  # token t is predicted at t - 1
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")
        per_sample = (per_token * target_mask).sum(1) / target_mask.sum(1).clamp(min=1)
        loss = loss + question_weight * per_sample.sum()
    return loss


@torch.no_grad()
def first_token_predictions(
    model: torch.nn.Module, fast: FastInputs, samples: Sequence[Sample], batch_size: int = 64
) -> list[str]:
    """Greedy first answer token (as text) of each sample."""
    preds: dict[int, str] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    for group in buckets(samples):
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            batch = fast(chunk)
            logits = model(**batch, logits_to_keep=1).logits[:, -1]
            for s, tok in zip(chunk, fast.tok.convert_ids_to_tokens(logits.argmax(-1).tolist()), strict=True):
                preds[index[id(s)]] = tok
    return [preds[i] for i in range(len(samples))]


def accuracy_by_kind(model: torch.nn.Module, fast: FastInputs, samples: Sequence[Sample]) -> dict[str, float]:
    preds = first_token_predictions(model, fast, samples)
    hits: dict[str, list[bool]] = defaultdict(list)
    for s, pred in zip(samples, preds, strict=True):
        hits[s.metadata["kind"]].append(pred == s.answer)
        if s.metadata["question_type"] in ("object", "super", "general"):
            hits["counting"].append(pred == s.answer)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def patch_targets(
    samples: Sequence[Sample], colors: Sequence[str], kinds: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch labels ``[b, cells]``: shape class (0 empty, 1 + color * n_kinds + kind) and box flag."""
    grid = samples[0].metadata["grid"]
    cls = torch.zeros(len(samples), grid * grid, dtype=torch.long)
    boxed = torch.zeros(len(samples), grid * grid)
    for i, s in enumerate(samples):
        for j, shape in enumerate(s.metadata["shapes"]):
            cell = shape["row"] * grid + shape["col"]
            cls[i, cell] = 1 + colors.index(shape["color"]) * len(kinds) + kinds.index(shape["kind"])
            boxed[i, cell] = float(j == s.metadata["pointed"])
    return cls, boxed


def class_counts(cls: torch.Tensor) -> torch.Tensor:
    """``[b, cells]``: for each patch holding a shape, how many patches of the image hold its class (0 for empty)."""
    n = int(cls.max()) + 1
    per_image = F.one_hot(cls, n).sum(1)  # [b, classes]
    return torch.where(cls > 0, per_image.gather(1, cls), 0)


def pretrain_vision(model: torch.nn.Module, fast: FastInputs, args: argparse.Namespace) -> list[float]:
    """Stage 1: teach the vision tower and projector what each patch holds.

    Stands in for a real LLaVA's pretrained CLIP encoder. With ``--vision-objective probe``
    a temporary linear probe on the projector's output (the image tokens the language model
    sees) predicts each patch's shape class (13-way: empty or colour x kind) and whether the
    box is drawn on it; the probe is then thrown away. With ``align`` (LLaVA's feature
    alignment stage, in miniature) the image token of a patch holding a red circle is trained
    towards the sum of the initial input embeddings of ``red`` and ``circles`` (plus ``these``
    where the box is drawn, zero for an empty patch).
    """
    from vh_lens.data.shapes import COLORS, SHAPE_KINDS

    colors, kinds = tuple(COLORS), SHAPE_KINDS
    d_model = model.config.text_config.hidden_size
    emb = model.model.language_model.embed_tokens.weight.detach().clone()
    tok = fast.tok
    color_ids = torch.tensor(tok.convert_tokens_to_ids(list(colors)))
    kind_ids = torch.tensor(tok.convert_tokens_to_ids([k + "s" for k in kinds]))
    these = emb[tok.convert_tokens_to_ids("these")]
    # word vector of each class: 0 empty, 1 + color * n_kinds + kind
    class_vec = torch.cat([torch.zeros(1, d_model), (emb[color_ids][:, None] + emb[kind_ids][None]).flatten(0, 1)])
    n_cls = 1 + len(colors) * len(kinds)
    max_count = 7
    probe = torch.nn.Linear(d_model, n_cls + 1 + (max_count + 1 if args.vision_objective == "count" else 0))
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    word_scale = torch.nn.Parameter(torch.tensor(1.0 / class_vec[1:].norm(dim=-1).mean().item()))
    if args.vision_objective in ("probe", "count"):
        params += [*probe.parameters(), word_scale]
    opt = torch.optim.AdamW(params, lr=args.vision_pretrain_lr, weight_decay=0.0)
    losses: list[float] = []
    count_hits: list[float] = []
    for step in range(args.vision_pretrain_steps):
        for group in opt.param_groups:  # cosine decay to 5%
            group["lr"] = args.vision_pretrain_lr * (
                0.05 + 0.475 * (1 + math.cos(math.pi * step / args.vision_pretrain_steps))
            )
        samples = shapes(args.batch_size, seed=args.seed + 1, start=step * args.batch_size)
        pixels = fast.pixels(samples)
        feats = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output))  # [b, cells, d]
        cls, boxed = patch_targets(samples, colors, kinds)
        if args.vision_objective in ("probe", "count"):
            out = probe(feats)
            if args.vision_word_probe:
                # class logits against the language model's (initial) word vectors of the class
                out = torch.cat([out[..., :1], feats @ class_vec[1:].T * word_scale, out[..., n_cls:]], dim=-1)
            loss = F.cross_entropy(out[..., :n_cls].flatten(0, 1), cls.flatten())
            loss = loss + F.binary_cross_entropy_with_logits(out[..., n_cls], boxed)
            pred = out[..., :n_cls].argmax(-1)
            if args.vision_objective == "count":
                count = class_counts(cls).clamp(max=max_count)
                loss = loss + F.cross_entropy(out[..., n_cls + 1 :].flatten(0, 1), count.flatten())
                count_hits.append((out[..., n_cls + 1 :].argmax(-1) == count)[cls > 0].float().mean().item())
        else:
            target = class_vec[cls] + boxed[..., None] * these
            loss = (feats - target).pow(2).sum(-1).mean() / class_vec[1:].pow(2).sum(-1).mean()
            pred = torch.cdist(feats - boxed[..., None] * these, class_vec[None]).argmin(-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0:
            acc = (pred == cls)[cls > 0].float().mean().item()
            counted = f" own-class count accuracy {np.mean(count_hits[-args.log_every :]):.3f}" if count_hits else ""
            print(
                f"vision step {step + 1} loss {sum(losses[-args.log_every :]) / args.log_every:.4f} "
                f"shape-patch accuracy {acc:.3f}{counted}",
                flush=True,
            )
    return losses


@torch.no_grad()
def init_word_embeddings(
    model: torch.nn.Module, fast: FastInputs, args: argparse.Namespace, n_images: int = 256
) -> None:
    """Set the input embeddings of the colour and shape words from the trained image features.

    The mean image token of each class (colour, kind) minus that of an empty cell is fitted by
    least squares as ``u[colour] + w[kind]``; the embedding of each colour word becomes ``u``,
    of each shape word (singular and plural) ``w``, rescaled to the embeddings' mean norm. So
    "red circles" starts out in the image tokens' own space, as LLaVA's projector aligns image
    features with word embeddings, and matching a question word to image tokens is a
    similarity from the first step.
    """
    from vh_lens.data.shapes import COLORS, SHAPE_KINDS

    colors, kinds = tuple(COLORS), SHAPE_KINDS
    samples = shapes(n_images, seed=args.seed + 2)
    feats = torch.cat([
        torch.stack(list(model.model.get_image_features(pixel_values=fast.pixels(samples[i : i + 64])).pooler_output))
        for i in range(0, n_images, 64)
    ])  # fmt: skip
    cls, _ = patch_targets(samples, colors, kinds)
    n_cls = 1 + len(colors) * len(kinds)
    one_hot = F.one_hot(cls, n_cls).float()  # [b, cells, classes]
    means = torch.einsum("bcd,bck->kd", feats, one_hot) / one_hot.sum((0, 1))[:, None].clamp(min=1)
    centred = means[1:] - means[0]  # [colour * kinds, d]
    design = torch.zeros(len(colors) * len(kinds), len(colors) + len(kinds))
    for c in range(len(colors)):
        for k in range(len(kinds)):
            design[c * len(kinds) + k, c] = 1.0
            design[c * len(kinds) + k, len(colors) + k] = 1.0
    parts = torch.linalg.lstsq(design, centred).solution  # [colours + kinds, d]
    emb = model.model.language_model.embed_tokens.weight
    parts = parts * (emb.norm(dim=-1).mean() / parts.norm(dim=-1).mean())
    tok = fast.tok
    for c, color in enumerate(colors):
        emb[tok.convert_tokens_to_ids(color)] = parts[c]
    for k, kind in enumerate(kinds):
        for word in (kind, kind + "s"):
            emb[tok.convert_tokens_to_ids(word)] = parts[len(colors) + k]


def kinds_at(step: int, args: argparse.Namespace) -> tuple[str, ...]:
    """The training kind cycle at ``step``: ``--first-kinds`` for the first ``--first-steps`` steps, then ``--kinds``."""
    if args.first_kinds and step < args.first_steps:
        return tuple(args.first_kinds.split(","))
    return tuple(args.kinds.split(","))


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    kinds = tuple(args.kinds.split(","))

    processor = build_toy_processor()
    config = toy_config(
        processor,
        n_layers=args.n_layers,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_mlp=args.d_mlp,
        vision_layers=args.vision_layers,
        vision_hidden=args.vision_hidden,
        vision_feature_layer=args.vision_feature_layer,
    )
    model = LlavaForConditionalGeneration(config)
    n_params = sum(p.numel() for p in model.parameters())
    t_pre = time.perf_counter()
    fast = FastInputs(processor, shapes(12, seed=args.eval_seed + 1))
    if args.vision_from:
        donor = LlavaForConditionalGeneration.from_pretrained(args.vision_from)
        model.model.vision_tower.load_state_dict(donor.model.vision_tower.state_dict())
        model.model.multi_modal_projector.load_state_dict(donor.model.multi_modal_projector.state_dict())
        del donor
        pretrain_losses = []
    else:
        pretrain_losses = pretrain_vision(model, fast, args) if args.vision_pretrain_steps else []
    if args.word_init:
        init_word_embeddings(model, fast, args)
    pretrain_seconds = time.perf_counter() - t_pre
    if not args.train_vision:
        model.model.vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    held_out = shapes(args.eval_n, seed=args.eval_seed, kinds=tuple(dict.fromkeys(kinds)))  # the trained kinds
    print(f"params {n_params:,}; kinds {kinds}", flush=True)

    history: list[dict] = []
    t0 = time.perf_counter()
    train_time = 0.0
    running: list[float] = []
    grad_norms: list[float] = []
    step = 0
    for step in range(args.steps):
        t_step = time.perf_counter()
        model.train()
        easy = step < args.curriculum_steps  # curriculum: half the images hold the asked class only
        samples = shapes(
            args.batch_size,
            seed=args.seed,
            kinds=kinds_at(step, args),
            start=step * args.batch_size,
            min_groups=0 if easy else 1,
            max_groups=1 if easy else 2,
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        if args.turns > 1:
            loss, n_targets = conversation_loss(model, conversation_inputs(fast, samples, args.turns, args.seed))
            loss = loss / n_targets
            loss.backward()
            loss_sum = loss.item()
        else:
            for chunk in buckets(samples):  # gradient of the mean over the whole batch
                batch = fast(chunk, answers=True)
                loss = answer_loss(model, batch, config.image_token_id, args.question_weight) / (2 * len(samples))
                loss.backward()
                loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        grad_norms.append(float(grad_norm))
        opt.step()
        train_time += time.perf_counter() - t_step
        running.append(loss_sum)
        if (step + 1) % args.log_every == 0:
            print(
                f"step {step + 1} loss {sum(running) / len(running):.4f} lr {lr_at(step, args):.2e} "
                f"grad norm {np.median(grad_norms[-args.log_every :]):.3g} s/step {train_time / (step + 1):.3f} elapsed {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
            running = []
        last = step + 1 == args.steps
        out_of_time = args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            model.eval()
            acc = accuracy_by_kind(model, fast, held_out)
            history.append({"step": step + 1, "elapsed_s": round(time.perf_counter() - t0, 1), "accuracy": acc})
            print(f"eval step {step + 1}: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        if out_of_time:
            print("stopping: --max-minutes reached", flush=True)
            break

    total = time.perf_counter() - t0
    model.eval()
    # write everything to a fresh folder beside --out, then swap it in: a failed run leaves no half-written checkpoint
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}.partial-"))
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    log = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in (sys.argv if argv is None else ["scripts/train_toy.py", *argv])),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "steps_done": step + 1,
        "vision_pretrain_seconds": round(pretrain_seconds, 1),
        "vision_pretrain_final_loss": round(sum(pretrain_losses[-20:]) / max(1, len(pretrain_losses[-20:])), 4),
        "train_seconds": round(train_time, 1),
        "total_seconds": round(total, 1),
        "seconds_per_step": round(train_time / (step + 1), 4),
        "n_params": n_params,
        "final_accuracy": history[-1]["accuracy"],
        "held_out": {"seed": args.eval_seed, "n": args.eval_n, "metric": "first-token argmax"},
        "chance": {"counting": 1 / 7, "exists": 0.5, "choice_color": 0.25, "choice_shape": 1 / 3},
        "chance_note": "counting: 1 of 7 answers; exists: yes/no balanced; choice: 1 of 4 colours / 3 shapes",
        "history": history,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "note": "2 CPU cores shared with other jobs while training: timings are pessimistic",
    }
    (partial / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    old = args.out.with_name(f".{args.out.name}.old") if args.out.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        args.out.rename(old)
    partial.rename(args.out)
    args.out.chmod(0o755)  # mkdtemp made it private; this is package data
    for path in args.out.iterdir():
        path.chmod(0o644)
    if old is not None:
        shutil.rmtree(old)
    print(json.dumps(log["final_accuracy"]), f"total {total:.0f}s", flush=True)


if __name__ == "__main__":
    main()
