"""``benchmarks/gpu.py``: its real shapes (on the meta device), its refusal without CUDA, and a tiny CPU run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-next-7b"])
def test_real_shapes_have_the_7b_parameter_count_and_image_tokens(name: str) -> None:
    gpu = _module()
    model_cls, config, processor = gpu.real_config(name)
    with torch.device("meta"):
        model = model_cls(config)
    n_params = sum(p.numel() for p in model.parameters())
    # llava-1.5-7b-hf: 7,063,427,072 parameters (Vicuna-7B with a 32,064 vocabulary, CLIP ViT-L/14-336, MLP projector)
    want = 7_063_427_072 + (4096 if name == "llava-next-7b" else 0)  # + LLaVA-NeXT's image_newline
    assert n_params == want
    image = gpu._image((640, 480) if name == "llava-next-7b" else (336, 336))
    enc = processor(images=[image], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    n_image = int((enc["input_ids"] == config.image_token_id).sum())
    assert n_image == (576 if name == "llava-1.5-7b" else 576 + 48 * 36 + 36)  # base + 4:3 tiles unpadded + newlines


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "need a CUDA device" in proc.stderr


def test_tiny_cpu_smoke_run_prints_a_table_and_json(capsys) -> None:
    gpu = _module()
    assert gpu.main(["--tiny", "--device", "cpu", "--batch-sizes", "1", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[-1][len("JSON ") :])
    assert out[-1].startswith("JSON ") and any(line.startswith("llava-next-7b  scan") for line in out)
    rows = result["rows"]
    assert len(rows) == 2 * 2 * len(gpu.METHODS) and all(r["status"] == "ok" for r in rows)
    assert all(r["samples_per_s"] > 0 and r["tflops"] > 0 and r["fraction_of_peak"] is None for r in rows)
    assert result["models"]["llava-1.5-7b"]["image_tokens"] == 16  # (56 / 14)^2
    # the FLOP count by hand for one cell. P: the folded HookedTransformer's parameters without the
    # embedding: per layer W_Q, W_K, W_V, W_O (4 d^2) and their biases (4 d), W_in, W_gate, W_out
    # (3 d d_mlp), b_in, b_out (d_mlp + d); W_U and b_U (vocab d + vocab); folded norms have no weights
    from vh_lens.testing import tiny_llava

    row = next(r for r in rows if r["model"] == "llava-1.5-7b" and r["batch_size"] == 2 and r["method"] == "plain")
    d, d_mlp, n_layers, seq = 64, 128, 2, row["seq_len"]
    vocab = tiny_llava("llava", "llama", n_layers=1)[0].config.text_config.vocab_size
    params = n_layers * (4 * d * d + 4 * d + 3 * d * d_mlp + d_mlp + d) + vocab * d + vocab
    flops = row["tflops"] * 1e12 * row["time_s"]
    assert flops == pytest.approx(2 * (2 * params * seq + 2 * n_layers * seq * seq * d), rel=1e-9)
