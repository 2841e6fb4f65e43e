"""The two hook families that reduce attention to visual-head metrics as the forward runs.

:func:`visual_head_hooks` reads only the query row of each ``blocks.{l}.attn.hook_pattern``;
:func:`visual_head_qk_hooks` recomputes that one row from ``hook_rot_q`` / ``hook_rot_k`` so the
forward keeps its fused attention. Both hand ``(layer, head_metrics(...))`` to a sink (a
callable or an object with ``.add``, such as :class:`~vh_lens.visual_heads.accumulator.ScoreAccumulator`);
nothing is cached whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from vh_lens.core.hooks import FwdHook, act_name, query_positions
from vh_lens.core.layout import TokenLayout
from vh_lens.data.sample import Box
from vh_lens.visual_heads.metrics import head_metrics

__all__ = ["MetricSink", "qk_hooks_supported", "visual_head_hooks", "visual_head_qk_hooks"]

MetricSink = Callable[[int, Mapping[str, Tensor]], None]
"""``sink(layer, metrics)``: where the hooks put each layer's ``[batch, head]`` metrics."""


@runtime_checkable
class _HasAdd(Protocol):
    def add(self, layer: int, metrics: Mapping[str, Tensor]) -> None: ...


def _batch_masks(
    layouts: Sequence[TokenLayout], boxes: Sequence[Box | None] | None, min_overlap: float, image: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(image, region, text)`` key masks ``[batch, seq]``.

    ``image=None``: the tokens of every image of a sample count as image tokens; ``image=k``:
    only those of its image ``k`` (a text-only sample has none; a sample with images but no
    image ``k`` is an error), and the box is on image ``k``. Other images' tokens are never text.
    """
    if boxes is not None and len(boxes) != len(layouts):
        raise ValueError(f"got {len(boxes)} boxes for {len(layouts)} layouts")
    if image is not None and (isinstance(image, bool) or not isinstance(image, int) or image < 0):
        raise ValueError(f"image must be None (all images) or a 0-based image index, got {image!r}")
    for i, lay in enumerate(layouts):
        if image is not None and lay.has_image and image >= lay.n_images:
            raise ValueError(f"sample {i} holds {lay.n_images} image(s): it has no image {image}")
    img = torch.stack([lay.image_token_mask(image) if lay.has_image else lay.image_mask for lay in layouts])
    text = torch.stack([lay.text_mask for lay in layouts])
    region = torch.zeros_like(img)
    for i, box in enumerate(boxes or ()):
        if box is not None:
            region[i] = layouts[i].region_mask(box, min_overlap, image=image)
    return img, region, text


class _HookSetup:
    """What the pattern hooks and the query-key hooks share: checked inputs, masks per device."""

    def __init__(
        self,
        layouts: Sequence[TokenLayout],
        sink: MetricSink | _HasAdd,
        n_layers: int,
        positions: Sequence[int] | Tensor | None,
        boxes: Sequence[Box | None] | None,
        min_overlap: float,
        caller: str,
        image: int | None = None,
    ):
        if not layouts:
            raise ValueError(f"{caller} needs at least one layout")
        seq_lens = {lay.seq_len for lay in layouts}
        if len(seq_lens) != 1:
            raise ValueError(f"layouts of one batch must share seq_len, got {sorted(seq_lens)}")
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        self.seq_len = seq_lens.pop()
        self.n = len(layouts)
        query = query_positions(layouts, positions)
        n_pad = torch.tensor([lay.n_pad for lay in layouts], dtype=torch.long)
        if bool((query < n_pad).any()):
            raise ValueError(f"a query position lies in the left padding: {query.tolist()} vs n_pad {n_pad.tolist()}")
        self.query, self.n_pad = query, n_pad
        self.masks = _batch_masks(layouts, boxes, min_overlap, image)
        self.add = sink.add if isinstance(sink, _HasAdd) else sink
        self._on_device: dict[tuple[torch.device, int], tuple[Tensor, ...]] = {}

    def check(self, name: str, batch: int, q_len: int) -> None:
        if batch != self.n:
            raise ValueError(f"{name}: batch of {batch} but {self.n} layouts")
        if int(self.query.max()) >= q_len:
            raise ValueError(
                f"{name}: query position {int(self.query.max())} outside the {q_len} query positions "
                "(a cached-generation step? run the full sequence instead)"
            )

    def device_masks(self, device: torch.device, key_len: int, what: str) -> tuple[Tensor, ...]:
        """``(image, region, text, query, arange, n_pad)`` on ``device`` for ``key_len`` keys."""
        cached = self._on_device.get((device, key_len))
        if cached is None:
            if key_len < self.seq_len:
                raise ValueError(f"{what} has {key_len} key positions but the layouts have {self.seq_len}")
            pad = key_len - self.seq_len
            cached = tuple(torch.nn.functional.pad(m, (0, pad)).to(device) for m in self.masks)
            cached += (self.query.to(device), torch.arange(self.n, device=device), self.n_pad.to(device))
            self._on_device[(device, key_len)] = cached
        return cached


def visual_head_hooks(
    layouts: Sequence[TokenLayout],
    sink: MetricSink | _HasAdd,
    *,
    n_layers: int,
    query_positions: Sequence[int] | Tensor | None = None,
    boxes: Sequence[Box | None] | None = None,
    min_overlap: float = 0.0,
    image: int | None = None,
) -> list[FwdHook]:
    """Hooks that reduce every layer's attention at the query rows to visual-head metrics.

    Each hook sits on ``blocks.{l}.attn.hook_pattern`` (``[batch, head, query, key]``; also
    per query head for grouped-query models), reads only ``pattern[b, :, q_b, :]`` for each
    sample, computes :func:`head_metrics` for all heads at once and hands
    ``(layer, metrics)`` to ``sink``. The pattern is not changed (the hook returns ``None``).

    If the run's sequence is longer than the layouts (e.g. an appended answer token), the extra
    key positions count as neither image nor text nor region.

    Args:
        layouts: one :class:`~vh_lens.core.layout.TokenLayout` per sample of the batch.
        sink: a callable ``sink(layer, metrics)`` or an object with ``.add(layer, metrics)``
            (such as :class:`ScoreAccumulator`).
        n_layers: number of layers to hook (``model.cfg.n_layers``).
        query_positions: the query position of each sample (default: each layout's
            ``query_position``, the last prompt position).
        boxes: one box ``(left, top, right, bottom)`` in original-image pixels or ``None`` per
            sample, for the region weight (mapped with ``layout.region_mask``).
        min_overlap: minimum fraction of a patch the box must cover (0: any overlap).
        image: with several images per prompt, which image's tokens are the "image" of the
            image weight and concentration (0-based; the box is then on that image);
            ``None`` (default): all images together (the box needs a one-image sample). Tokens
            of the other images count as neither image nor text.

    Returns:
        ``[(hook_name, hook_fn), ...]`` for ``run_with_hooks(fwd_hooks=...)``.

    Example:
        >>> acc = ScoreAccumulator(model.cfg.n_layers, model.cfg.n_heads)   # doctest: +SKIP
        >>> hooks = visual_head_hooks(batch.layout, acc, n_layers=model.cfg.n_layers)  # doctest: +SKIP
        >>> model.run_with_hooks(batch, fwd_hooks=hooks)                     # doctest: +SKIP
    """
    prep = _HookSetup(layouts, sink, n_layers, query_positions, boxes, min_overlap, "visual_head_hooks", image)

    def hook_fn(pattern: Float[Tensor, "batch head q k"], *, hook: HookPoint, layer: int) -> None:
        batch, _, q_len, k_len = pattern.shape
        prep.check(hook.name, batch, q_len)
        image, region, text, q, arange, _ = prep.device_masks(pattern.device, k_len, "hook_pattern")
        rows = pattern.detach()[arange, :, q, :]  # [batch, head, key]; no graph kept alive
        prep.add(layer, head_metrics(rows, image, region, text))
        return None

    return [(act_name("pattern", layer), partial(hook_fn, layer=layer)) for layer in range(n_layers)]


def qk_hooks_supported(lm: Any) -> bool:
    """Whether :func:`visual_head_qk_hooks` reproduces ``lm``'s attention rows (rotary causal backbones we load)."""
    from vh_lens.core.fast_attention import layer_supported

    blocks = getattr(lm, "blocks", None)
    return blocks is not None and len(blocks) > 0 and all(layer_supported(block.attn) for block in blocks)


def visual_head_qk_hooks(
    lm: Any,
    layouts: Sequence[TokenLayout],
    sink: MetricSink | _HasAdd,
    *,
    query_positions: Sequence[int] | Tensor | None = None,
    boxes: Sequence[Box | None] | None = None,
    min_overlap: float = 0.0,
    image: int | None = None,
) -> list[FwdHook]:
    """The metrics of :func:`visual_head_hooks`, from the queries and keys instead of the pattern.

    Hooks on ``blocks.{l}.attn.hook_rot_q`` keep the query vector at each sample's query
    position; hooks on ``hook_rot_k`` (which fires next) compute that one attention row per
    head, ``softmax(q . k / attn_scale)`` over the keys the layer lets the query see (causal,
    sliding window, left padding), exactly as TransformerLens does for the full pattern, and
    hand its :func:`head_metrics` to ``sink``. No pattern hook is attached, so the forward can
    take the fused attention path (:mod:`vh_lens.core.fast_attention`): a scan then costs about a
    plain forward. Grouped-query keys are shared by their query heads as in the model.

    Args:
        lm: the HookedTransformer (``model.lm``); see :func:`qk_hooks_supported`.
        layouts, sink, query_positions, boxes, min_overlap, image: as :func:`visual_head_hooks`.

    Returns:
        ``[(hook_name, hook_fn), ...]`` for ``run_with_hooks(fwd_hooks=...)``.
    """
    if not qk_hooks_supported(lm):
        raise ValueError("visual_head_qk_hooks needs a rotary causal backbone (Llama, Mistral, Qwen2, Phi-3)")
    n_layers = len(lm.blocks)
    prep = _HookSetup(layouts, sink, n_layers, query_positions, boxes, min_overlap, "visual_head_qk_hooks", image)
    queries: dict[int, Tensor] = {}

    def q_hook(q: Float[Tensor, "batch pos head d_head"], *, hook: HookPoint, layer: int) -> None:
        prep.check(hook.name, q.shape[0], q.shape[1])
        _, _, _, query, arange, _ = prep.device_masks(q.device, q.shape[1], "hook_rot_q")
        queries[layer] = q.detach()[arange, query]  # [batch, head, d_head]

    def k_hook(k: Float[Tensor, "batch pos kv_head d_head"], *, hook: HookPoint, layer: int) -> None:
        q_rows = queries.pop(layer, None)
        if q_rows is None:
            raise RuntimeError(f"{hook.name} fired without its hook_rot_q")
        attn = lm.blocks[layer].attn
        k = k.detach()
        if q_rows.dtype in (torch.float16, torch.bfloat16):
            q_rows = q_rows.float()
        if k.shape[2] != q_rows.shape[1]:
            k = k.repeat_interleave(q_rows.shape[1] // k.shape[2], dim=2)
        key_len = k.shape[1]
        image, region, text, query, _, n_pad = prep.device_masks(k.device, key_len, "hook_rot_k")
        scores = torch.einsum("bhd,bkhd->bhk", q_rows, k.to(q_rows.dtype)) / attn.attn_scale
        keys = torch.arange(key_len, device=k.device)[None, :]
        allowed = (keys <= query[:, None]) & (keys >= n_pad[:, None])  # [batch, key]
        if attn.attn_type == "local":
            allowed &= keys > query[:, None] - attn.cfg.window_size
        rows = torch.softmax(scores.masked_fill(~allowed[:, None, :], float("-inf")), dim=-1)
        prep.add(layer, head_metrics(rows, image, region, text))

    hooks: list[FwdHook] = []
    for layer in range(n_layers):
        hooks.append((act_name("rot_q", layer), partial(q_hook, layer=layer)))
        hooks.append((act_name("rot_k", layer), partial(k_hook, layer=layer)))
    return hooks
