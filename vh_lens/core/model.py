"""LlavaLens: a LLaVA model whose language backbone is a TransformerLens HookedTransformer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformers import PretrainedConfig, ProcessorMixin

from vh_lens.core import fast_attention as fast_attention_module
from vh_lens.core import image_tokens, tl_native
from vh_lens.core.batch import LlavaBatch, SampleSequence, collate
from vh_lens.core.image_tokens import ImageTokens
from vh_lens.core.prompts import build_prompt, known_format
from vh_lens.data.sample import ImageSource, Sample, load_rgb

HookList = Sequence[tuple[str | Callable[[str], bool], Callable]]
ImageInput = ImageSource  # what vh_lens.data.sample.load_rgb opens


class LlavaLens(nn.Module):
    """A LLaVA model: Hugging Face vision tower and projector, TransformerLens language backbone.

    Made by :func:`vh_lens.load_llava`. Every forward runs the HookedTransformer from layer 0 on
    embeddings into which the image features were spliced exactly as Hugging Face does, so all
    of TransformerLens' hook points (``blocks.{l}.attn.hook_pattern``, ``hook_z``,
    ``hook_resid_post``, ...) see the multimodal sequence.

    Attributes:
        lm: the :class:`transformer_lens.HookedTransformer` of the language backbone.
        vision: the Hugging Face LLaVA model part holding the vision tower and projector (it
            provides ``get_image_features``).
        processor: the Hugging Face processor (tokenizer and image processor).
        config: the LLaVA Hugging Face config.
    """

    def __init__(
        self,
        lm: HookedTransformer,
        vision: nn.Module,
        processor: ProcessorMixin,
        config: PretrainedConfig,
        *,
        fast_attention: bool = True,
    ):
        super().__init__()
        self.lm = lm
        fast_attention_module.install(lm, enabled=fast_attention)
        self._fast_attention = bool(fast_attention)
        self.vision = vision
        self.processor = processor
        self.config = config
        self.kind = config.model_type
        self.image_token_id = int(config.image_token_id)
        tok = processor.tokenizer
        self.image_token = getattr(processor, "image_token", None) or tok.convert_ids_to_tokens(self.image_token_id)
        pad = tok.pad_token_id if tok.pad_token_id is not None else getattr(config.text_config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        self.prompt_format = known_format(config.text_config.model_type, config.text_config.vocab_size)
        from vh_lens.evaluation.question_formats import recognise_question_format

        self._question_format = recognise_question_format(config, processor)
        self._n_lead = image_tokens.leading_image_tokens(config)  # refuses towers / strategies it cannot lay out
        lm.tokenizer = None  # tokenisation is the processor's; TransformerLens never re-tokenises
        tl_native.Splicer(self.image_token_id).install(lm)  # the image enters through hook_embed

    # ------------------------------------------------------------------ properties

    @property
    def fast_attention(self) -> bool:
        """Whether layers whose pattern no hook reads use fused attention (:mod:`vh_lens.core.fast_attention`)."""
        return self._fast_attention

    @fast_attention.setter
    def fast_attention(self, enabled: bool) -> None:
        fast_attention_module.set_enabled(self.lm, bool(enabled))
        self._fast_attention = bool(enabled)

    @property
    def cfg(self):
        """The HookedTransformer config (``n_layers``, ``n_heads``, ``d_head``, ...)."""
        return self.lm.cfg

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.lm.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.W_E.dtype

    @property
    def question_format(self) -> str:
        """How this checkpoint reads a sample's question (:mod:`vh_lens.evaluation.question_formats`).

        Recognised when the model is loaded (saved in the config, or the bundled toy's); set it
        to change what :meth:`prepare_samples` and the experiments use by default.
        """
        return self._question_format

    @question_format.setter
    def question_format(self, name: str) -> None:
        from vh_lens.evaluation.question_formats import question_formatter

        question_formatter(name)  # refuses an unknown name
        self._question_format = name

    def format_sample(self, sample: Sample) -> str:
        """The user turn of ``sample`` in the model's :attr:`question_format` (no chat template)."""
        from vh_lens.evaluation.question_formats import question_formatter

        return question_formatter(self._question_format)(sample)

    # ------------------------------------------------------------------ preparing inputs

    def format_question(self, question: str, *, has_image: bool) -> str:
        """Wrap a question in the checkpoint's chat template (or its known LLaVA format)."""
        return build_prompt(question, has_image=has_image, chat_template_owner=self.processor, fmt=self.prompt_format)

    @torch.no_grad()
    def prepare(
        self,
        images: Sequence[ImageInput | Sequence[ImageInput] | None] | None = None,
        questions: Sequence[str] | None = None,
        prompts: Sequence[str] | None = None,
        answers: Sequence[str | None] | None = None,
    ) -> LlavaBatch:
        """Tokenise, process images, splice image features, pad on the left.

        Args:
            images: per sample, one image (PIL image or path), a list of images (several
                images in one prompt, in placeholder order), or ``None`` / ``[]`` for text only;
                or ``None`` for all samples. RGBA, palette and grayscale images are converted.
            questions: questions, wrapped in the chat template with one image placeholder per
                image (before the question).
            prompts: raw prompt texts holding one image placeholder (``"<image>"``) per image
                of the sample, in order. Give ``questions`` or ``prompts``, not both.
            answers: optional text appended after each prompt (teacher forcing); its positions
                are ``layout.answer_positions`` and the query position stays the last prompt one.

        Returns:
            A :class:`LlavaBatch`; ``batch.layout[i].images`` holds one
            :class:`~vh_lens.core.layout.ImageLayout` per image of sample ``i``.

        Raises:
            ValueError: mismatched lengths, a string where a list of texts belongs, or a
                prompt whose image placeholders do not match its images.

        Example:
            >>> batch = model.prepare(images=[img], questions=["How many dogs are there?"])  # doctest: +SKIP
            >>> batch = model.prepare(images=[[img_a, img_b]],                                # doctest: +SKIP
            ...                       prompts=["USER: <image> <image> Which is larger? ASSISTANT:"])
        """
        if (questions is None) == (prompts is None):
            raise ValueError("prepare: give either questions= or prompts= (exactly one)")
        name = "questions" if questions is not None else "prompts"
        given = questions if questions is not None else prompts
        if isinstance(given, str):
            raise ValueError(f"prepare: {name} must be a list of strings, got one string (wrap it: [{name[:-1]}])")
        texts = list(given)  # type: ignore[arg-type]
        if not texts:
            raise ValueError("empty batch: no questions or prompts given")
        if any(not isinstance(t, str) for t in texts):
            raise ValueError(f"prepare: every item of {name} must be a string")
        if images is None:
            images = [None] * len(texts)
        if isinstance(images, (str, Path, Image.Image)):
            raise ValueError("prepare: images must be a list with one entry per prompt, got a single image")
        images = list(images)
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images for {len(texts)} prompts: give one image (or None) per prompt")
        if answers is not None:
            if isinstance(answers, str):
                raise ValueError("prepare: answers must be a list of strings (or None), got one string")
            if len(answers) != len(texts):
                raise ValueError(f"got {len(answers)} answers for {len(texts)} prompts")
        seqs = []
        for i, (image, text) in enumerate(zip(images, texts)):
            imgs = [load_rgb(x) for x in self._image_list(i, image)]
            if questions is not None:
                prompt = self.format_question(text, has_image=bool(imgs))
                if len(imgs) > 1:  # one placeholder per image, before the question
                    prompt = prompt.replace(self.image_token, " ".join([self.image_token] * len(imgs)), 1)
            else:
                prompt = text
            self._check_placeholders(i, prompt, len(imgs))
            answer = answers[i] if answers is not None else None
            seqs.append(self._encode(prompt, imgs, answer))
        return self._collate(seqs)

    @staticmethod
    def _image_list(i: int, image: Any) -> list:
        if image is None:
            return []
        if isinstance(image, (list, tuple)):
            if any(x is None for x in image):
                raise ValueError(f"prompt {i}: its image list holds None")
            return list(image)
        return [image]

    def prepare_samples(
        self,
        samples: Sequence[Sample],
        *,
        with_answers: bool = False,
        format_question: Callable[[Sample], str] | None = None,
    ) -> LlavaBatch:
        """:meth:`prepare` for :class:`~vh_lens.data.Sample` objects.

        Args:
            samples: the samples; their question is formatted by ``format_question`` (default:
                the model's own, :meth:`format_sample`; ``"llava"``:
                :func:`vh_lens.evaluation.answers.format_question`, which lists multiple-choice options).
            with_answers: append each sample's gold answer (teacher forcing).
        """
        if format_question is None:
            format_question = self.format_sample
        samples = list(samples)
        return self.prepare(
            images=[s.load_image() for s in samples],
            questions=[format_question(s) for s in samples],
            answers=[s.answer for s in samples] if with_answers else None,
        )

    def append_tokens(self, batch: LlavaBatch, tokens: Sequence[Sequence[int]] | Tensor) -> LlavaBatch:
        """A new batch with ``tokens[i]`` appended to sample ``i`` (re-padded on the left).

        The appended positions are the layout's ``answer_positions``; ``query_position`` stays
        the last prompt position.
        """
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist() if tokens.ndim == 2 else [[int(t)] for t in tokens.tolist()]
        if len(tokens) != len(batch):
            raise ValueError(f"append_tokens: got {len(tokens)} token lists for a batch of {len(batch)}")
        seqs = []
        for s, extra in zip(batch._seqs, tokens):
            extra_ids = torch.as_tensor(list(extra), dtype=torch.long)
            extra_emb = self.lm.embed(extra_ids.to(self.device)[None])[0].to(s.embeds)
            seqs.append(
                replace(
                    s,
                    input_ids=torch.cat([s.input_ids, extra_ids]),
                    embeds=torch.cat([s.embeds, extra_emb]),
                )
            )
        return self._collate(seqs)

    def _check_placeholders(self, i: int, prompt: str, n_images: int) -> None:
        count = prompt.count(self.image_token)
        if count == n_images:
            return
        if n_images == 0:
            raise ValueError(
                f"prompt {i} holds {count} image placeholder(s) {self.image_token!r} but no image was given"
            )
        if count == 0:
            raise ValueError(
                f"prompt {i} has {n_images} image(s) but no image placeholder {self.image_token!r}: {prompt!r}"
            )
        given = "1 image was" if n_images == 1 else f"{n_images} images were"
        raise ValueError(f"prompt {i} holds {count} image placeholders {self.image_token!r} but {given} given")

    def _answer_ids(self, prompt: str, answer: str) -> list[int]:
        """The answer's tokens as they follow the prompt (a space between, unless the prompt ends in one)."""
        tok = self.tokenizer
        base = tok(prompt, add_special_tokens=False).input_ids
        sep = "" if prompt[-1:].isspace() else " "
        full = tok(prompt + sep + answer, add_special_tokens=False).input_ids
        if full[: len(base)] == base and len(full) > len(base):
            return full[len(base) :]
        return tok(answer, add_special_tokens=False).input_ids

    def _encode(self, prompt: str, images: Sequence[Image.Image], answer: str | None) -> SampleSequence:
        if not images:
            enc = self.processor.tokenizer(prompt, return_tensors="pt")
            pixel_values = None
        else:
            # OneVision reads a nested list as "these images share one prompt" (no tiling then).
            arg = [list(images)] if self.kind == "llava_onevision" else list(images)
            enc = self.processor(images=arg, text=[prompt], return_tensors="pt")
            pixel_values = enc["pixel_values"]
        ids = enc["input_ids"][0]
        n_prompt = int(ids.shape[0])
        if answer is not None:
            ids = torch.cat([ids, torch.tensor(self._answer_ids(prompt, answer), dtype=torch.long)])
        embeds = self.lm.embed(ids.to(self.device)[None])[0]
        image_positions = (ids == self.image_token_id).nonzero().flatten()
        layouts: tuple[ImageTokens, ...] = ()
        if images:
            sizes = [im.size for im in images]
            ip = self.processor.image_processor
            layouts = image_tokens.split_image_tokens(self.config, ip, sizes, image_positions, self._n_lead)
            features = self._image_features(enc)
            mask = self.vision.get_placeholder_mask(
                ids[None].to(self.device), inputs_embeds=embeds[None], image_features=features
            )
            mask = (mask[0] if isinstance(mask, tuple) else mask)[0]  # OneVision also returns a video mask
            embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
        return SampleSequence(
            input_ids=ids.cpu(),
            embeds=embeds,
            n_prompt=n_prompt,
            image_positions=image_positions,
            images=layouts,
            pixel_values=pixel_values,
            prompt=prompt,
        )

    def _image_features(self, enc: Any) -> Tensor:
        projector = next(self.vision.multi_modal_projector.parameters())
        pixel_values = enc["pixel_values"].to(projector.device, projector.dtype)
        if self.kind == "llava_next":
            out = self.vision.get_image_features(pixel_values=pixel_values, image_sizes=enc["image_sizes"])
        elif self.kind == "llava_onevision":
            out = self.vision.get_image_features(
                pixel_values=pixel_values, image_sizes=enc["image_sizes"], batch_num_images=enc["batch_num_images"]
            )
        else:
            out = self.vision.get_image_features(pixel_values=pixel_values)
        feats = out.pooler_output
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=0)
        return feats.reshape(-1, feats.shape[-1]).to(self.device)

    def _collate(self, seqs: Sequence[SampleSequence]) -> LlavaBatch:
        pad_embed = self.lm.embed(torch.tensor([[self.pad_token_id]], device=self.device))[0, 0]
        return collate(seqs, self.pad_token_id, pad_embed)

    # ------------------------------------------------------------------ running

    def _inputs(self, batch: LlavaBatch) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """``(ids, spliced embeddings, keyword arguments)`` for a run of ``lm`` on the batch."""
        if not isinstance(batch, LlavaBatch):
            raise TypeError(f"expected a LlavaBatch from model.prepare(...), got {type(batch).__name__}")
        if batch.input_ids.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"the batch holds {batch.input_ids.shape[1]} positions, more than the model's context of "
                f"{self.cfg.n_ctx}: load with vh_lens.load_llava(..., n_ctx=...) for longer prompts"
            )
        mask = batch.attention_mask.to(self.device)
        # Without padding the mask changes nothing: leave it out, and TransformerLens takes its
        # faster path (plain causal mask, positions 0..n-1).
        return (
            batch.input_ids.to(self.device),
            batch.embeds.to(self.device),
            {
                "attention_mask": None if bool(mask.all()) else mask,
            },
        )

    def _splice(self, ids: Tensor, embeds: Tensor):
        """Context: the next ``lm`` run on ``ids`` gets ``embeds`` out of ``lm.embed`` (:mod:`vh_lens.core.tl_native`)."""
        return self.lm._vh_splicer.splice(ids, embeds)

    def forward(self, batch: LlavaBatch, **kwargs: Any) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits ``[batch, pos, d_vocab]``; extra keyword arguments go to the HookedTransformer.

        ``lm`` runs on the batch's ids; the spliced embeddings (image features at the image
        positions) are the output of ``hook_embed``.
        """
        ids, embeds, kw = self._inputs(batch)
        with self._splice(ids, embeds):
            return self.lm(ids, **kw, **kwargs)

    def run_with_hooks(self, batch: LlavaBatch, fwd_hooks: HookList = (), bwd_hooks: HookList = (), **kwargs: Any):
        """``HookedTransformer.run_with_hooks`` on the spliced sequence; hooks are removed afterwards, also on error."""
        ids, embeds, kw = self._inputs(batch)
        with self._splice(ids, embeds):
            return self.lm.run_with_hooks(ids, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), **kw, **kwargs)

    def run_with_cache(self, batch: LlavaBatch, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """``HookedTransformer.run_with_cache`` on the spliced sequence (use ``names_filter`` to keep it small).

        The cache's ``hook_embed`` holds the spliced embeddings, so its decompositions
        (``decompose_resid``, ``get_full_resid_decomposition``, ``logit_attrs``) include the image.
        """
        ids, embeds, kw = self._inputs(batch)
        with self._splice(ids, embeds):
            return self.lm.run_with_cache(ids, **kw, **kwargs)

    def reset_hooks(self, *args: Any, **kwargs: Any) -> None:
        """``HookedTransformer.reset_hooks`` of ``lm``."""
        self.lm.reset_hooks(*args, **kwargs)

    def to_tokens(self, x: LlavaBatch | str | Sequence[str]) -> Int[Tensor, "batch pos"]:
        """Token ids of a batch (image placeholders expanded) or of image-free text (see :func:`vh_lens.core.tl_native.to_tokens`)."""
        return tl_native.to_tokens(self, x)

    def to_str_tokens(self, batch: LlavaBatch) -> list[list[str]]:
        """Per sample, a string per position; image tokens read ``<img:base r3c4>`` (:func:`vh_lens.core.tl_native.str_tokens`)."""
        return tl_native.str_tokens(self, batch)

    def test_prompt(self, image: Any, question: str, answer: str, *, top_k: int = 5) -> tl_native.PromptTest:
        """Rank and probability of each answer token after the image and question (:func:`vh_lens.core.tl_native.test_prompt`)."""
        return tl_native.test_prompt(self, image, question, answer, top_k=top_k)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: HookList = (), bwd_hooks: HookList = (), **kwargs: Any) -> Iterator[LlavaLens]:
        """Context manager: the hooks are on for every run inside, and removed on exit (also on error)."""
        with self.lm.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), **kwargs):
            yield self

    @torch.no_grad()
    def generate_tokens(
        self, batch: LlavaBatch, max_new_tokens: int = 8, *, stop_at_eos: bool = True
    ) -> Int[Tensor, "batch new"]:
        """Greedy decoding with a key-value cache; ``[batch, max_new_tokens]`` new token ids.

        After a sample emits EOS its remaining tokens are the pad id.

        Raises:
            ValueError: ``max_new_tokens`` below 1, or the prompt plus the new tokens would run
                past the model's context (checked before anything runs).
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}")
        needed = int(batch.input_ids.shape[1]) + max_new_tokens - 1  # the last new token is not fed back
        if batch.input_ids.shape[1] <= self.cfg.n_ctx < needed:  # a too long prompt: _inputs says so
            raise ValueError(
                f"generating {max_new_tokens} tokens after {batch.input_ids.shape[1]} positions needs a context of "
                f"{needed}, more than the model's {self.cfg.n_ctx}: ask for at most "
                f"{self.cfg.n_ctx - batch.input_ids.shape[1] + 1} new tokens or load with vh_lens.load_llava(..., n_ctx=...)"
            )
        ids, embeds, _ = self._inputs(batch)
        b = len(batch)
        cache = TransformerLensKeyValueCache.init_cache(self.lm.cfg, self.device, b)
        # lm appends each step's attention mask to the cache itself (tokens in, not embeddings)
        with self._splice(ids, embeds):
            logits = self.lm(ids, attention_mask=batch.attention_mask.to(self.device), past_kv_cache=cache)
        eos = self.tokenizer.eos_token_id
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        out = []
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_token_id), nxt)
            out.append(nxt)
            if stop_at_eos and eos is not None:
                done |= nxt == eos
                if bool(done.all()):
                    break
            if step == max_new_tokens - 1:
                break
            step_ids = nxt[:, None]
            ones = torch.ones((b, 1), dtype=batch.attention_mask.dtype, device=self.device)
            # a generated token is embedded as text, as Hugging Face does after the prompt
            with self._splice(step_ids, self.lm.embed(step_ids)):
                logits = self.lm(step_ids, attention_mask=ones, past_kv_cache=cache)
        return torch.stack(out, dim=1)

    def generate(self, batch: LlavaBatch, max_new_tokens: int = 8, **kwargs: Any) -> list[str]:
        """Greedy generation; the decoded new text of each sample (special tokens skipped)."""
        tokens = self.generate_tokens(batch, max_new_tokens, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)]
