"""``load_llava(..., n_devices=N)``: the layer split's device map, argument checks, one device unchanged.

The split itself (blocks on several GPUs, outputs equal to one device) needs two CUDA devices:
``test_split_matches_one_device`` runs only where they exist.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import striped_image, tiny_pair
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

import vh_lens
from vh_lens.core.devices import check_n_devices, layer_devices


def test_layer_devices_by_hand_and_as_transformer_lens_forward_moves_the_residual() -> None:
    assert [d.index for d in layer_devices(32, "cuda:0", 2)] == [0] * 16 + [1] * 16
    assert [d.index for d in layer_devices(5, "cuda:1", 2)] == [1, 1, 1, 2, 2]
    assert [d.index for d in layer_devices(40, "cuda", 3)] == [0] * 14 + [1] * 13 + [2] * 13
    assert layer_devices(3, "cpu", 1) == [torch.device("cpu")] * 3
    for n_layers in (2, 5, 32, 40, 62, 80):
        for n_devices in range(1, min(n_layers, 8) + 1):
            cfg = SimpleNamespace(n_layers=n_layers, n_devices=n_devices, device="cuda:0")
            want = [get_device_for_block_index(i, cfg) for i in range(n_layers)]
            assert layer_devices(n_layers, "cuda:0", n_devices) == want, (n_layers, n_devices)


def test_check_n_devices_refuses_bad_values() -> None:
    cuda = torch.device("cuda", 0)
    assert check_n_devices(1, torch.device("cpu"), 4) == 1
    for bad in (0, -1, True, 1.5, "2", None):
        with pytest.raises(ValueError, match="n_devices must be a positive int"):
            check_n_devices(bad, cuda, 4)
    with pytest.raises(ValueError, match="over CUDA devices; device is cpu"):
        check_n_devices(2, torch.device("cpu"), 4)
    with pytest.raises(ValueError, match="more than the model's 4 layers"):
        check_n_devices(5, cuda, 4)
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = max(available + 1, 2)
    with pytest.raises(ValueError, match=f"needs {n} CUDA devices, {available} available"):
        check_n_devices(n, cuda, 64)


def test_n_devices_one_is_the_default_and_two_on_cpu_is_refused() -> None:
    hf, processor = tiny_pair("llava", "llama")
    default = vh_lens.load_llava(hf, processor=processor)
    one = vh_lens.load_llava(hf, processor=processor, n_devices=1)
    batch = default.prepare(images=[striped_image()], questions=["What is this?"])
    assert torch.equal(default(batch), one(batch))
    assert one.cfg.n_devices == 1
    with pytest.raises(ValueError, match="n_devices=2 splits the layers over CUDA devices"):
        vh_lens.load_llava(hf, processor=processor, n_devices=2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_split_matches_one_device() -> None:
    hf, processor = tiny_pair("llava", "llama")
    one = vh_lens.load_llava(hf, processor=processor, device="cuda:0")
    two = vh_lens.load_llava(hf, processor=processor, device="cuda:0", n_devices=2)
    assert [b.attn.W_Q.device.index for b in two.lm.blocks] == [0, 1]
    assert two.lm.unembed.W_U.device.index == 1 and next(two.vision.parameters()).device.index == 0
    batch = one.prepare(images=[striped_image()], questions=["What is this?"])
    torch.testing.assert_close(two(batch).to("cuda:0"), one(batch), rtol=0, atol=1e-5)
