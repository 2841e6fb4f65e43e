"""Per-head activations at the answer position (paper B, step 1 of the pipeline).

:func:`collect_head_activations` records every head's output before ``W_O``
(``blocks.{l}.attn.hook_z``) at one position per sample (the last prompt position, or the mean
over the positions that predict the gold answer's tokens), into a :class:`HeadActivations` (in
memory, or streamed to a float16 ``.npy`` memmap that :meth:`HeadActivations.load` reads back).

Example:
    >>> acts = collect_head_activations(model, subquestion_samples(items))  # doctest: +SKIP
    >>> acts.save("runs/cogqa_acts")                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vh_lens.core.config import resolve_config
from vh_lens.core.hooks import act_name
from vh_lens.core.io import atomic_path, read_json, write_json
from vh_lens.data.sample import Sample
from vh_lens.engine import PreparedBatch, Reducer, iter_batches
from vh_lens.engine import run as engine_run
from vh_lens.functional_heads.config import CollectionConfig

__all__ = ["CollectionConfig", "HeadActivations", "HeadActivationsReducer", "Position", "collect_head_activations"]

Position = Literal["last_prompt", "answer_mean"]

_ACTS_FILE = "acts.npy"
_ACTS_META = "head_activations.json"


@dataclass(frozen=True, eq=False)
class HeadActivations:
    """Per-head outputs before ``W_O`` at one position per sample, with their labels.

    Attributes:
        acts: ``[n_samples, n_layers, n_heads, d_head]`` float16/float32 tensor, or numpy
            array / read-only memmap (large sets stay on disk).
        labels: ``n_samples`` function labels (``""`` where a sample had none).
        groups: ``n_samples`` group ids (the main question): train/test splits never cut one.
        metadata: JSON-serialisable facts about the collection (position, model, ...).
    """

    acts: Float[Tensor, "n layer head d_head"] | np.ndarray
    labels: tuple[str, ...]
    groups: tuple[Hashable, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.acts.shape) != 4:
            raise ValueError(f"acts must be [n_samples, n_layers, n_heads, d_head], got shape {tuple(self.acts.shape)}")
        if isinstance(self.acts, Tensor):
            floating = self.acts.dtype in (torch.float16, torch.float32)
        else:
            floating = np.dtype(self.acts.dtype) in (np.dtype(np.float16), np.dtype(np.float32))
        if not floating:
            raise ValueError(f"acts must be float16 or float32, got {self.acts.dtype}")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "groups", tuple(self.groups))
        n = self.acts.shape[0]
        if len(self.labels) != n or len(self.groups) != n:
            raise ValueError(f"{n} samples but {len(self.labels)} labels and {len(self.groups)} groups")

    @property
    def n_samples(self) -> int:
        return int(self.acts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.acts.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.acts.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.acts.shape[3])

    def layers(
        self, start: int, stop: int, device: torch.device | str | None = None
    ) -> Float[Tensor, "n layer head d_head"]:
        """Layers ``start:stop`` of every sample as a float32 tensor (read from disk if a memmap)."""
        chunk = self.acts[:, start:stop]
        tensor = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))  # a writable copy
        return tensor.to(device=device, dtype=torch.float32)

    def layers_per_chunk(self, budget_bytes: int = 1 << 28) -> int:
        """How many layers of every sample fit in ``budget_bytes`` of float32 (at least one)."""
        per_layer = self.n_samples * self.n_heads * self.d_head * 4
        return max(1, min(self.n_layers, budget_bytes // max(per_layer, 1)))

    def head_means(self) -> Float[Tensor, "layer head d_head"]:
        """Each head's mean activation over all samples, read one layer at a time (float32).

        The mean over the *stored* activations (one position per sample); compare
        :func:`vh_lens.analysis.interventions.head_means`, which runs the model over a reference
        set and averages every position.
        """
        return torch.stack([self.layers(layer, layer + 1).mean(0)[0] for layer in range(self.n_layers)])

    def save(self, directory: str | Path) -> Path:
        """Write ``acts.npy`` (loadable as a memmap) and ``head_activations.json``, atomically.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        array = self.acts.detach().cpu().numpy() if isinstance(self.acts, Tensor) else self.acts
        with atomic_path(directory / _ACTS_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
        self._write_meta(directory)
        return directory

    def _write_meta(self, directory: Path) -> None:
        meta = {
            "labels": list(self.labels),
            "groups": list(self.groups),
            "metadata": dict(self.metadata),
            "shape": list(self.acts.shape),
            "format": 1,
        }
        write_json(directory / _ACTS_META, meta)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> HeadActivations:
        """Read what :meth:`save` (or a streamed :func:`collect_head_activations`) wrote.

        Args:
            directory: The folder.
            mmap: Keep the activations on disk as a read-only numpy memmap (else a tensor).
        """
        directory = Path(directory)
        meta = read_json(directory / _ACTS_META, what="HeadActivations", version=1, version_key="format")
        array = np.load(directory / _ACTS_FILE, mmap_mode="r" if mmap else None)
        if list(array.shape) != meta["shape"]:
            raise ValueError(f"{directory}: acts shape {array.shape} does not match its metadata {meta['shape']}")
        acts = array if mmap else torch.from_numpy(array)
        return cls(acts=acts, labels=tuple(meta["labels"]), groups=tuple(meta["groups"]), metadata=meta["metadata"])


def _position_weights(layouts: Sequence[Any], position: Position, seq_len: int) -> Float[Tensor, "batch pos"]:
    """``[batch, seq_len]`` averaging weights over the positions that are read for each sample.

    ``answer_mean`` reads the positions that *predict* the gold answer's tokens under teacher
    forcing: the query position (predicting the first answer token) and every answer token but
    the last -- the states the CognitiveMirrors collector records while generating the answer.
    A one-token answer therefore reads exactly the query position.
    """
    weights = torch.zeros(len(layouts), seq_len)
    for i, layout in enumerate(layouts):
        q = int(layout.query_position)
        if position == "last_prompt":
            weights[i, q] = 1.0
            continue
        answer = getattr(layout, "answer_positions", None)
        if answer is None or len(answer) == 0:
            raise ValueError(
                f"sample {i}: position='answer_mean' needs layout.answer_positions: the gold answer "
                "tokens appended by model.prepare_samples(samples, with_answers=True) (is the answer empty?)"
            )
        answer = torch.as_tensor(answer, dtype=torch.long).flatten()
        expected = torch.arange(q + 1, q + 1 + answer.numel())
        if not torch.equal(answer, expected):
            raise ValueError(f"sample {i}: answer_positions {answer.tolist()} do not follow query_position {q}")
        read = torch.cat([torch.tensor([q]), answer[:-1]])
        weights[i, read] = 1.0 / read.numel()
    return weights


def _store_z(z: Float[Tensor, "batch pos head d_head"], *, hook: Any, layer: int, weights: Tensor, out: Tensor) -> None:
    out[:, layer] = einops.einsum(weights.to(z.device), z.float(), "b p, b p h d -> b h d").to(out.device)


def _as_samples(items_or_samples: Sequence[Any], context: str) -> list[Sample]:
    from vh_lens.data.cogvision import CogItem, subquestion_samples

    if all(isinstance(x, Sample) for x in items_or_samples):
        return list(items_or_samples)
    if all(isinstance(x, CogItem) for x in items_or_samples):
        return subquestion_samples(items_or_samples, context=context)  # type: ignore[arg-type]
    raise ValueError("items_or_samples must be all Sample or all CogItem objects")


class HeadActivationsReducer(Reducer):
    """The engine's reducer for :func:`collect_head_activations`: each head's ``hook_z`` at one position.

    Writes batch ``item`` into rows ``item.indices`` of ``store`` (a tensor, or a numpy array /
    memmap), through one ``hook_z`` hook per layer that averages the read positions
    (:func:`_position_weights`) in float32. :meth:`merge` copies the other reducer's rows in.

    Args:
        store: ``[n_samples, n_layers, n_heads, d_head]`` float16/float32, written in place.
        position: ``"last_prompt"`` or ``"answer_mean"``.
    """

    def __init__(self, store: Tensor | np.ndarray, position: Position) -> None:
        self.store, self.position = store, position
        self.filled: list[tuple[int, int]] = []
        self._out: Tensor | None = None

    def hooks(self, item: PreparedBatch) -> list[Any]:
        layouts = item.layouts
        weights = _position_weights(layouts, self.position, int(layouts[0].seq_len))
        n_layers, n_heads, d_head = self.store.shape[1:]
        self._out = out = torch.empty(len(item), n_layers, n_heads, d_head)
        return [
            (act_name("z", layer), partial(_store_z, layer=layer, weights=weights, out=out))
            for layer in range(n_layers)
        ]

    def update(self, output: Any, item: PreparedBatch) -> None:
        self._write(item.start, self._out)
        self._out = None

    def _write(self, start: int, rows: Tensor) -> None:
        stop = start + len(rows)
        if isinstance(self.store, Tensor):
            self.store[start:stop] = rows.to(self.store.dtype)
        else:
            self.store[start:stop] = rows.numpy().astype(self.store.dtype)
        self.filled.append((start, stop))

    def result(self) -> Tensor | np.ndarray:
        return self.store

    def _rows(self, start: int, stop: int) -> Tensor:
        chunk = self.store[start:stop]
        return chunk.float() if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))

    def state_dict(self) -> dict[str, Any]:
        """``{"filled": [[start, stop], ...], "rows": [n_filled, layer, head, d_head] float32}``."""
        rows = [self._rows(a, b) for a, b in self.filled]
        empty = torch.empty(0, *self.store.shape[1:])
        return {"filled": [list(r) for r in self.filled], "rows": torch.cat(rows) if rows else empty}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.filled = []
        offset = 0
        for start, stop in state["filled"]:
            self._write(int(start), state["rows"][offset : offset + stop - start])
            offset += stop - start

    def merge(self, other: Reducer) -> None:
        if not isinstance(other, HeadActivationsReducer) or tuple(other.store.shape) != tuple(self.store.shape):
            raise ValueError("can only merge a HeadActivationsReducer of the same shape")
        for start, stop in other.filled:
            if other.store is self.store:
                self.filled.append((start, stop))
            else:
                self._write(start, other._rows(start, stop))


