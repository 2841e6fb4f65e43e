"""The one sample type every data adapter produces and every experiment consumes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

Box = tuple[float, float, float, float]
"""A box ``(left, top, right, bottom)`` in pixels of the original image."""


@dataclass(frozen=True)
class Sample:
    """One question about one image (or none).

    Attributes:
        image: A PIL image, a path to one, an object with a ``.load()`` method returning one
            (e.g. :class:`vh_lens.data.BoxedImage`), or ``None`` for a text-only sample.
        question: The question text, without chat template and without image placeholder.
        answer: The gold answer, if known.
        choices: Candidate answers for multiple choice, in order (option letters A, B, ...).
        box: The question's region, ``(left, top, right, bottom)`` in original-image pixels.
        metadata: Anything else the source carried (ids, question type, labels, ...).
    """

    image: Image.Image | str | Path | None
    question: str
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    box: Box | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("Sample.question must be a non-empty string")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
            if len(self.choices) < 2:
                raise ValueError(f"Sample.choices needs at least 2 options, got {len(self.choices)}")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4:
                raise ValueError(f"Sample.box must be (left, top, right, bottom), got {self.box!r}")
            left, top, right, bottom = box
            if right <= left or bottom <= top:
                raise ValueError(f"Sample.box {box} is empty: right must exceed left and bottom exceed top")
            object.__setattr__(self, "box", box)

    def load_image(self) -> Image.Image | None:
        """Return the image as an RGB PIL image (``None`` for text-only samples).

        Raises:
            FileNotFoundError: the image path does not exist.
            ValueError: the file exists but is not a readable image.
        """
        return load_rgb(self.image)


def load_rgb(image: Image.Image | str | Path | None) -> Image.Image | None:
    """Open ``image`` (a PIL image, a path, or an object with ``.load()``) and convert it to RGB; ``None`` stays ``None``.

    RGBA, palette and grayscale images are converted, not rejected.
    """
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if callable(getattr(image, "load", None)):  # a lazily built image, e.g. vh_lens.data.BoxedImage
        return load_rgb(image.load())
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"image {path} could not be read: {err}") from err
