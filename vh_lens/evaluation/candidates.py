"""Answer tokens: how candidate answers and gold answers become the token ids a model's logits are read at.

- :func:`candidate_token_ids`: the candidates as they follow a prompt, their shared prefix and
  each one's distinguishing token (how :func:`vh_lens.evaluation.scoring.evaluate` scores).
- :func:`answer_token_ids`: the first informative token of each answer text on its own (how
  :func:`vh_lens.analysis.logit_lens.logit_lens` ranks string answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["answer_token_ids", "candidate_token_ids", "continuation_ids"]


def continuation_ids(tokenizer: Any, prompt: str, text: str) -> list[int]:
    """Token ids of ``text`` as it follows ``prompt``.

    The rule of ``LlavaLens._answer_ids`` (the prompt, a space, the text; the tokens after the
    prompt's), except that no space is added after a prompt ending in whitespace (chat templates
    such as Llama-3's end in ``"\n\n"``, after which the answer starts without a space).
    """
    base = tokenizer(prompt, add_special_tokens=False).input_ids
    sep = "" if prompt[-1:].isspace() else " "
    full = tokenizer(prompt + sep + text, add_special_tokens=False).input_ids
    if full[: len(base)] == base and len(full) > len(base):
        return list(full[len(base) :])
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _known_ids(tokenizer: Any, prompt: str, candidate: str) -> list[int]:
    unk = getattr(tokenizer, "unk_token_id", None)
    for form in dict.fromkeys((candidate, candidate.lower(), candidate.capitalize(), candidate.upper())):
        ids = continuation_ids(tokenizer, prompt, form)
        if ids and (unk is None or unk not in ids):
            return ids
    raise ValueError(
        f"candidate answer {candidate!r} is not in the tokenizer's vocabulary (it tokenises to the unknown "
        "token in every letter case); score by generation instead (method='generate')"
    )


def candidate_token_ids(tokenizer: Any, prompt: str, candidates: Sequence[str]) -> tuple[list[int], list[int]]:
    """How to compare ``candidates`` by the logits of one token after ``prompt``.

    Each candidate is tokenised as it follows the prompt (after a space, as
    :meth:`vh_lens.LlavaLens.prepare` appends answers, unless the prompt ends in whitespace). The tokens all candidates begin with
    form the ``prefix``, to be appended to the prompt; each candidate's next token is its
    distinguishing token.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        prompt: the full prompt text (chat template applied; ``batch.prompts[i]``).
        candidates: at least two candidate answers.

    Returns:
        ``(prefix, ids)``: the shared prefix token ids (often empty) and one distinguishing
        token id per candidate.

    Raises:
        ValueError: fewer than two candidates, a candidate outside the vocabulary, a candidate
            that is all prefix, or two candidates with the same distinguishing token.

    Example:
        >>> candidate_token_ids(model.tokenizer, batch.prompts[0], ["A", "B", "C"])  # doctest: +SKIP
        ([], [319, 350, 315])
    """
    candidates = list(candidates)
    if len(candidates) < 2:
        raise ValueError(f"scoring needs at least two candidate answers, got {candidates!r}")
    lists = [_known_ids(tokenizer, prompt, c) for c in candidates]
    n = 0
    while all(len(ids) > n for ids in lists) and len({ids[n] for ids in lists}) == 1:
        n += 1
    prefix = lists[0][:n]
    ids = []
    for cand, cand_ids in zip(candidates, lists):
        if len(cand_ids) == n:
            raise ValueError(f"candidate {cand!r} is a token prefix of the other candidates {candidates!r}")
        ids.append(cand_ids[n])
    seen: dict[int, str] = {}
    for cand, tok_id in zip(candidates, ids):
        if tok_id in seen:
            token = tokenizer.convert_ids_to_tokens(tok_id)
            raise ValueError(
                f"candidates {seen[tok_id]!r} and {cand!r} share their first token {token!r} (id {tok_id}) after the "
                "prompt, so first-token logits cannot tell them apart; use method='generate'"
            )
        seen[tok_id] = cand
    return prefix, ids


def answer_token_ids(tokenizer: Any, answers: Sequence[str], skip_space: bool = True) -> Int[Tensor, " n"]:
    """The first token of each answer, as the model would produce it right after the prompt.

    Tokenised without special tokens. With ``skip_space``, leading tokens that decode to
    whitespace only are skipped (Llama's tokenizer turns ``"4"`` into ``["▁", "4"]``; the
    informative token is ``"4"``).

    Args:
        tokenizer: a Hugging Face tokenizer (``model.tokenizer``).
        answers: answer strings.
        skip_space: skip whitespace-only leading tokens.

    Returns:
        ``[n]`` token ids.

    Raises:
        ValueError: an answer has no (non-whitespace) token.

    Example:
        >>> ids = answer_token_ids(model.tokenizer, ["Yes", "No"])  # doctest: +SKIP
    """
    encoded = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    out = []
    for answer, ids in zip(answers, encoded):
        while skip_space and ids and not tokenizer.decode(ids[:1]).strip():
            ids = ids[1:]
        if not ids:
            raise ValueError(f"answer {answer!r} has no token")
        out.append(ids[0])
    return torch.tensor(out, dtype=torch.long)
