"""The toy LLaVA: a small LLaVA-1.5-style model trained on :func:`vh_lens.data.shapes.shapes`.

It ships with the package (``vh_lens/assets/toy_llava/``, Hugging Face format) so that every
analysis runs on a fresh machine without downloading weights. It was trained by
``scripts/train_toy.py``; ``train_log.json`` beside the weights records how and how well.

Architecture (:func:`toy_config`): a small CLIP vision tower (3 layers, hidden size 64, in the
shipped checkpoint) on 96 px images with 12 px patches (8 x 8 = 64 image tokens, the CLS token
dropped as in LLaVA-1.5's ``"default"`` strategy), the LLaVA two-layer GELU projector, and a
6-layer Llama text backbone (d_model 128, 8 heads of 16 dimensions, d_mlp 256). The prompt is LLaVA-1.5's:
``"USER: <image>\\n{question} ASSISTANT:"``; answers are one token (a digit, ``yes`` / ``no``
or an option letter) followed by ``</s>``.

Example:
    >>> from vh_lens.toy import load_toy_hf  # doctest: +SKIP
    >>> model, processor = load_toy_hf()  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vh_lens.core.tokenizer import build_word_tokenizer
from vh_lens.data.sample import Sample
from vh_lens.data.shapes import COLORS, QUESTION_TEMPLATES, SHAPE_KINDS
from vh_lens.evaluation.answers import MC_SUFFIX, SHORT_ANSWER_SUFFIX

if TYPE_CHECKING:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

TOY_PATH: Path = Path(__file__).parent / "assets" / "toy_llava"
"""Folder of the shipped toy checkpoint (Hugging Face ``save_pretrained`` format)."""

IMAGE_SIZE = 96
PATCH_SIZE = 12

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""LLaVA-1.5's chat template: ``"USER: <image>\\n{question} ASSISTANT:"``."""


def toy_vocabulary() -> tuple[str, ...]:
    """Every word of the toy task's prompts and answers, plus the chat template's words.

    Single letters, digits and punctuation are always in a
    :func:`vh_lens.core.tokenizer.build_word_tokenizer` vocabulary, so they are not listed.
    """
    texts = [
        *QUESTION_TEMPLATES.values(),
        MC_SUFFIX,
        SHORT_ANSWER_SUFFIX,
        "USER ASSISTANT yes no",
        " ".join(COLORS),
        " ".join(SHAPE_KINDS),
        " ".join(k + "s" for k in SHAPE_KINDS),
    ]
    words: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"[A-Za-z]+", text.replace("{color}", "").replace("{kind}s", "").replace("{kind}", "")):
            if len(word) > 1:
                words.setdefault(word, None)
    return tuple(words)


def format_question(sample: Sample) -> str:
    """The user text of ``sample`` as the toy model was trained on it.

    This is :func:`vh_lens.evaluation.answers.format_question` with its defaults (what
    ``LlavaLens.prepare_samples`` uses): counting questions as they are; yes/no questions
    followed by ``"\nAnswer the question using a single word or phrase."``; multiple choice
    as LLaVA-1.5's MMBench prompt (one ``"A. option"`` line per choice, then ``"Answer with the
    option's letter from the given choices directly."``).

    Example:
        >>> format_question(Sample(None, "What shape is this?", "B", choices=("circle", "square")))
        "What shape is this?\nA. circle\nB. square\nAnswer with the option's letter from the given choices directly."
    """
    from vh_lens.evaluation.answers import format_question as _format

    return _format(sample)


def build_toy_processor(
    image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, *, vocabulary: Sequence[str] | None = None
) -> LlavaProcessor:
    """The toy model's processor: CLIP preprocessing (PIL backend), word tokenizer, chat template.

    ``vocabulary`` is the tokenizer's word list (default :func:`toy_vocabulary`; the
    chain-of-thought toy of :mod:`vh_lens.toy_cog` passes a longer one).

    Images are resized (shortest edge) and center-cropped to ``image_size``; with the
    ``"default"`` strategy the prompt gets ``(image_size // patch_size) ** 2`` image tokens.

    Example:
        >>> proc = build_toy_processor()
        >>> proc.apply_chat_template(
        ...     [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}],
        ...     add_generation_prompt=True,
        ... )
        'USER: <image>\\nHi? ASSISTANT:'
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    tokenizer = build_word_tokenizer(toy_vocabulary() if vocabulary is None else vocabulary)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def toy_config(
    processor: LlavaProcessor | None = None,
    *,
    n_layers: int = 6,
    d_model: int = 128,
    n_heads: int = 8,
    d_mlp: int = 512,
    vision_layers: int = 2,
    vision_hidden: int = 64,
    vision_heads: int = 4,
    vision_feature_layer: int = -1,
) -> LlavaConfig:
    """A small :class:`transformers.LlavaConfig` matching ``processor`` (built if ``None``).

    Args:
        processor: the toy processor; its tokenizer fixes the vocabulary and the image token.
        n_layers: text backbone (Llama) layers.
        d_model: text hidden size.
        n_heads: text attention heads (``d_head = d_model // n_heads``), no grouped queries.
        d_mlp: text MLP size (gated SiLU).
        vision_layers: CLIP vision tower layers.
        vision_hidden: CLIP hidden size.
        vision_heads: CLIP attention heads.
        vision_feature_layer: which CLIP hidden state feeds the projector.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    processor = processor if processor is not None else build_toy_processor()
    tok = processor.tokenizer
    image_size = processor.image_processor.crop_size["height"]
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=processor.patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(image_size // processor.patch_size) ** 2,
        tie_word_embeddings=False,
    )


def load_toy_hf(path: str | Path = TOY_PATH) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The shipped toy model and processor as plain Hugging Face objects (float32, eval mode)."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no toy checkpoint at {path}; train one with scripts/train_toy.py")
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = LlavaProcessor.from_pretrained(path)
    return model, processor


def load_toy(path: str | Path = TOY_PATH, **kwargs: Any):  # noqa: ANN201 - returns vh_lens' model type
    """Load the shipped toy model with :func:`vh_lens.load_llava` (``kwargs`` passed on)."""
    import vh_lens

    return vh_lens.load_llava(str(path), **kwargs)


def toy_inputs(processor: LlavaProcessor, samples: Sequence[Sample], answers: bool = False) -> dict[str, Any]:
    """Left-padded model inputs for ``samples`` with the toy prompt (and optionally answers).

    Args:
        processor: the toy processor.
        samples: samples with images.
        answers: append ``" {answer}</s>"`` to each prompt (for training); the returned dict
            then also has ``labels`` ``[batch, pos]``: the answer and ``</s>`` token ids, -100
            elsewhere.

    Returns:
        The processor's ``input_ids``, ``attention_mask``, ``pixel_values`` (torch tensors),
        plus ``labels`` when ``answers``.
    """
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": format_question(s)}]}],
            add_generation_prompt=True,
        )
        for s in samples
    ]
    tok = processor.tokenizer
    if answers:
        if any(s.answer is None for s in samples):
            raise ValueError("every sample needs an answer when answers=True")
        prompts = [f"{p} {s.answer}{tok.eos_token}" for p, s in zip(prompts, samples, strict=True)]
    images = [s.load_image() for s in samples]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    out = dict(batch)
    if answers:
        import torch

        n_answer = [len(tok(s.answer, add_special_tokens=False).input_ids) + 1 for s in samples]
        labels = torch.full_like(batch["input_ids"], -100)
        for row, k in enumerate(n_answer):
            labels[row, -k:] = batch["input_ids"][row, -k:]
        out["labels"] = labels
    return out
