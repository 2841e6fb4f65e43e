"""The one sample type every data adapter produces and every experiment consumes."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]
"""A box ``(left, top, right, bottom)`` in pixels of the original image."""


@runtime_checkable
class LazyImage(Protocol):
    """An image built on demand: anything whose ``load()`` returns one (e.g. :class:`vh_lens.data.BoxedImage`)."""

    def load(self) -> Any: ...


ImageSource = Image.Image | LazyImage | np.ndarray | str | os.PathLike
"""What :func:`load_rgb` opens: a PIL image, a lazy image, a uint8 HWC array or a path."""


def as_box(box: Any, what: str = "box") -> Box:
    """``box`` as four floats, checked: four finite numbers with right > left and bottom > top.

    Args:
        box: ``(left, top, right, bottom)``: any sequence of four real numbers.
        what: how messages name the box (e.g. ``"Sample.box"``).

    Raises:
        ValueError: not four numbers, a value that is NaN or infinite, or an empty box.

    Example:
        >>> as_box([1, 2, 3, 4])
        (1.0, 2.0, 3.0, 4.0)
    """
    if isinstance(box, (str, bytes, Mapping)) or not hasattr(box, "__len__") or len(box) != 4:
        raise ValueError(f"{what} must be (left, top, right, bottom), got {box!r}")
    values = []
    for v in box:
        if isinstance(v, (bool, str, bytes)):
            raise ValueError(f"{what} must be four numbers, got {box!r}")
        try:
            values.append(float(v))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} must be four numbers, got {box!r}") from err
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} {tuple(values)} is not finite (NaN or infinite coordinates)")
    left, top, right, bottom = values
    if right <= left or bottom <= top:
        raise ValueError(f"{what} {tuple(values)} is empty: right must exceed left and bottom exceed top")
    return (left, top, right, bottom)


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

    image: ImageSource | None
    question: str
    answer: str | None = None
    choices: Sequence[str] | None = None  # stored as a tuple
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
            object.__setattr__(self, "box", as_box(self.box, "Sample.box"))

    def load_image(self) -> Image.Image | None:
        """Return the image as an RGB PIL image (``None`` for text-only samples).

        Raises:
            FileNotFoundError: the image path does not exist.
            ValueError: the file exists but is not a readable image.
        """
        return load_rgb(self.image)


def load_rgb(image: ImageSource | None) -> Image.Image | None:
    """Open ``image`` (a PIL image, a path, an object with ``.load()`` or a uint8 array) as RGB; ``None`` stays ``None``.

    RGBA, palette and grayscale images are converted, not rejected. 16-bit grayscale images
    (PIL modes ``"I;16"``, ``"I;16B"``, ``"I;16L"``, and ``"I"`` with values in ``0..65535``) are
    scaled to 8 bits (``round(v * 255 / 65535)``), not clipped as PIL's own conversion does.
    A numpy array is taken exactly when it is ``uint8`` of shape ``[H, W]``, ``[H, W, 3]`` or
    ``[H, W, 4]`` (channels last, as ``PIL.Image.fromarray`` reads it). Other arrays and torch
    tensors are refused: their layout (CHW or HWC) and value range (0-1 or 0-255) cannot be told
    apart reliably, so convert them to a PIL image yourself.

    Raises:
        FileNotFoundError: the image path does not exist.
        ValueError: the file is not a readable image, the array or tensor is refused, or the
            PIL mode has no exact 8-bit RGB conversion (``"F"``, ``"I"`` outside 16 bits).
    """
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if type(image).__module__.startswith("torch"):
        raise ValueError(
            f"an image must be a PIL image, a path or a uint8 HWC numpy array, got a torch {type(image).__name__} "
            f"of shape {tuple(getattr(image, 'shape', ()))}: convert it yourself, e.g. "
            "PIL.Image.fromarray(t.permute(1, 2, 0).mul(255).round().byte().numpy()) for a CHW float tensor in [0, 1]"
        )
    if hasattr(image, "__array_interface__") and hasattr(image, "dtype") and hasattr(image, "shape"):
        return _array_to_rgb(image)
    if callable(getattr(image, "load", None)):  # a lazily built image, e.g. vh_lens.data.BoxedImage
        return load_rgb(image.load())
    if not isinstance(image, (str, Path)) and not hasattr(image, "__fspath__"):
        raise ValueError(f"an image must be a PIL image, a path or a uint8 HWC numpy array, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img, where=str(path))
    except (OSError, SyntaxError) as err:
        raise ValueError(f"image {path} could not be read: {err}") from err


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        import numpy as np

        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{where}: 32-bit integer image (PIL mode 'I') with values {values.min()}..{values.max()} outside the "
                "16-bit range: scale it to 8 bits yourself"
            )
        scaled = np.round(values * (255 / 65535)).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError(
            f"{where}: floating-point image (PIL mode 'F') has no fixed range: scale it to 8 bits yourself"
        )
    return image.convert("RGB")


def _array_to_rgb(array: Any) -> Image.Image:
    import numpy as np

    array = np.asarray(array)
    shape = tuple(array.shape)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))):
        raise ValueError(
            f"a numpy image must be uint8 of shape [H, W], [H, W, 3] or [H, W, 4] (channels last), got {array.dtype} "
            f"of shape {shape}: convert it to a PIL image yourself"
        )
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
