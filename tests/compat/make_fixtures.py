"""Write the saved-format fixtures of ``tests/compat/v0_1_0/`` with an OLD checkout of vh_lens.

Run from the root of a checkout of the code whose saved formats are to be kept readable (its
``vh_lens`` is imported from the current directory, not from the installed package)::

    git -C /work/main worktree add /work/wt/oldcode 8c286fd
    cd /work/wt/oldcode && HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        /work/main/.venv/bin/python /work/wt/tooling/tests/compat/make_fixtures.py \\
        /work/wt/tooling/tests/compat/v0_1_0

The fixtures in ``v0_1_0/`` were written this way from commit 8c286fd (vh_lens 0.1.0, the code
of main before the restructure of issue 14). Each result is made on the tiny random models of
:func:`vh_lens.testing.tiny_llava`, saved with its ``save``, and summarised (shape, dtype, sum and
SHA-256 of every tensor; every other field as is) into ``expected.json``;
``test_saved_formats.py`` loads each fixture with today's code and compares its summary.

Only public names that exist in the old and the new layout are used (``vh_lens.<name>``,
``vh_lens.data``, ``vh_lens.patching``, ``vh_lens.testing``, ``vh_lens.cli``), so the helpers
below (:func:`summary`, :func:`scan_samples`, ...) are also what the test calls with today's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FUNCTIONS = ("Retrieval", "Math Calculation", "Inference")
N_SCAN = 6  # samples of the scan; its checkpoint is written after CKPT_SAMPLES of them
CKPT_SAMPLES = 4
CLI_SCAN_ARGS = ["scan", "--n-samples", "6", "--batch-size", "3", "--checkpoint-every", "3", "--no-progress",
                 "--keep-per-sample"]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Summaries (also used by the test, with today's code)


def _tensor_summary(t: Any) -> dict[str, Any]:
    array = np.ascontiguousarray(np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t))
    dtype = str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else str(array.dtype)
    if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16:  # numpy has no bfloat16
        array = np.ascontiguousarray(t.detach().cpu().view(torch.int16).numpy())
    total = (
        float(torch.from_numpy(np.array(array, dtype=np.float64)).sum())
        if array.dtype != np.bool_
        else int(array.sum())
    )
    return {"tensor": list(array.shape), "dtype": dtype, "sum": _plain(total),
            "sha256": hashlib.sha256(array.tobytes()).hexdigest()}  # fmt: skip


def _plain(value: Any) -> Any:
    """``value`` as JSON (NaN and infinities as strings, so that equal summaries compare equal)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def summary(value: Any) -> Any:
    """A JSON-ready summary of a result: tensors by shape, dtype, sum and hash; the rest as is."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _tensor_summary(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: summary(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): summary(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [summary(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return _plain(value.item())
    return _plain(value)


# --------------------------------------------------------------------------------------------
# Inputs (deterministic; the same in the old and the new code)


def striped_image(size: tuple[int, int], seed: int) -> Any:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    w, h = size
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def tiny_model() -> Any:
    import vh_lens
    from vh_lens.testing import tiny_llava

    hf, processor = tiny_llava("llava", "llama")
    return vh_lens.load_llava(hf, processor=processor)


def scan_samples(n: int = N_SCAN) -> list[Any]:
    from vh_lens.data import Sample

    colors = ["red", "blue", "green"]
    return [Sample(striped_image((40 + 7 * i, 60 - 5 * i), i), f"What color is the {colors[i % 3]} box ?",
                   answer="A", choices=colors, box=(2.0 + i, 3.0, 20.0 + i, 25.0))
            for i in range(n)]  # fmt: skip


def cogqa_file(path: Path, n_items: int = 8, seed: int = 0) -> Path:
    """A small file in CogQA's published schema; words from the tiny tokenizer's vocabulary."""
    from vh_lens.testing import TINY_WORDS

    rng = random.Random(seed)
    words = [w for w in TINY_WORDS if w not in ("USER", "ASSISTANT", "INST")]
    items = []
    for i in range(n_items):
        subs = [{"subquestion": " ".join(rng.choices(words, k=rng.randint(3, 6))) + " ?",
                 "answer": rng.choice(["red", "two", "3", "yes", "the dog"]) if j < 2 else rng.randint(1, 9),
                 "cognitive_skill": FUNCTIONS[(i + j) % len(FUNCTIONS)]}
                for j in range(3)]  # fmt: skip
        items.append({"question": " ".join(rng.choices(words, k=6)) + " ?", "answer": "a long worked answer .",
                      "generated": subs})  # fmt: skip
    path.write_text(json.dumps(items))
    return path


# --------------------------------------------------------------------------------------------
# Generation (run with the OLD code)


def make(out: Path) -> dict[str, Any]:
    import vh_lens
    from vh_lens import patching
    from vh_lens.data.cogvision import load_cogvision

    torch.manual_seed(0)
    expected: dict[str, Any] = {}
    model = tiny_model()
    samples = scan_samples()

    def saved(kind: str, result: Any) -> None:
        result.save(out / kind)
        expected[kind] = summary(result)

    # VisualHeadScores (with per-sample arrays) and a library checkpoint after CKPT_SAMPLES samples
    scores = vh_lens.scan_visual_heads(model, samples, batch_size=2, keep_per_sample=True, progress=False)
    saved("visual_head_scores", scores)
    vh_lens.scan_visual_heads(model, samples[:CKPT_SAMPLES], batch_size=2, keep_per_sample=True, progress=False,
                              checkpoint_dir=out / "scan_checkpoint", checkpoint_every=2)  # fmt: skip
    expected["scan_checkpoint"] = {"resumed_to": N_SCAN, "scores": summary(scores)}

    # MaskingResult (on the saved scores), HeadMeans, LogitLensResult
    mask_samples = [vh_lens.data.Sample(s.image, s.question, answer=c, choices=s.choices)
                    for s, c in zip(samples[:3], ["red", "blue", "green"], strict=True)]  # fmt: skip
    saved("masking", vh_lens.masking_experiment(model, mask_samples, scores, ks=(1, 3), stages=("early", "mid"),
                                                control_seeds=(0, 1), progress=False))  # fmt: skip
    saved("head_means", vh_lens.analysis.head_means.head_means(model, samples[:3], positions="last_prompt"))
    batch = model.prepare_samples(samples[:3])
    saved("logit_lens", vh_lens.logit_lens(model, batch, answers=["red", "blue", "green"], top_k=3))

    # HeadActivations, ProbeResult, FunctionInterventionReport (paper B)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    items = load_cogvision(cogqa_file(work / "cogqa.json"))
    acts = vh_lens.collect_head_activations(model, items, progress=False)
    saved("head_activations", acts)
    probes = vh_lens.probe_heads(acts, seed=0, mode="both", steps=30)
    saved("probe_result", probes)
    saved("function_interventions", vh_lens.intervene_on_functions(model, items[:3], probes, k=2, control_seeds=(0,),
                                                                   max_new_tokens=2, progress=False))  # fmt: skip

    # PatchingResult
    clean = model.prepare(images=[striped_image((70, 40), 0)], questions=["What is it?"])
    corrupt = patching.noise_image_embeddings(clean, seed=3)
    with torch.no_grad():
        answer = model(clean)[:, -1].argmax(-1)
    metric = patching.answer_logprob_metric(clean, answer)
    saved("patching", patching.activation_patch(model, clean, corrupt, metric, patching.position_sites(clean),
                                                layers=[1]))  # fmt: skip
    shutil.rmtree(work)

    # The CLI's scan output folder (toy-model demo): scores/ and checkpoint/ (the report is left out)
    from vh_lens.cli import main

    cli_out = out / "cli_scan"
    if main([*CLI_SCAN_ARGS, "--out", str(cli_out)]) not in (0, None):
        raise SystemExit("vh-lens scan failed")
    (cli_out / "report.html").unlink()
    expected["cli_scan"] = {"scores": summary(vh_lens.VisualHeadScores.load(cli_out / "scores")),
                            "args": CLI_SCAN_ARGS}  # fmt: skip
    return expected


def main(argv: list[str]) -> None:
    sys.path.insert(0, os.getcwd())  # the checkout being recorded, not the installed package
    for name in [m for m in sys.modules if m == "vh_lens" or m.startswith("vh_lens.")]:
        del sys.modules[name]
    import vh_lens

    torch.set_num_threads(1)
    out = Path(argv[0]).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    expected = make(out)
    info = {"written_by": {"commit": commit, "vh_lens": str(Path(vh_lens.__file__).parent),
                           "torch": torch.__version__}, "results": expected}  # fmt: skip
    (out / "expected.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} from {vh_lens.__file__} at {commit}")


if __name__ == "__main__":
    main(sys.argv[1:])
