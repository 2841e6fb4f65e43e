"""LLaVA-OneVision without videos: a processor that needs no video processor (so no torchvision).

Hugging Face's ``LlavaOnevisionProcessor`` takes an image processor, a tokenizer and a video
processor; every OneVision video processor needs torchvision, which vh_lens never depends on.
:class:`LlavaOnevisionImageOnlyProcessor` is the same processor (same placeholder expansion,
same image processing, same chat template) whose only parts are the image processor and the
tokenizer: images and text work exactly as in Hugging Face, videos are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import LlavaOnevisionProcessor

__all__ = ["LlavaOnevisionImageOnlyProcessor", "load_onevision_processor"]


class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` for images and text only (no video processor, no torchvision).

    The processor's parts are read from its ``__init__`` signature by ``ProcessorMixin``, so
    leaving ``video_processor`` out of the signature makes a processor of two parts; the
    placeholder expansion (``replace_image_token``, ``_get_number_of_features``) is Hugging
    Face's own.

    Example:
        >>> proc = LlavaOnevisionImageOnlyProcessor(image_processor=ip, tokenizer=tok,   # doctest: +SKIP
        ...                                         num_image_tokens=729, vision_feature_select_strategy="full")
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,  # not one of this class's parts: ProcessorMixin drops it
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )

    def __call__(self, images=None, text=None, videos=None, **kwargs: Any):
        if videos is not None:
            raise ValueError("LlavaOnevisionImageOnlyProcessor takes images and text only (videos need torchvision)")
        return super().__call__(images=images, text=text, **kwargs)


def load_onevision_processor(folder: str | Path) -> LlavaOnevisionImageOnlyProcessor:
    """The images-only OneVision processor of a checkpoint folder (PIL image backend).

    Reads the image processor (``LlavaOnevisionImageProcessorPil``, from
    ``preprocessor_config.json`` or the ``image_processor`` entry of ``processor_config.json``),
    the tokenizer, the processor settings (``num_image_tokens``,
    ``vision_feature_select_strategy``, ``vision_aspect_ratio``, ...) and the chat template; a
    video processor config in the folder is ignored.

    Raises:
        FileNotFoundError: no processor settings (``processor_config.json``) in the folder.
    """
    folder = Path(folder)
    if not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(f"no processor_config.json in {folder}: cannot tell how many tokens an image takes")
    processor = LlavaOnevisionImageOnlyProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    if processor.num_image_tokens is None:
        raise ValueError(
            f"{folder / 'processor_config.json'} has no num_image_tokens: cannot expand the image placeholder"
        )
    return processor
