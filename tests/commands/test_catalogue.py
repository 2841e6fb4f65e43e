"""The catalogue of bad inputs: each row is one input a user may give, the error class it must
raise and a fragment of its message, run through the public API or the command line.

Adding a case is one line in ``CASES``: ``Case(name, run, error, match)`` where ``run(env)``
does the bad thing (``env`` is an :class:`Env`: a tiny checkpoint, good images, helpers that
write data files) and must raise ``error`` with ``match`` (a regular expression) in its
message. For the command line, ``run=cli(lambda env: [argv...])`` runs ``vh_lens.cli.main``
and raises :class:`CliError` with the printed error line when the exit code is not 0 (and
checks that the failed run wrote nothing into its ``--out``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import striped_image, tiny_lens
from safetensors.torch import load_file, save_file

import vh_lens
import vh_lens.visual_heads.scan as visual_heads
from vh_lens.cli import main
from vh_lens.core.layout import check_box
from vh_lens.core.loading import UnsupportedModelError
from vh_lens.data import Sample, load_jsonl, load_rgb

NAN = float("nan")


class CliError(Exception):
    """``vh-lens`` exited with a non-zero code; the message is what it printed on stderr."""


@dataclass
class Env:
    """What the cases need: a tiny checkpoint, an image folder and a scratch folder."""

    model: Path
    images: Path
    root: Path
    counter: int = 0

    def path(self, name: str) -> Path:
        self.counter += 1
        return self.root / f"{self.counter:03d}-{name}"

    def jsonl(self, rows: list[dict[str, Any]], name: str = "questions.jsonl") -> Path:
        """Write ``rows`` (``json.dumps`` writes NaN as NaN) into a fresh file whose images are in ``images``."""
        path = self.path(name)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    def row(self, i: int = 0, **over: Any) -> dict[str, Any]:
        return {"image": str(self.images / f"img{i}.png"), "question": "how many squares?", "answer": "1",
                "box": [2, 2, 20, 20]} | over  # fmt: skip

    def model_copy(self, edit: Callable[[Path], None] | None = None) -> Path:
        folder = self.path("model")
        shutil.copytree(self.model, folder)
        if edit is not None:
            edit(folder)
        return folder

    def scan_argv(self, data: Path, out: Path, *extra: str, model: Path | None = None) -> list[str]:
        return ["scan", "--model", str(model or self.model), "--data", str(data), "--format", "jsonl",
                "--out", str(out), "--batch-size", "2", "--no-progress", *extra]  # fmt: skip


def cli(argv: Callable[[Env], list[str]]) -> Callable[[Env], None]:
    """A case runner: ``vh_lens.cli.main(argv(env))``; a non-zero exit raises :class:`CliError`."""

    def run(env: Env) -> None:
        args = argv(env)
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        before = _listing(out)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(args)
        if code != 0:
            lines = [line for line in err.getvalue().splitlines() if ": error: " in line]
            assert len(lines) == 1, f"expected one error line, got {err.getvalue()!r}"
            assert _listing(out) == before, f"the failed run wrote into {out}: {before} -> {_listing(out)}"
            raise CliError(lines[0])

    return run


def _listing(out: Path | None) -> list[str]:
    if out is None or not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != "checkpoint.json" or True)


def _interrupted_scan(env: Env, model: Path, data: Path, out: Path) -> None:
    """Run a scan that is interrupted after its first checkpoint (exit code 130, checkpoint kept)."""
    real = visual_heads._write_checkpoint

    def write_then_interrupt(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    with (
        mock.patch.object(visual_heads, "_write_checkpoint", write_then_interrupt),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        assert main(env.scan_argv(data, out, "--checkpoint-every", "2", model=model)) == 130


def _perturb_weights(folder: Path) -> None:
    """Other weights, same shapes and dtypes (a retrained model saved under the same path)."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = sorted(n for n in tensors if "language_model" in n and n.endswith("q_proj.weight"))[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, path, metadata={"format": "pt"})


def _resume_after(change: str) -> Callable[[Env], list[str]]:
    """argv of a rerun after an interrupted scan whose weights or image then changed."""

    def argv(env: Env) -> list[str]:
        model = env.model_copy()
        images = env.path("images")
        shutil.copytree(env.images, images)
        data = env.jsonl([env.row(i) | {"image": str(images / f"img{i}.png")} for i in range(4)])
        out = env.path("out")
        _interrupted_scan(env, model, data, out)
        if change == "weights":
            _perturb_weights(model)
        else:
            striped_image((40, 30), seed=99).save(images / "img0.png")
        return env.scan_argv(data, out, model=model)

    return argv


