"""Max differences of every conformance case (tests/core/test_conformance.py) to Hugging Face: float32, and
float64 against the patched float64 reference. Run: python benchmarks/conformance_diffs.py"""

import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "tests"), str(root)]
torch.set_num_threads(1)
import pytest
import test_conformance as t

worst = {"logits": 0.0, "pattern": 0.0}
for case in t.CASES:
    hf, processor = t._hf(case, cache=False)
    d = t._max_differences(hf, processor)
    worst = {k: max(worst[k], d[k]) for k in worst}
print(
    f"float32 over {len(t.CASES)} cases x processed/raw x fused/TL, 3 samples: max |d log-softmax| {worst['logits']:.3e}, max |d pattern| {worst['pattern']:.3e}"
)
mp = pytest.MonkeyPatch()
t.patch_float64_reference(mp)
worst = {"logits": 0.0, "pattern": 0.0}
for case in t.FLOAT64_CASES:
    hf, processor = t._hf(case, torch.float64, cache=False)
    d = t._max_differences(hf, processor, n_samples=3)
    print(f"  float64 {case.id}: {d}")
    worst = {k: max(worst[k], d[k]) for k in worst}
print(
    f"float64 over {len(t.FLOAT64_CASES)} cases, 3 samples: max |d log-softmax| {worst['logits']:.3e}, max |d pattern| {worst['pattern']:.3e}"
)
mp.undo()
