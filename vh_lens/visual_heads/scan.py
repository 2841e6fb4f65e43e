"""Visual heads (paper A): per-head attention metrics, streaming hooks and the dataset scan.

For each sample, layer ``l`` and head ``h``, with ``a`` the post-softmax attention row at the
sample's query position (it sums to 1 over all key positions, BOS included):

- ``image_weight``   ``W_img = sum_{i in image} a_i``
- ``region_weight``  ``W_reg = sum_{i in image, covered by the question's box} a_i``
- ``text_weight``    ``W_txt = sum_{i in text} a_i`` (the other non-padding prompt positions)
- ``concentration``  ``C = 1 - H(p) / log N``, ``p_i = a_i / W_img`` over the ``N`` image
  tokens, ``H(p) = -sum_i p_i log(p_i + eps)``; ``C = 0`` when ``W_img = 0`` or ``N <= 1``.
- ``detection``      ``S = f(l) * W * C`` (:func:`detection_score`).

Nothing is cached whole: :func:`visual_head_hooks` reads only the query row of each
``blocks.{l}.attn.hook_pattern`` and reduces it at once to ``[batch, head]`` metrics, which a
:class:`ScoreAccumulator` folds into streaming means and variances. :func:`scan_visual_heads`
runs the whole thing over a data set, resumably.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm import tqdm
from transformer_lens.hook_points import HookPoint
from transformer_lens.utils import get_act_name

from vh_lens.data.sample import Box, Sample
from vh_lens.core.layout import TokenLayout
from vh_lens.core.io import load_tensors, save_tensors, write_json
from vh_lens.visual_heads.scores import METRICS, VisualHeadScores

HEAD_METRICS: tuple[str, ...] = ("image_weight", "region_weight", "text_weight", "concentration")
"""The metrics :func:`head_metrics` returns (``detection`` is added by the accumulator)."""

HookFn = Callable[..., Tensor | None]
LayerFn = Callable[[Any], Any]
MetricSink = Callable[[int, Mapping[str, Tensor]], None]


@runtime_checkable
class _HasAdd(Protocol):
    def add(self, layer: int, metrics: Mapping[str, Tensor]) -> None: ...


# --------------------------------------------------------------------------------------------
# Metrics


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def head_metrics(
    rows: Float[Tensor, "batch head key"],
    image_mask: Bool[Tensor, "batch key"],
    region_mask: Bool[Tensor, "batch key"],
    text_mask: Bool[Tensor, "batch key"],
    eps: float = 1e-12,
) -> dict[str, Float[Tensor, "batch head"]]:
    """Image, region and text weight and concentration of every head at once.

    Args:
        rows: ``[batch, head, key]`` post-softmax attention rows at each sample's query
            position (computed in float64, whatever their dtype).
        image_mask: ``[batch, key]`` True at image-token positions.
        region_mask: ``[batch, key]`` True at the image tokens covered by the sample's box
            (all False when the sample has no box: its region weight is then 0). Positions
            outside ``image_mask`` are ignored.
        text_mask: ``[batch, key]`` True at the text positions of the prompt (padding and
            image tokens excluded).
        eps: the ``eps`` inside ``log(p + eps)`` of the entropy.

    Returns:
        ``{"image_weight", "region_weight", "text_weight", "concentration"}``, each
        ``[batch, head]`` (float64; float32 on MPS).

    Example:
        >>> rows = torch.tensor([[[0.2, 0.4, 0.2, 0.1, 0.1]]])
        >>> img = torch.tensor([[False, True, True, True, False]])
        >>> m = head_metrics(rows, img, torch.zeros_like(img), ~img)
        >>> round(float(m["image_weight"]), 6), round(float(m["concentration"]), 4)
        (0.7, 0.1301)
    """
    if rows.ndim != 3:
        raise ValueError(f"rows must be [batch, head, key], got shape {tuple(rows.shape)}")
    batch, _, key = rows.shape
    for name, mask in (("image_mask", image_mask), ("region_mask", region_mask), ("text_mask", text_mask)):
        if mask.shape != (batch, key):
            raise ValueError(f"{name} must be [batch, key] = {(batch, key)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {mask.dtype}")
    dtype = _compute_dtype(rows.device)
    a = rows.to(dtype)
    img = image_mask.to(rows.device)[:, None, :]
    reg = (region_mask.to(rows.device) & image_mask.to(rows.device))[:, None, :]
    txt = text_mask.to(rows.device)[:, None, :]
    zero = a.new_zeros(())

    a_img = torch.where(img, a, zero)
    w_img = a_img.sum(-1)  # [batch, head]
    w_reg = torch.where(reg, a, zero).sum(-1)
    w_txt = torch.where(txt, a, zero).sum(-1)

    n_img = image_mask.to(rows.device).sum(-1).to(dtype)[:, None]  # [batch, 1]
    defined = (w_img > 0) & (n_img > 1)
    p = a_img / torch.where(defined, w_img, torch.ones_like(w_img))[..., None]
    entropy = -(p * torch.log(p + eps)).sum(-1)
    log_n = torch.log(torch.where(n_img > 1, n_img, torch.full_like(n_img, math.e)))
    concentration = torch.where(defined, 1.0 - entropy / log_n, zero)
    return {"image_weight": w_img, "region_weight": w_reg, "text_weight": w_txt, "concentration": concentration}


def default_layer_fn(layer: int | Tensor) -> float | Tensor:
    """Our default layer factor ``f(l) = 1 / log(l + e)`` for 0-based ``l``.

    Paper A only says that ``f`` scores lower layers higher (to offset their smaller weights)
    and decays gradually with depth, with an epsilon for stability; its exact form is not
    published in any text we have. This default is ours: ``f(0) = 1``, ``f(31) ~ 0.28``, smooth
    and slowly decaying. Pass your own ``layer_fn`` to :func:`detection_score` /
    :func:`scan_visual_heads` to use another.

    Args:
        layer: a 0-based layer index, or a tensor of them.
    """
    if isinstance(layer, Tensor):
        return 1.0 / torch.log(layer.to(torch.float64) + math.e)
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return 1.0 / math.log(layer + math.e)


def detection_score(
    weight: Float[Tensor, "*shape"],
    concentration: Float[Tensor, "*shape"],
    layer: int | Tensor,
    layer_fn: LayerFn = default_layer_fn,
) -> Float[Tensor, "*shape"]:
    """Paper A's head detection score ``S = f(l) * W * C``.

    Args:
        weight: attention weight ``W`` of the part asked for (image, or the box region).
        concentration: concentration ``C``, same shape.
        layer: the 0-based layer of the heads, or a tensor broadcastable against ``weight``
            (e.g. ``torch.arange(n_layers)[:, None]`` for ``[n_layers, n_heads]`` maps).
        layer_fn: ``f``; defaults to :func:`default_layer_fn` (ours: the paper's exact ``f``
            is unpublished).

    Example:
        >>> detection_score(torch.tensor([0.5]), torch.tensor([0.4]), 0)
        tensor([0.2000])
    """
    return layer_fn(layer) * weight * concentration


# --------------------------------------------------------------------------------------------
# Hooks


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
        query_positions: Sequence[int] | Tensor | None,
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
        if query_positions is None:
            query = torch.tensor([lay.query_position for lay in layouts], dtype=torch.long)
        else:
            query = torch.as_tensor(query_positions, dtype=torch.long).flatten()
            if query.numel() != len(layouts):
                raise ValueError(f"got {query.numel()} query positions for {len(layouts)} layouts")
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
) -> list[tuple[str | Callable[[str], bool], HookFn]]:
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

    return [(get_act_name("pattern", layer), partial(hook_fn, layer=layer)) for layer in range(n_layers)]


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
) -> list[tuple[str | Callable[[str], bool], HookFn]]:
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

    hooks: list[tuple[str | Callable[[str], bool], HookFn]] = []
    for layer in range(n_layers):
        hooks.append((get_act_name("rot_q", layer), partial(q_hook, layer=layer)))
        hooks.append((get_act_name("rot_k", layer), partial(k_hook, layer=layer)))
    return hooks


# --------------------------------------------------------------------------------------------
# Streaming statistics


class ScoreAccumulator:
    """Streaming mean and variance per head of every visual-head metric (the hooks' sink).

    Batches are merged with Chan et al.'s parallel form of Welford's update in float64, per
    layer, so memory does not grow with the number of samples (unless ``keep_per_sample``).
    The detection score ``f(l) * W * C`` is computed per sample from the weight named by
    ``detection_weight`` and the concentration, then averaged.

    Args:
        n_layers: number of layers.
        n_heads: number of (query) heads per layer.
        keep_per_sample: also keep ``[n_samples, n_layers, n_heads]`` arrays per metric.
        layer_fn: ``f`` of the detection score (default :func:`default_layer_fn`, ours).
        detection_weight: ``"image"`` (``W_img``, default) or ``"region"`` (``W_reg``).

    Example:
        >>> acc = ScoreAccumulator(2, 4)
        >>> acc.add(0, {m: torch.rand(3, 4) for m in HEAD_METRICS})
        >>> acc.add(1, {m: torch.rand(3, 4) for m in HEAD_METRICS})
        >>> acc.count
        3
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        keep_per_sample: bool = False,
        *,
        layer_fn: LayerFn = default_layer_fn,
        detection_weight: Literal["image", "region"] = "image",
    ) -> None:
        for name, value in (("n_layers", n_layers), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if detection_weight not in ("image", "region"):
            raise ValueError(f"detection_weight must be 'image' or 'region', got {detection_weight!r}")
        self.n_layers, self.n_heads = n_layers, n_heads
        self.keep_per_sample = keep_per_sample
        self.layer_fn = layer_fn
        self.detection_weight = detection_weight
        self._n = torch.zeros(n_layers, dtype=torch.int64)
        self._mean = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in METRICS}
        self._m2 = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in METRICS}
        self._chunks: list[list[dict[str, Tensor]]] = [[] for _ in range(n_layers)]

    def __call__(self, layer: int, metrics: Mapping[str, Tensor]) -> None:
        self.add(layer, metrics)

    def add(self, layer: int, metrics: Mapping[str, Float[Tensor, "batch head"]]) -> None:
        """Fold one layer's metrics of a batch of samples into the statistics.

        Args:
            layer: 0-based layer.
            metrics: :data:`HEAD_METRICS` -> ``[batch, n_heads]`` (``detection`` is computed
                here unless given).
        """
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} outside 0..{self.n_layers - 1}")
        missing = [m for m in HEAD_METRICS if m not in metrics]
        if missing:
            raise ValueError(f"metrics lack {missing}")
        values = {m: metrics[m].detach().to("cpu", torch.float64) for m in HEAD_METRICS}
        if "detection" in metrics:
            values["detection"] = metrics["detection"].detach().to("cpu", torch.float64)
        else:
            weight = values["image_weight" if self.detection_weight == "image" else "region_weight"]
            values["detection"] = detection_score(weight, values["concentration"], layer, self.layer_fn)
        shape = values["image_weight"].shape
        if len(shape) != 2 or shape[1] != self.n_heads or shape[0] < 1:
            raise ValueError(f"metrics must be [batch, {self.n_heads}], got {tuple(shape)}")
        if any(v.shape != shape for v in values.values()):
            raise ValueError("all metrics of one add() must share a shape")
        self._merge_layer(layer, shape[0], {m: v.mean(0) for m, v in values.items()},
                          {m: ((v - v.mean(0)) ** 2).sum(0) for m, v in values.items()})
        if self.keep_per_sample:
            self._chunks[layer].append(values)

    def _merge_layer(self, layer: int, n_b: int, mean_b: Mapping[str, Tensor], m2_b: Mapping[str, Tensor]) -> None:
        n_a = int(self._n[layer])
        n = n_a + n_b
        for m in METRICS:
            delta = mean_b[m] - self._mean[m][layer]
            self._mean[m][layer] += delta * (n_b / n)
            self._m2[m][layer] += m2_b[m] + delta**2 * (n_a * n_b / n)
        self._n[layer] = n

    def merge(self, other: ScoreAccumulator) -> None:
        """Fold another accumulator (e.g. from another worker) into this one."""
        if (other.n_layers, other.n_heads) != (self.n_layers, self.n_heads):
            raise ValueError("accumulators differ in shape")
        if other.keep_per_sample != self.keep_per_sample:
            raise ValueError("accumulators differ in keep_per_sample")
        for layer in range(self.n_layers):
            n_b = int(other._n[layer])
            if n_b:
                self._merge_layer(layer, n_b, {m: other._mean[m][layer] for m in METRICS},
                                  {m: other._m2[m][layer] for m in METRICS})
                self._chunks[layer].extend(other._chunks[layer])

    @property
    def count(self) -> int:
        """Samples seen (the same on every layer once each batch is complete)."""
        counts = set(self._n.tolist())
        if len(counts) != 1:
            raise RuntimeError(f"layers have seen different numbers of samples {self._n.tolist()}: incomplete batch")
        return counts.pop()

    def _per_sample(self) -> dict[str, Tensor]:
        empty = torch.zeros(0, self.n_heads, dtype=torch.float64)
        return {
            m: torch.stack([torch.cat([c[m] for c in chunks]) if chunks else empty for chunks in self._chunks], dim=1)
            for m in METRICS
        }

    def state_dict(self) -> dict[str, Tensor]:
        """The statistics as tensors (for checkpoints)."""
        state = {"count": self._n.clone()}
        for m in METRICS:
            state[f"mean.{m}"] = self._mean[m].clone()
            state[f"m2.{m}"] = self._m2[m].clone()
        if self.keep_per_sample:
            _ = self.count  # raises on an incomplete batch
            state |= {f"per_sample.{m}": v for m, v in self._per_sample().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore statistics written by :meth:`state_dict`."""
        if tuple(state["count"].shape) != (self.n_layers,):
            raise ValueError("checkpoint state does not match this accumulator's n_layers")
        self._n = state["count"].to(torch.int64).clone()
        for m in METRICS:
            if tuple(state[f"mean.{m}"].shape) != (self.n_layers, self.n_heads):
                raise ValueError("checkpoint state does not match this accumulator's shape")
            self._mean[m] = state[f"mean.{m}"].to(torch.float64).clone()
            self._m2[m] = state[f"m2.{m}"].to(torch.float64).clone()
        self._chunks = [[] for _ in range(self.n_layers)]
        if self.keep_per_sample:
            if f"per_sample.{METRICS[0]}" not in state:
                raise ValueError("checkpoint has no per-sample arrays but keep_per_sample=True")
            for layer in range(self.n_layers):
                self._chunks[layer].append({m: state[f"per_sample.{m}"][:, layer].to(torch.float64) for m in METRICS})

    def result(self, metadata: Mapping[str, Any] | None = None) -> VisualHeadScores:
        """The statistics as :class:`~vh_lens.visual_heads.scores.VisualHeadScores` (variance with ``ddof=0``)."""
        count = self.count
        if count == 0:
            raise ValueError("no samples were accumulated")
        meta = {"layer_fn": _fn_name(self.layer_fn), "detection_weight": self.detection_weight}
        meta |= dict(metadata or {})
        return VisualHeadScores(
            mean={m: v.clone() for m, v in self._mean.items()},
            variance={m: (v / count).clamp(min=0) for m, v in self._m2.items()},
            count=count,
            per_sample=self._per_sample() if self.keep_per_sample else None,
            metadata=meta,
        )


def _fn_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --------------------------------------------------------------------------------------------
# Checkpoints

_CKPT_JSON = "checkpoint.json"
_CKPT_FORMAT = "vh_lens.visual_heads.scan.checkpoint"


def _write_checkpoint(directory: Path, acc: ScoreAccumulator, config: Mapping[str, Any], fingerprint: str) -> None:
    """Tensors to a fresh file, then the JSON that names it (the commit point), then clean up."""
    count = acc.count
    name = f"state-{count:010d}.safetensors"
    save_tensors(directory / name, acc.state_dict(), {"count": str(count)})
    info = {
        "format": _CKPT_FORMAT, "count": count, "state_file": name, "config": dict(config),
        "fingerprint": fingerprint,
    }
    write_json(directory / _CKPT_JSON, info, indent=2, sort_keys=True)
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_checkpoint(directory: Path, acc: ScoreAccumulator, config: Mapping[str, Any]) -> tuple[int, str] | None:
    path = directory / _CKPT_JSON
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{path} is not a visual-head scan checkpoint")
    saved = json.loads(json.dumps(dict(config)))
    if info["config"] != saved:
        diff = {k: (info["config"].get(k), v) for k, v in saved.items() if info["config"].get(k) != v}
        raise ValueError(f"checkpoint in {directory} was written with other settings (saved, now): {diff}")
    acc.load_state_dict(load_tensors(directory / info["state_file"]))
    if acc.count != info["count"]:
        raise ValueError(f"checkpoint {path} is inconsistent: count {info['count']} vs tensors {acc.count}")
    return int(info["count"]), str(info["fingerprint"])


def _sample_key(sample: Sample, answer_token: int | None) -> bytes:
    image = sample.image
    if image is None or isinstance(image, (str, os.PathLike)):
        image_key = str(image)
    else:
        image_key = f"<{type(image).__name__} {getattr(image, 'size', '')} {getattr(image, 'mode', '')}>"
    key = [image_key, sample.question, sample.answer, sample.choices, sample.box, answer_token]
    return json.dumps(key, default=str).encode("utf-8")


# --------------------------------------------------------------------------------------------
# The scan


def _run_batch(
    model: Any,
    chunk: list[Sample],
    acc: ScoreAccumulator,
    *,
    query: str,
    answer_tokens: Sequence[int] | None,
    min_overlap: float,
    device: torch.device | str | None,
    use_qk: bool,
) -> None:
    batch = model.prepare_samples(chunk)
    if device is not None:
        batch = batch.to(device)
    layouts: list[TokenLayout] = list(batch.layout)
    query_positions = None
    if query == "answer_token":
        if answer_tokens is None:
            logits = model(batch)
            last = torch.tensor([lay.query_position for lay in layouts], device=logits.device)
            tokens = logits[torch.arange(len(layouts), device=logits.device), last].argmax(-1)
        else:
            tokens = torch.as_tensor(answer_tokens, dtype=torch.long)
        batch = model.append_tokens(batch, tokens.reshape(-1, 1))
        layouts = list(batch.layout)
        if any(lay.answer_positions.numel() != 1 for lay in layouts):
            raise RuntimeError("model.append_tokens must mark exactly one appended position per sample")
        query_positions = [int(lay.answer_positions[0]) for lay in layouts]
    collected: list[tuple[int, Mapping[str, Tensor]]] = []
    sink = lambda layer, metrics: collected.append((layer, metrics))
    boxes = [s.box for s in chunk]
    if use_qk:
        hooks = visual_head_qk_hooks(
            model.lm, layouts, sink, query_positions=query_positions, boxes=boxes, min_overlap=min_overlap
        )
    else:
        hooks = visual_head_hooks(
            layouts, sink, n_layers=acc.n_layers, query_positions=query_positions, boxes=boxes, min_overlap=min_overlap
        )
    model.run_with_hooks(batch, fwd_hooks=hooks)
    seen = sorted(layer for layer, _ in collected)
    if seen != list(range(acc.n_layers)):
        raise RuntimeError(f"expected one attention row per layer 0..{acc.n_layers - 1}, got layers {seen}")
    for layer, metrics in collected:  # only a complete batch reaches the accumulator
        acc.add(layer, metrics)


def scan_visual_heads(
    model: Any,
    samples: Iterable[Sample],
    *,
    batch_size: int = 8,
    query: Literal["last_prompt", "answer_token"] = "last_prompt",
    answer_tokens: Sequence[int] | Tensor | None = None,
    layer_fn: LayerFn = default_layer_fn,
    detection_weight: Literal["image", "region"] = "image",
    min_overlap: float = 0.0,
    keep_per_sample: bool = False,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 256,
    device: torch.device | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    attention: Literal["auto", "qk", "pattern"] = "auto",
) -> VisualHeadScores:
    """Score every attention head of ``model`` as a visual head over ``samples`` (paper A).

    One forward pass per batch (two with ``query="answer_token"`` and no ``answer_tokens``);
    the attention is reduced at each layer to ``[batch, head]`` metrics and streamed into a
    :class:`ScoreAccumulator`, so memory does not grow with the data set. The rows come from
    :func:`visual_head_qk_hooks` (queries and keys; the forward keeps its fused attention)
    where the backbone allows it, else from :func:`visual_head_hooks` (the pattern); both
    give the same numbers.

    Args:
        model: a :class:`vh_lens.LlavaLens` (anything with ``cfg``, ``prepare_samples``,
            ``run_with_hooks``, and for ``"answer_token"`` also ``__call__`` and
            ``append_tokens(batch, tokens)``).
        samples: the samples (a sequence or any iterable; streamed). A sample's ``box`` gives
            its region weight.
        batch_size: samples per forward pass.
        query: ``"last_prompt"`` (default): the row of the last prompt position, which predicts
            the first answer token. ``"answer_token"``: append one answer token (greedy, or
            ``answer_tokens``) and read its row, as the authors' code did; the appended
            token's attention to itself counts as neither image nor text weight.
        answer_tokens: one token id per sample (e.g. the first token of the gold answer) for
            ``"answer_token"``; ``None``: the greedy next token.
        layer_fn: ``f`` of the detection score; default :func:`default_layer_fn` (ours; the
            paper's exact ``f`` is unpublished).
        detection_weight: weight in the detection score: ``"image"`` or ``"region"``.
        min_overlap: minimum fraction of a patch a box must cover to count in its region.
        keep_per_sample: keep ``[n_samples, n_layers, n_heads]`` arrays per metric.
        progress: show a tqdm progress bar.
        checkpoint_dir: if given, the accumulator state is written there (atomically) every
            ``checkpoint_every`` samples and at the end; a rerun with the same arguments
            continues from the saved count, and its result equals an uninterrupted run's.
            Samples are recognised by image path (PIL images only by size and mode),
            question, answer, choices, box and answer token: a rerun on other samples is
            refused.
        checkpoint_every: samples between checkpoints.
        device: move each batch there (``batch.to(device)``); default: leave it as prepared.
        metadata: extra JSON-serialisable metadata for the result.
        attention: ``"qk"``: rows from the queries and keys (needs ``model.lm``, a rotary
            backbone); ``"pattern"``: rows from ``hook_pattern`` (TransformerLens' full
            attention runs); ``"auto"`` (default): ``"qk"`` when supported.

    Returns:
        :class:`~vh_lens.visual_heads.scores.VisualHeadScores` over all samples.

    Raises:
        ValueError: bad arguments, or a checkpoint written with other settings or samples.

    Example:
        >>> scores = scan_visual_heads(model, samples, batch_size=4, checkpoint_dir="ckpt")  # doctest: +SKIP
        >>> scores.top_heads(10, stage="mid")                                                # doctest: +SKIP
    """
    if query not in ("last_prompt", "answer_token"):
        raise ValueError(f"query must be 'last_prompt' or 'answer_token', got {query!r}")
    if answer_tokens is not None and query != "answer_token":
        raise ValueError("answer_tokens is only used with query='answer_token'")
    for name, value in (("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if attention not in ("auto", "qk", "pattern"):
        raise ValueError(f"attention must be 'auto', 'qk' or 'pattern', got {attention!r}")
    qk_ok = qk_hooks_supported(getattr(model, "lm", None))
    if attention == "qk" and not qk_ok:
        raise ValueError("attention='qk' needs a model with .lm, a rotary causal backbone (Llama, Mistral, Qwen2, Phi-3)")
    use_qk = attention == "qk" or (attention == "auto" and qk_ok)
    tokens = None if answer_tokens is None else [int(t) for t in torch.as_tensor(answer_tokens).flatten().tolist()]
    acc = ScoreAccumulator(
        int(model.cfg.n_layers), int(model.cfg.n_heads), keep_per_sample,
        layer_fn=layer_fn, detection_weight=detection_weight,
    )
    config = {
        "n_layers": acc.n_layers, "n_heads": acc.n_heads, "query": query, "layer_fn": _fn_name(layer_fn),
        "detection_weight": detection_weight, "min_overlap": float(min_overlap), "keep_per_sample": keep_per_sample,
        "gold_answer_tokens": tokens is not None,
    }
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    start, saved_fingerprint = 0, None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        restored = _read_checkpoint(ckpt, acc, config)
        if restored is not None:
            start, saved_fingerprint = restored

    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if tokens is not None and total is not None and len(tokens) != total:
        raise ValueError(f"got {len(tokens)} answer tokens for {total} samples")
    if tokens is not None and len(tokens) < start:
        raise ValueError(f"got {len(tokens)} answer tokens but the checkpoint has already seen {start} samples")
    hasher = hashlib.sha256()
    it = iter(samples)
    for index, sample in enumerate(itertools.islice(it, start)):
        hasher.update(_sample_key(sample, None if tokens is None else tokens[index]))
    if saved_fingerprint is not None and hasher.hexdigest() != saved_fingerprint:
        raise ValueError(f"the checkpoint in {ckpt} was written for other samples (fingerprint differs)")
    done, last_saved = start, start
    with torch.inference_mode(), tqdm(total=total, initial=start, disable=not progress, desc="visual heads",
                                      unit="sample") as bar:
        while chunk := list(itertools.islice(it, batch_size)):
            chunk_tokens = None if tokens is None else tokens[done : done + len(chunk)]
            if chunk_tokens is not None and len(chunk_tokens) != len(chunk):
                raise ValueError(f"answer_tokens ran out after {len(tokens)} samples")  # type: ignore[arg-type]
            _run_batch(model, chunk, acc, query=query, answer_tokens=chunk_tokens,
                       min_overlap=min_overlap, device=device, use_qk=use_qk)
            for offset, sample in enumerate(chunk):
                hasher.update(_sample_key(sample, None if chunk_tokens is None else chunk_tokens[offset]))
            done += len(chunk)
            bar.update(len(chunk))
            if ckpt is not None and done // checkpoint_every > last_saved // checkpoint_every:
                _write_checkpoint(ckpt, acc, config, hasher.hexdigest())
                last_saved = done
    if ckpt is not None and done != last_saved:
        _write_checkpoint(ckpt, acc, config, hasher.hexdigest())
    meta = {"query": query, "min_overlap": float(min_overlap), "batch_size": batch_size}
    model_name = getattr(model.cfg, "model_name", None)
    if isinstance(model_name, str):
        meta["model"] = model_name
    return acc.result(meta | dict(metadata or {}))
