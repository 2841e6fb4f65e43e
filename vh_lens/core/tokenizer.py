"""Local tokenizers: built from a word list, never downloaded."""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
IMAGE_TOKEN = "<image>"
_BASE_SYMBOLS = tuple(string.ascii_letters + string.digits + string.punctuation)


def build_word_tokenizer(
    words: Iterable[str] = (),
    *,
    extra_special: Iterable[str] = (IMAGE_TOKEN,),
    lowercase: bool = False,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` plus single letters, digits and punctuation.

    Text is split on whitespace and punctuation; unknown words become ``<unk>``. Token ids:
    ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3, then the words, then ``extra_special``
    (``<image>`` by default) as special tokens that are never split. A BOS token is added to
    every encoded sequence, as Llama's tokenizer does.

    Args:
        words: vocabulary words (duplicates ignored, order kept).
        extra_special: special tokens appended at the end of the vocabulary.
        lowercase: lowercase text before splitting.

    Example:
        >>> tok = build_word_tokenizer(["how", "many"])
        >>> tok.convert_ids_to_tokens(tok("how many?").input_ids)
        ['<s>', 'how', 'many', '?']
    """
    vocab: dict[str, int] = {}
    for w in (*SPECIAL_TOKENS, *words, *_BASE_SYMBOLS):
        w = w.lower() if lowercase and w not in SPECIAL_TOKENS else w
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        from tokenizers import normalizers

        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w\s]"), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = [s for s in extra_special if s not in vocab]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN} if IMAGE_TOKEN in specials else None,
    )
    if specials:
        fast.add_special_tokens({"additional_special_tokens": specials})
    return fast
