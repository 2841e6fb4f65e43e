"""LlavaBatch: a left-padded batch of prepared samples, and how unpadded samples are collated into one.

:meth:`vh_lens.LlavaLens.prepare` encodes each sample into a :class:`SampleSequence` (ids, embeddings with
the image features spliced in, where the image tokens are) and :func:`collate` pads them on the left into a
:class:`LlavaBatch` with one :class:`~vh_lens.core.layout.TokenLayout` per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vh_lens.core.image_tokens import ImageTokens
from vh_lens.core.layout import ImageGrid, ImageLayout, TokenLayout


@dataclass(frozen=True, eq=False)
class SampleSequence:
    """One sample, unpadded: ids, spliced embeddings and where the image tokens are."""

    input_ids: Int[Tensor, " n"]
    embeds: Float[Tensor, "n d_model"]
    n_prompt: int
    image_positions: Int[Tensor, " n_img"]
    images: tuple[ImageTokens, ...]
    pixel_values: Tensor | None
    prompt: str


@dataclass(frozen=True, eq=False)
class LlavaBatch:
    """A left-padded batch ready for the HookedTransformer.

    Attributes:
        input_ids: ``[batch, pos]`` token ids, image placeholders expanded, left padded.
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding.
        embeds: ``[batch, pos, d_model]`` token embeddings with the image features spliced in
            at the image-token positions (the residual stream before layer 0).
        layout: one :class:`~vh_lens.core.layout.TokenLayout` per sample.
        pixel_values: per sample, the processor's pixel values of all its images (``None`` for
            text only).
        prompts: the prompt text of each sample (chat template applied).
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    embeds: Float[Tensor, "batch pos d_model"]
    layout: list[TokenLayout]
    pixel_values: list[Tensor | None]
    prompts: list[str]
    _seqs: tuple[SampleSequence, ...] = field(repr=False, default=())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def shape(self) -> torch.Size:
        """``input_ids.shape``, ``(batch, pos)``: what TransformerLens' patching reads of its "tokens"."""
        return self.input_ids.shape

    def size(self, dim: int | None = None) -> torch.Size | int:
        """``input_ids.size(dim)``."""
        return self.input_ids.size() if dim is None else self.input_ids.size(dim)

    @property
    def query_positions(self) -> Int[Tensor, " batch"]:
        """``[batch]`` the answer query (last prompt) position of each sample."""
        return torch.tensor([lay.query_position for lay in self.layout], dtype=torch.long)

    def with_embeds(self, embeds: Float[Tensor, "batch pos d_model"]) -> LlavaBatch:
        """The same batch with other spliced embeddings (e.g. noised image features); ids and layout kept."""
        if embeds.shape != self.embeds.shape:
            raise ValueError(
                f"with_embeds: got shape {tuple(embeds.shape)}, the batch's embeddings are {tuple(self.embeds.shape)}"
            )
        seqs = tuple(
            replace(s, embeds=embeds[i, lay.n_pad :].to(s.embeds))
            for i, (s, lay) in enumerate(zip(self._seqs, self.layout))
        )
        return replace(self, embeds=embeds, _seqs=seqs)

    def to(self, device: torch.device | str) -> LlavaBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            embeds=self.embeds.to(device),
        )


def collate(seqs: Sequence[SampleSequence], pad_id: int, pad_embed: Tensor) -> LlavaBatch:
    """Left-pad ``seqs`` with ``pad_id`` (embedded as ``pad_embed``) into a :class:`LlavaBatch` with its layouts."""
    length = max(int(s.input_ids.shape[0]) for s in seqs)
    d_model = seqs[0].embeds.shape[-1]
    b = len(seqs)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    embeds = pad_embed.to(seqs[0].embeds).expand(b, length, d_model).clone()
    layouts = []
    for i, s in enumerate(seqs):
        n = int(s.input_ids.shape[0])
        pad = length - n
        ids[i, pad:] = s.input_ids
        mask[i, pad:] = 1
        embeds[i, pad:] = s.embeds
        is_image = torch.zeros(n, dtype=torch.bool)
        is_image[s.image_positions] = True
        text = (~is_image).nonzero().flatten()
        images = tuple(
            ImageLayout(
                index=k,
                positions=im.positions + pad,
                newline_positions=im.newline_positions + pad,
                grids=tuple(ImageGrid(name, pos + pad, boxes) for name, pos, boxes in im.grids),
                image_size=im.image_size,
            )
            for k, im in enumerate(s.images)
        )
        empty = torch.zeros(0, dtype=torch.long)
        layouts.append(
            TokenLayout(
                seq_len=length,
                n_pad=pad,
                image_positions=s.image_positions + pad,
                newline_positions=torch.cat([im.newline_positions for im in images]) if images else empty,
                text_positions=text[text < s.n_prompt] + pad,
                query_position=pad + s.n_prompt - 1,
                grids=tuple(g for im in images for g in im.grids),
                image_size=images[0].image_size if len(images) == 1 else None,
                answer_positions=torch.arange(s.n_prompt, n) + pad,
                images=images,
            )
        )
    return LlavaBatch(
        input_ids=ids,
        attention_mask=mask,
        embeds=embeds,
        layout=layouts,
        pixel_values=[s.pixel_values for s in seqs],
        prompts=[s.prompt for s in seqs],
        _seqs=tuple(seqs),
    )
