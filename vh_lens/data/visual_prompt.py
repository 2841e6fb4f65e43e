"""Visual prompts: the question's box drawn on the image as a coloured rectangle.

Paper A (section 4.1) compares a "plain" image with a "visual" one, where the question's
region is outlined in red. :func:`draw_box` draws such an outline; :class:`BoxedImage` is a
small picklable stand-in for an image file that draws the box when loaded, so a data set of
thousands of visual-prompt samples holds paths, not pixels. ``vh_lens.data.load_rgb`` (and so
``Sample.load_image``) loads any object with a ``.load()`` method by calling it.

The authors' run (ViP-LLaVA's ``image_blending`` with ``visual_prompt_style="constant"`` and
``--alpha 128``) drew a rectangle of width ``max(int(3 * max(W, H) / 336), 1)`` pixels,
blended at alpha 128/255. Our default is an opaque outline of ``max(2, round(0.01 *
min(W, H)))`` pixels; pass ``width`` and ``alpha`` to match theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from vh_lens.data._images import SampleSet
from vh_lens.data.sample import Box, Sample, as_box, load_rgb

Color = tuple[int, int, int]
RED: Color = (255, 0, 0)


def default_box_width(size: tuple[int, int]) -> int:
    """Outline width for an image of ``size = (width, height)``: 1% of the shorter side, at least 2."""
    return max(2, round(0.01 * min(size)))


def _check_style(color: Color, width: int | None, alpha: int) -> Color:
    rgb = tuple(color)
    if len(rgb) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb):
        raise ValueError(f"color must be three ints in [0, 255], got {color!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be None or a positive int, got {width!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int) or not 0 <= alpha <= 255:
        raise ValueError(f"alpha must be an int in [0, 255], got {alpha!r}")
    return rgb  # type: ignore[return-value]


def _check_box(box: Box) -> Box:
    return as_box(box)


def draw_box(
    image: Image.Image,
    box: Box,
    color: Color = RED,
    width: int | None = None,
    *,
    alpha: int = 255,
) -> Image.Image:
    """Return an RGB copy of ``image`` with ``box`` outlined; ``image`` is not modified.

    The outline lies inside the box: with ``(left, top, right, bottom)`` in pixel-edge
    coordinates (a box ``(0, 0, 10, 10)`` covers pixels 0..9), the drawn pixels are those of
    the box whose distance to its border is below ``width``. Parts of the box outside the
    image are clipped; pixels inside the outline and outside the box are untouched.

    Args:
        image: Any PIL image (converted to RGB).
        box: ``(left, top, right, bottom)`` in pixels of ``image``.
        color: Outline colour, RGB.
        width: Outline width in pixels; default :func:`default_box_width` (1% of the shorter
            side, at least 2).
        alpha: Opacity of the outline, 255 opaque; below 255 the colour is alpha-blended as in
            ViP-LLaVA's visual prompts.

    Returns:
        A new RGB image of the same size.

    Raises:
        ValueError: the box is empty or lies entirely outside the image, or a style argument
            is out of range.

    Example:
        >>> img = draw_box(Image.new("RGB", (100, 80)), (10, 10, 50, 40), width=3)
        >>> img.getpixel((10, 20)), img.getpixel((30, 25))
        ((255, 0, 0), (0, 0, 0))
    """
    rgb = _check_style(color, width, alpha)
    left, top, right, bottom = _check_box(box)
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    img_w, img_h = out.size
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(img_w, round(right)), min(img_h, round(bottom))  # exclusive
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {(left, top, right, bottom)} does not overlap the {img_w}x{img_h} image")
    line = default_box_width(out.size) if width is None else width
    if alpha == 255:
        ImageDraw.Draw(out).rectangle([(x0, y0), (x1 - 1, y1 - 1)], outline=rgb, width=line)
        return out
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle([(x0, y0), (x1 - 1, y1 - 1)], outline=(*rgb, alpha), width=line)
    return Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")


@dataclass(frozen=True)
class BoxedImage:
    """An image (usually a file path) with a box to draw on it when loaded.

    Stands in for ``Sample.image`` in visual-prompt samples: it holds only the path and the
    style, pickles cheaply (for data-loader workers) and draws on each :meth:`load`.

    Attributes:
        source: A path to the image, a PIL image, or another object with ``.load()``.
        box: ``(left, top, right, bottom)`` in pixels of the source image.
        color: Outline colour, RGB.
        width: Outline width in pixels, ``None`` for :func:`default_box_width`.
        alpha: Outline opacity, 255 opaque.

    Example:
        >>> boxed = BoxedImage("photo.jpg", (10, 10, 50, 40))
        >>> image = boxed.load()  # doctest: +SKIP
    """

    source: object
    box: Box
    color: Color = RED
    width: int | None = None
    alpha: int = 255

    def __post_init__(self) -> None:
        if self.source is None:
            raise ValueError("BoxedImage.source is None: a visual prompt needs an image")
        if isinstance(self.source, str):
            object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "box", _check_box(self.box))
        object.__setattr__(self, "color", _check_style(self.color, self.width, self.alpha))

    @property
    def path(self) -> Path | None:
        """The image file, when the source is a path."""
        return self.source if isinstance(self.source, Path) else None

    def load(self) -> Image.Image:
        """Open the source as RGB and return it with the box drawn.

        Raises:
            FileNotFoundError: the image file does not exist.
            ValueError: the file is not a readable image, or the box misses the image.
        """
        source = self.source
        if not isinstance(source, (Image.Image, Path)) and callable(getattr(source, "load", None)):
            base = source.load()  # type: ignore[attr-defined]
        else:
            base = load_rgb(source)  # type: ignore[arg-type]
        return draw_box(base, self.box, self.color, self.width, alpha=self.alpha)


def with_visual_prompt(
    samples: Iterable[Sample],
    color: Color = RED,
    width: int | None = None,
    *,
    alpha: int = 255,
) -> SampleSet:
    """The same samples with each one's box drawn on its image (lazily, via :class:`BoxedImage`).

    Questions, answers and boxes are unchanged; ``metadata["visual_prompt"]`` becomes ``True``.
    A ``SampleSet`` input keeps its ``source`` and ``n_skipped``.

    Args:
        samples: Samples that all have an image and a box.
        color: Outline colour, RGB.
        width: Outline width in pixels, ``None`` for 1% of the image's shorter side (>= 2).
        alpha: Outline opacity, 255 opaque.

    Returns:
        The visual-prompt samples, in order.

    Raises:
        ValueError: some sample has no image or no box (the message counts them).

    Example:
        >>> visual = with_visual_prompt(load_looktwice("qa.json", "vg/"))  # doctest: +SKIP
    """
    _check_style(color, width, alpha)
    samples = list(samples) if not isinstance(samples, SampleSet) else samples
    unusable = [i for i, s in enumerate(samples) if s.image is None or s.box is None]
    if unusable:
        raise ValueError(
            f"{len(unusable)} of {len(samples)} samples have no image or no box, so no visual prompt "
            f"can be drawn (first indices: {unusable[:5]})"
        )
    boxed = tuple(
        replace(
            s,
            image=BoxedImage(s.image, s.box, color=color, width=width, alpha=alpha),  # type: ignore[arg-type]
            metadata={**s.metadata, "visual_prompt": True},
        )
        for s in samples
    )
    if isinstance(samples, SampleSet):
        return SampleSet(boxed, n_skipped=samples.n_skipped, source=samples.source)
    return SampleSet(boxed, n_skipped=0, source="")
