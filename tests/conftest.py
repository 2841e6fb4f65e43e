"""Shared fixtures: tiny random LLaVA models from one factory, images made here."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PIP_NO_INDEX", "1")

import pytest
import torch
from PIL import Image

# One thread: tiny models gain nothing from more, and on a busy 2-core machine two threads
# make each forward pass many times slower.
torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def tiny_pair(kind: str = "llava", backbone: str = "llama", n_kv_heads: int | None = None, **kw):
    """(Hugging Face model, processor), cached for the session."""
    from vh_lens.testing import tiny_llava

    return tiny_llava(kind, backbone, n_kv_heads=n_kv_heads, **kw)


@functools.lru_cache(maxsize=None)
def tiny_lens(kind: str = "llava", backbone: str = "llama", n_kv_heads: int | None = None, processed: bool = True):
    import vh_lens

    model, processor = tiny_pair(kind, backbone, n_kv_heads)
    loader = vh_lens.load_llava if processed else vh_lens.core.load_llava_no_processing
    return loader(model, processor=processor)


@functools.lru_cache(maxsize=None)
def load_script(name: str):
    """``scripts/{name}.py`` imported as a module (the scripts are not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny LLaVA (Llama backbone) saved as a Hugging Face checkpoint folder, with its processor."""
    hf, processor = tiny_pair("llava", "llama")
    folder = tmp_path_factory.mktemp("tiny_checkpoint") / "model"
    hf.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def striped_image(size=(70, 40), seed=0) -> Image.Image:
    """A deterministic RGB image with structure (not flat), so features differ by patch."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


@pytest.fixture
def images():
    return [striped_image((70, 40), 0), striped_image((50, 90), 1), striped_image((64, 64), 2)]


@dataclass
class FakeBatch:
    """A batch of plain token ids and layouts, for tests of functions that take a LlavaBatch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    layout: list

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])
