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

# --- jaxtyping shape checks (issue 14) ---------------------------------------------------------
# Every function and dataclass of vh_lens is decorated with @jaxtyped(typechecker=beartype) as it
# is imported, so the shapes and dtypes its annotations name (and the other annotations) are
# checked at every call in the tests. The hook must be in place before vh_lens is imported.
# VH_LENS_TYPECHECK=0 runs the suite without it. Subprocesses (CLI runs, notebooks) are unchecked.
UNCHECKED: dict[str, str] = {  # module -> why it is left out
    "vh_lens.core.onevision": "Hugging Face's ProcessorMixin.from_pretrained reads the processor's __init__ "
    "parameters from __init__.__code__.co_varnames; the checking wrapper's (*args, **kwargs) hides them and "
    "num_image_tokens is dropped",
}


def _install_shape_checks() -> None:
    import sys

    from jaxtyping import install_import_hook

    early = sorted(m for m in sys.modules if m == "vh_lens" or m.startswith("vh_lens."))
    if early:
        raise RuntimeError(f"vh_lens was imported before the jaxtyping hook (by a plugin?): {early[:3]}")
    root = Path(__file__).resolve().parents[1]
    names = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in (root / "vh_lens").rglob("*.py")
    )
    # a package name covers its whole subtree, so a package holding an unchecked module is left
    # out as a name (its modules are then listed one by one)
    covers = lambda pkg, mod: mod == pkg or mod.startswith(pkg + ".")  # noqa: E731
    checked = [n for n in names if not any(covers(n, u) for u in UNCHECKED)]
    # the PEP 484 numeric tower: an int is a valid `float` (and an int or float a valid `complex`),
    # as PEP 484 and every static checker have it; beartype's default would refuse an int
    install_import_hook(checked, "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")


if os.environ.get("VH_LENS_TYPECHECK", "1") != "0":
    _install_shape_checks()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "unchecked_arguments: the test passes values its annotations forbid (a bad Literal, a wrong shape, a "
        "tensor as an image) to check the function's own error, so the jaxtyping checks are off for it",
    )


@pytest.fixture(autouse=True)
def _arguments_checked_unless_marked(request):
    if request.node.get_closest_marker("unchecked_arguments") is None:
        yield
        return
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


# One thread: tiny models gain nothing from more, and on a busy 2-core machine two threads
# make each forward pass many times slower.
torch.set_num_threads(1)


@functools.cache
def tiny_pair(kind: str = "llava", backbone: str = "llama", n_kv_heads: int | None = None, **kw):
    """(Hugging Face model, processor), cached for the session."""
    from vh_lens.testing import tiny_llava

    return tiny_llava(kind, backbone, n_kv_heads=n_kv_heads, **kw)


@functools.cache
def tiny_lens(kind: str = "llava", backbone: str = "llama", n_kv_heads: int | None = None, processed: bool = True):
    import vh_lens

    model, processor = tiny_pair(kind, backbone, n_kv_heads)
    loader = vh_lens.load_llava if processed else vh_lens.core.load_llava_no_processing
    return loader(model, processor=processor)


@functools.cache
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
