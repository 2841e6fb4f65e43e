"""TransformerLens' own tools on images: the image enters through ``hook_embed``.

:class:`Splicer` is installed on a :class:`~vh_lens.LlavaLens`' HookedTransformer (``lm``). Every
run of the LlavaLens (``model(batch)``, ``run_with_hooks``, ``run_with_cache``, generation) runs
``lm`` on the batch's token ids inside :meth:`Splicer.splice`, and a torch forward hook on
``lm.embed`` returns the batch's spliced embeddings (token embeddings with the image features
at the image positions) in place of the plain token embeddings. ``lm.embed``'s output is the
input of ``hook_embed``, so

- a hook on ``hook_embed`` sees (and can change) the image features, and always runs after the
  substitution, whatever order the hooks were added in;
- ``blocks.0.hook_resid_pre = hook_embed`` (the supported backbones are rotary, no
  ``hook_pos_embed``), and ``ActivationCache.decompose_resid``,
  ``get_full_resid_decomposition``, ``stack_head_results`` and ``logit_attrs`` include the image.

Running ``lm`` alone on ids that hold the image token, outside :meth:`Splicer.splice`, is refused
(a forward pre-hook on ``lm``): the placeholder's embedding would silently stand in for the image.

Also here: :func:`str_tokens` (``LlavaLens.to_str_tokens``) and :func:`test_prompt`
(``LlavaLens.test_prompt``), TransformerLens' ``to_str_tokens`` and ``utils.test_prompt`` for
multimodal prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

if TYPE_CHECKING:
    from vh_lens.core.model import LlavaBatch, LlavaLens


class Splicer:
    """Makes ``lm.embed`` output a batch's spliced embeddings during a run; refuses bare image ids.

    Args:
        image_token_id: the id of the image placeholder token.
    """

    def __init__(self, image_token_id: int):
        self.image_token_id = int(image_token_id)
        self._pending: tuple[Tensor, Tensor] | None = None

    def install(self, lm: nn.Module) -> None:
        """Put the hooks on ``lm`` (a HookedTransformer); idempotent."""
        if getattr(lm, "_vh_splicer", None) is not None:
            return
        lm.embed.register_forward_hook(self._embed_hook)
        lm.register_forward_pre_hook(self._check_hook, with_kwargs=True)
        lm._vh_splicer = self

    @contextlib.contextmanager
    def splice(self, ids: Int[Tensor, "batch pos"], embeds: Float[Tensor, "batch pos d_model"]) -> Iterator[None]:
        """Within the block, the next ``lm.embed(ids)`` call returns ``embeds`` (once).

        Raises:
            ValueError: the shapes of ``ids`` and ``embeds`` disagree.
        """
        if embeds.shape[:2] != ids.shape:
            raise ValueError(f"spliced embeddings of shape {tuple(embeds.shape)} for ids of shape {tuple(ids.shape)}")
        if self._pending is not None:
            raise RuntimeError("a LlavaLens run started inside another one (nested runs are not supported)")
        self._pending = (ids, embeds)
        try:
            yield
        finally:
            self._pending = None

    def _embed_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if self._pending is None:
            return None
        ids, embeds = self._pending
        tokens = args[0]
        if tokens.shape != ids.shape or not torch.equal(tokens.to(ids.device), ids):
            raise RuntimeError(
                f"lm.embed got ids of shape {tuple(tokens.shape)} that are not the batch's {tuple(ids.shape)} "
                "(was hook_tokens changed?): the spliced embeddings would not match them"
            )
        self._pending = None  # once: later embed calls (e.g. from a user's hook) are plain
        # a copy: hooks may edit hook_embed's output in place (TransformerLens' patching does),
        # which must never reach the batch
        return embeds.to(device=output.device, dtype=output.dtype, copy=True)

    def _check_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("input")
        if self._pending is not None or kwargs.get("start_at_layer") is not None or not isinstance(x, Tensor):
            return None
        if x.dtype.is_floating_point or x.dtype.is_complex:
            return None
        if bool((x == self.image_token_id).any()):
            raise ValueError(
                f"model.lm got token ids holding the image token (id {self.image_token_id}) without the image "
                "features; its placeholder embedding would stand in for the image. Run the LlavaLens instead: "
                "model(batch), model.run_with_hooks(batch, ...), model.run_with_cache(batch)"
            )
        return None


# --------------------------------------------------------------------------------------------
# String tokens


def image_token_labels(layout: Any) -> dict[int, str]:
    """``position -> label`` for the image positions of one sample's layout.

    Grid cells read ``<img:{grid} r{row}c{col}>`` (``grid`` is ``base`` or ``tiles``), LLaVA-NeXT
    newline tokens ``<img:newline {k}>``, any other image position (the CLS feature of the
    ``"full"`` strategy) ``<img:{k}>``, ``k`` its index among the image's positions. With several
    images in the prompt the marker names the image: ``<img1:base r0c0>`` is image 1's.
    """
    labels: dict[int, str] = {}
    images = tuple(getattr(layout, "images", ()))
    for image in images:
        tag = "img" if len(images) == 1 else f"img{image.index}"
        for grid in image.grids:
            rows, cols = grid.shape
            for r in range(rows):
                for c in range(cols):
                    labels[int(grid.positions[r, c])] = f"<{tag}:{grid.name} r{r}c{c}>"
        for k, p in enumerate(image.newline_positions.tolist()):
            labels[int(p)] = f"<{tag}:newline {k}>"
        for k, p in enumerate(image.positions.tolist()):
            labels.setdefault(int(p), f"<{tag}:{k}>")
    return labels


def str_tokens(model: LlavaLens, batch: LlavaBatch) -> list[list[str]]:
    """Each sample's tokens as strings, one per position, image tokens as readable markers.

    Text tokens are decoded one by one (as TransformerLens' ``to_str_tokens``); left padding
    reads ``<pad>``; image positions are labelled by :func:`image_token_labels`.
    """
    out = []
    tok = model.tokenizer
    for i, lay in enumerate(batch.layout):
        ids = batch.input_ids[i].tolist()
        labels = image_token_labels(lay)
        row = []
        for p, t in enumerate(ids):
            if p < lay.n_pad:
                row.append("<pad>")
            elif p in labels:
                row.append(labels[p])
            else:
                row.append(tok.decode([t]))
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# test_prompt


@dataclass(frozen=True, eq=False)
class PromptTest:
    """How a model ranks an answer after a prompt, token by token (teacher forcing).

    Attributes:
        answer_tokens: the answer's tokens as strings.
        ranks: ``[n_answer]`` rank of each answer token among the vocabulary at its position
            (0 is the top token).
        probs: ``[n_answer]`` its probability.
        top_tokens: per answer position, the ``top_k`` most likely tokens (strings).
        top_probs: ``[n_answer, top_k]`` their probabilities.
    """

    answer_tokens: tuple[str, ...]
    ranks: Int[Tensor, " n_answer"]
    probs: Float[Tensor, " n_answer"]
    top_tokens: tuple[tuple[str, ...], ...]
    top_probs: Float[Tensor, "n_answer top_k"]

    def __str__(self) -> str:
        lines = []
        for j, t in enumerate(self.answer_tokens):
            tops = ", ".join(f"{s!r} {p:.3f}" for s, p in zip(self.top_tokens[j], self.top_probs[j].tolist()))
            lines.append(f"{t!r}: rank {int(self.ranks[j])}, prob {float(self.probs[j]):.4f}; top: {tops}")
        return "\n".join(lines)


@torch.no_grad()
def test_prompt(model: LlavaLens, image: Any, question: str, answer: str, *, top_k: int = 5) -> PromptTest:
    """Rank and probability of each token of ``answer`` after the image and question.

    The multimodal ``transformer_lens.utils.test_prompt``: the question is wrapped in the
    model's chat template, the answer appended as :meth:`~vh_lens.LlavaLens.prepare` does
    (teacher forcing), and each answer token is read at the position before it.

    Example:
        >>> print(model.test_prompt(img, "How many red circles are there?", "3"))  # doctest: +SKIP
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    batch = model.prepare(images=[image], questions=[question], answers=[answer])
    lay = batch.layout[0]
    targets = batch.input_ids[0, lay.answer_positions]
    if targets.numel() == 0:
        raise ValueError(f"answer {answer!r} gives no tokens")
    read = torch.cat([torch.tensor([lay.query_position]), lay.answer_positions[:-1]])
    logprobs = model(batch)[0, read.to(model.device)].float().log_softmax(-1).cpu()  # [n_answer, vocab]
    target_lp = logprobs.gather(-1, targets[:, None])  # [n_answer, 1]
    ranks = (logprobs > target_lp).sum(-1)
    top = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
    tok = model.tokenizer
    return PromptTest(
        answer_tokens=tuple(tok.decode([t]) for t in targets.tolist()),
        ranks=ranks,
        probs=target_lp[:, 0].exp(),
        top_tokens=tuple(tuple(tok.decode([t]) for t in row) for row in top.indices.tolist()),
        top_probs=top.values.exp(),
    )


def to_tokens(model: LlavaLens, x: LlavaBatch | str | Sequence[str]) -> Int[Tensor, "batch pos"]:
    """Token ids: a batch's ``input_ids`` (image placeholders expanded), or a text-only tokenisation.

    Raises:
        ValueError: a text holds the image placeholder (a string cannot carry the image: use
            :meth:`~vh_lens.LlavaLens.prepare`).
    """
    from vh_lens.core.model import LlavaBatch

    if isinstance(x, LlavaBatch):
        return x.input_ids
    texts = [x] if isinstance(x, str) else list(x)
    for i, t in enumerate(texts):
        if model.image_token in t:
            raise ValueError(
                f"text {i} holds the image placeholder {model.image_token!r}: use model.prepare(images=...)"
            )
    tok = model.tokenizer
    seqs = [tok(t).input_ids for t in texts]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), model.pad_token_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.long)
    return ids