def _answer_preparer(model: Any, chunk: Sequence[Any], start: int) -> PreparedBatch:
    """Batches with each sample's gold answer tokens appended (for ``position="answer_mean"``)."""
    return PreparedBatch(start, tuple(chunk), model.prepare_samples(list(chunk), with_answers=True))


def collect_head_activations(
    model: Any,
    items_or_samples: Sequence[Any],
    position: Position | None = None,
    batch_size: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    dtype: torch.dtype | str | None = None,
    context: Literal["chain", "none"] | None = None,
    *,
    config: CollectionConfig | Mapping[str, Any] | None = None,
) -> HeadActivations:
    """Record every head's ``hook_z`` at one position per sample.

    The samples are prepared batch by batch (:func:`vh_lens.engine.iter_batches`) and run by
    :func:`vh_lens.engine.run` with a :class:`HeadActivationsReducer`.

    Args:
        model: A vh_lens model wrapper: ``model.cfg`` (``n_layers``, ``n_heads``, ``d_head``),
            ``model.prepare_samples(samples)`` returning a batch with ``.layout`` (one
            :class:`~vh_lens.core.layout.TokenLayout` per sample), and
            ``model.run_with_hooks(batch, fwd_hooks=...)``. For ``"answer_mean"``,
            ``model.prepare_samples(samples, with_answers=True)`` must append each sample's
            gold answer tokens right after the prompt and give each layout
            ``answer_positions`` (``[n_answer_tokens]`` positions, right after
            ``query_position``, which stays the last prompt position).
        items_or_samples: :class:`~vh_lens.data.Sample` objects (``metadata["function"]`` is
            the label, ``metadata["group"]`` the group, else the sample's index), or
            :class:`~vh_lens.data.cogvision.CogItem` objects (turned into one sample per
            subquestion with :func:`~vh_lens.data.cogvision.subquestion_samples`).
        position: ``"last_prompt"`` (default): the query position (last prompt token);
            ``"answer_mean"``: the mean over the positions that predict the gold answer's
            tokens (teacher forcing): the query position and all answer tokens but the last.
        batch_size: Samples per forward pass (default 8).
        out_dir: If given, stream the activations to ``out_dir/acts.npy`` (a float16 memmap;
            memory stays at one batch) and return them memory-mapped.
        progress: Show a progress bar.
        dtype: Storage dtype (``torch.float16``, the default, or ``torch.float32``, or their
            names; the hook reads in float32).
        context: For CogItems, the subquestion context (see ``subquestion_samples``; default
            ``"chain"``).
        config: The settings as a :class:`~vh_lens.functional_heads.config.CollectionConfig`
            (or its dict); the arguments above override its fields (``None``: keep the config's).

    Returns:
        ``acts [n_samples, n_layers, n_heads, d_head]`` with labels and groups;
        ``metadata["config"]`` holds the settings.

    Example:
        >>> acts = collect_head_activations(model, items, out_dir="runs/cogqa_acts")  # doctest: +SKIP
    """
    if isinstance(dtype, torch.dtype):
        dtype = {torch.float16: "float16", torch.float32: "float32"}.get(dtype, str(dtype))
    given = {"position": position, "batch_size": batch_size, "dtype": dtype, "context": context}
    conf = resolve_config(CollectionConfig, config, {k: v for k, v in given.items() if v is not None})
    samples = _as_samples(items_or_samples, conf.context)
    if not samples:
        raise ValueError("no samples to collect")
    shape = (len(samples), model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    labels = tuple(str(s.metadata.get("function") or "") for s in samples)
    groups = tuple(s.metadata.get("group", i) for i, s in enumerate(samples))
    metadata = {"position": conf.position, "hook": "attn.hook_z", "n_samples": len(samples), "config": conf.to_dict(),
                "question_format": getattr(model, "question_format", None)}  # fmt: skip

    from vh_lens.distributed import current_world, world_metadata

    world = current_world()  # under torchrun each rank runs its shard; the rows are joined on every rank
    metadata |= world_metadata(world, len(samples))

    def fill(store: Tensor | np.ndarray) -> Tensor | np.ndarray:
        preparer = _answer_preparer if conf.position == "answer_mean" else None
        batches = iter_batches(model, samples, batch_size=conf.batch_size, preparer=preparer, world=world)
        n_batches = -(-len(world.shard(len(samples))) // conf.batch_size)
        reducer = engine_run(model, batches, HeadActivationsReducer(store, conf.position),  # type: ignore[arg-type]
                             progress=progress and world.rank == 0, desc="head activations", total=n_batches)  # fmt: skip
        return reducer.result()

    if out_dir is None or world.size > 1:
        acts = fill(torch.empty(shape, dtype=getattr(torch, conf.dtype)))
        result = HeadActivations(acts=acts, labels=labels, groups=groups, metadata=metadata)
        if out_dir is not None and world.rank == 0:  # several ranks: rank 0 writes the joined rows
            result.save(out_dir)
        return result

    out_dir = Path(out_dir)
    # streamed into a temporary file beside acts.npy, renamed over it once complete
    with atomic_path(out_dir / _ACTS_FILE) as partial_path:
        store = np.lib.format.open_memmap(partial_path, mode="w+", dtype=np.dtype(conf.dtype), shape=shape)
        try:
            fill(store)
            store.flush()
        finally:
            del store  # drop the memmap before its file is renamed (or removed on error)
    result = HeadActivations(
        acts=np.load(out_dir / _ACTS_FILE, mmap_mode="r"), labels=labels, groups=groups, metadata=metadata
    )
    result._write_meta(out_dir)
    return result