def write_evil_checkpoint(folder: Path, file: str) -> Path:
    """Make ``file`` of a checkpoint folder name a class of ``evil.py``, which writes ``MARKER`` when run.

    Hugging Face asks "Do you wish to run the custom code? [y/N]" for such a processor or
    tokenizer class and runs ``evil.py`` on "y". Returns the marker's path.
    """
    marker = folder / "MARKER"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlavaProcessor as EvilProcessor, LlavaConfig as EvilConfig\n"
        "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n"
    )
    data = json.loads((folder / file).read_text())
    data["auto_map"] = {"AutoProcessor": "evil.EvilProcessor", "AutoConfig": "evil.EvilConfig",
                        "AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}  # fmt: skip
    key = {"processor_config.json": "processor_class", "tokenizer_config.json": "tokenizer_class"}.get(file)
    if key is not None:
        data[key] = "EvilProcessor" if key == "processor_class" else "EvilTokenizer"
    (folder / file).write_text(json.dumps(data))
    return marker


def _auto_map(file: str) -> Callable[[Env], Any]:
    """Load a checkpoint whose ``file`` asks for its own code (a python file that writes a marker)."""

    def run(env: Env) -> Any:
        def edit(folder: Path) -> None:
            write_evil_checkpoint(folder, file)

        folder = env.model_copy(edit)
        try:
            return vh_lens.load_llava(folder)
        finally:
            assert not (folder / "MARKER").exists(), "the checkpoint's code ran"

    return run


def _unknown_model_type(env: Env) -> Any:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "llava_foo"
        (folder / "config.json").write_text(json.dumps(config))

    return vh_lens.load_llava(env.model_copy(edit))


def _region_mask_nan(env: Env) -> Any:
    batch = tiny_lens().prepare(images=[striped_image((40, 30))], questions=["how many?"])
    return batch.layout[0].region_mask((NAN, 0.0, 10.0, 10.0))


def _corrupt_and_outside(env: Env) -> list[str]:
    (env.images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 10)
    rows = [env.row(0), env.row(1, image=str(env.images / "corrupt.png")), env.row(2, box=[0, 0, 500, 20]),
            env.row(3), env.row(4, question="many words " * 1500)]  # fmt: skip
    return env.scan_argv(env.jsonl(rows), env.path("out"))


def _nan_weight(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = sorted(n for n in tensors if n.endswith("down_proj.weight"))[0]
    tensors[name][0, :3] = NAN
    save_file(tensors, path, metadata={"format": "pt"})


def _truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def _header_not_json(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"@@@@"
    path.write_bytes(bytes(data))


def _mlp_bias(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["mlp_bias"] = True
    (folder / "config.json").write_text(json.dumps(config))


def _generate_past_context(env: Env) -> Any:
    model = tiny_lens()
    batch = model.prepare(images=[striped_image((40, 30))], questions=["how many?"])
    return model.generate_tokens(batch, max_new_tokens=model.cfg.n_ctx)


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(env)`` must raise ``error`` with ``match`` in its message."""

    name: str
    run: Callable[[Env], Any]
    error: type[BaseException]
    match: str


# fmt: off
CASES: list[Case] = [
    Case("NaN box in a Sample", lambda env: Sample(None, "q?", box=(NAN, 0, 1, 1)), ValueError, "not finite"),
    Case("infinite box in a Sample", lambda env: Sample(None, "q?", box=(0, 0, math.inf, 1)), ValueError, "not finite"),
    Case("NaN box to check_box", lambda env: check_box((0, 0, NAN, 5), (10, 10)), ValueError, "not finite"),
    Case("NaN box to region_mask", _region_mask_nan, ValueError, "not finite"),
    Case("NaN box in a jsonl line", lambda env: load_jsonl(env.jsonl([env.row(0), env.row(1, box=[NAN, 1, 5, 5])])),
         ValueError, r"questions.jsonl:2: .*not finite"),
    Case("NaN box, scan", cli(lambda env: env.scan_argv(env.jsonl([env.row(0), env.row(1, box=[1, NAN, 5, 5])]),
                                                        env.path("out"))), CliError, r"questions.jsonl:2: .*not finite"),
    Case("box outside the image, scan",
         cli(lambda env: env.scan_argv(env.jsonl([env.row(0), env.row(1, box=[0, 0, 20, 900])]), env.path("out"))),
         CliError, r"1 of 2 items .*questions.jsonl:2: box .* lies outside the image"),
    Case("corrupt image, scan",
         cli(lambda env: env.scan_argv(env.jsonl([env.row(0, image=str(env.images / "garbage.png"))]), env.path("out"))),
         CliError, r"questions.jsonl:1: image .*garbage.png could not be read"),
    Case("prompt longer than the context, scan",
         cli(lambda env: env.scan_argv(env.jsonl([env.row(0, question="many words " * 1500)]), env.path("out"))),
         CliError, r"questions.jsonl:1: needs \d+ positions, more than the model's context of 2048"),
    Case("all bad items listed at once, scan", cli(_corrupt_and_outside), CliError,
         r"3 of 5 items .*:2: image .*:3: box .*:5: needs"),
    Case("weights changed under the same path, resumed scan", cli(_resume_after("weights")), CliError,
         r"inputs changed since .*checkpoint was written: checkpoint file model.safetensors \(content differs\)"),
    Case("image changed under the same path, resumed scan", cli(_resume_after("image")), CliError,
         r"inputs changed .*: image .*img0.png \((size|content)"),
    Case("a folder as --data", cli(lambda env: env.scan_argv(env.images, env.path("out"))), CliError,
         "is a folder"),
    Case("auto_map in processor_config.json", _auto_map("processor_config.json"), ValueError,
         r"processor_config.json asks for the checkpoint's own code \(auto_map"),
    Case("auto_map in tokenizer_config.json", _auto_map("tokenizer_config.json"), ValueError,
         r"tokenizer_config.json asks for the checkpoint's own code \(auto_map"),
    Case("auto_map in config.json", _auto_map("config.json"), ValueError,
         r"config.json asks for the checkpoint's own code \(auto_map"),
    Case("unknown model_type", _unknown_model_type, UnsupportedModelError, r"model_type 'llava_foo'"),
    Case("float numpy array as an image", lambda env: load_rgb(np.zeros((8, 8, 3))), ValueError, "must be uint8"),
    Case("CHW numpy array as an image", lambda env: load_rgb(np.zeros((3, 8, 8), np.uint8)), ValueError,
         r"\[H, W, 3\]"),
    Case("torch tensor as an image", lambda env: load_rgb(torch.zeros(3, 8, 8)), ValueError, "torch Tensor"),
    Case("torch tensor as an image, prepare",
         lambda env: tiny_lens().prepare(images=[torch.zeros(3, 8, 8)], questions=["q?"]), ValueError, "torch Tensor"),
    Case("NaN in a checkpoint tensor", lambda env: vh_lens.load_llava(env.model_copy(_nan_weight)), ValueError,
         r"checkpoint tensor .*down_proj.weight in model.safetensors holds 3 NaN values"),
    Case("NaN in a checkpoint tensor, scan",
         cli(lambda env: env.scan_argv(env.jsonl([env.row(0)]), env.path("out"), model=env.model_copy(_nan_weight))),
         CliError, r"down_proj.weight .*holds 3 NaN values"),
    Case("truncated safetensors file", lambda env: vh_lens.load_llava(env.model_copy(_truncate_weights)),
         vh_lens.CheckpointError, r"model.safetensors"),
    Case("safetensors header not JSON", lambda env: vh_lens.load_llava(env.model_copy(_header_not_json)),
         vh_lens.CheckpointError, r"model.safetensors"),
    Case("config field TransformerLens cannot express", lambda env: vh_lens.load_llava(env.model_copy(_mlp_bias)),
         UnsupportedModelError, r"LlamaConfig.mlp_bias = True"),
    Case("questions given as one string", lambda env: tiny_lens().prepare(images=[None], questions="how many?"),
         (TypeError, ValueError), r"questions"),
    Case("more images than placeholders",
         lambda env: tiny_lens().prepare(images=[[striped_image(), striped_image()]],
                                         prompts=["USER: <image>\nhow many? ASSISTANT:"]),
         ValueError, r"prompt 0 holds 1 image placeholder.* but 2 images were given"),
    Case("generate past the context", _generate_past_context, ValueError, r"more than the model's \d+"),
    Case("prompt longer than --n-ctx, scan",
         cli(lambda env: env.scan_argv(env.jsonl([env.row(0)]), env.path("out"), "--n-ctx", "16")),
         CliError, r"questions.jsonl:1: needs \d+ positions, more than the model's context of 16; --n-ctx \d+ would fit"),
    Case("--n-ctx 0", cli(lambda env: env.scan_argv(env.jsonl([env.row(0)]), env.path("out"), "--n-ctx", "0")),
         CliError, r"--n-ctx must be at least 1, got 0"),
    Case("--question-format toy, lens",
         cli(lambda env: ["lens", "--model", str(env.model), "--data", str(env.jsonl([env.row(0)])), "--format",
                          "jsonl", "--out", str(env.path("out")), "--question-format", "toy"]),
         CliError, r"--question-format was removed"),
    Case("--scores without saved scores, mask",
         cli(lambda env: ["mask", "--model", str(env.model), "--data", str(env.jsonl([env.row(0)])), "--format",
                          "jsonl", "--scores", str(env.images), "--out", str(env.path("out"))]),
         CliError, r"no saved VisualHeadScores in .*images or .*images/scores \(run vh-lens scan"),
    Case("demo-data into a non-empty folder", cli(lambda env: ["demo-data", str(env.images), "--n-samples", "2"]),
         CliError, r"exists and is not empty; pass --overwrite"),
]
# fmt: on


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint) -> Env:
    root = tmp_path_factory.mktemp("catalogue")
    images = root / "images"
    images.mkdir()
    for i in range(5):
        striped_image((60 + 4 * i, 48), seed=i).save(images / f"img{i}.png")
    (images / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return Env(model=tiny_checkpoint, images=images, root=root)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.unchecked_arguments  # passes values the annotations forbid, to check the error
def test_bad_input_is_refused_with_a_clear_error(case: Case, env: Env) -> None:
    torch.set_num_threads(1)
    with pytest.raises(case.error, match=case.match):
        case.run(env)
