"""The language backbone over several GPUs: TransformerLens' layer split, placed and checked.

``load_llava(..., n_devices=N)`` builds the HookedTransformer with ``cfg.n_devices = N`` and
places block ``i`` on the device TransformerLens' forward moves the residual stream to before
block ``i``; the embedding, the vision tower and the projector are on the first device.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

__all__ = ["check_n_devices", "layer_devices", "place_layers"]


def check_n_devices(n_devices: object, device: torch.device, n_layers: int) -> int:
    """Validate ``load_llava(..., n_devices=)``: an int in ``1..n_layers``; past 1, CUDA devices
    ``device.index .. device.index + n_devices - 1`` must exist. Returns it as an int."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}")
    if n_devices == 1:
        return 1
    if device.type != "cuda":
        raise ValueError(
            f"n_devices={n_devices} splits the layers over CUDA devices; device is {device}: pass device='cuda'"
        )
    if n_devices > n_layers:
        raise ValueError(f"n_devices={n_devices} is more than the model's {n_layers} layers")
    first = device.index or 0
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if first + n_devices > available:
        raise ValueError(
            f"n_devices={n_devices} from cuda:{first} needs {first + n_devices} CUDA devices, {available} available"
        )
    return n_devices


def layer_devices(n_layers: int, device: str | torch.device, n_devices: int) -> list[torch.device]:
    """The device of each block under TransformerLens' layer split.

    Block ``i`` goes to ``cuda:{index + i * n_devices // n_layers}``, the device
    ``HookedTransformer.forward`` sends the residual stream to before block ``i``
    (``transformer_lens.utilities.multi_gpu.get_device_for_block_index``); the embedding (with
    the vision tower and projector) is on the first device, final norm and unembedding on the
    last block's. One device (or the CPU): every block on ``device``.

    Example:
        >>> [str(d) for d in layer_devices(4, "cuda:0", 2)]
        ['cuda:0', 'cuda:0', 'cuda:1', 'cuda:1']
    """
    device = torch.device(device)
    if device.type == "cpu" or n_devices == 1:
        return [device] * n_layers
    return [torch.device(device.type, (device.index or 0) + i * n_devices // n_layers) for i in range(n_layers)]


def place_layers(lm: HookedTransformer) -> None:
    """Move ``lm``'s modules to :func:`layer_devices` of its ``cfg`` (``cfg.n_devices`` devices).

    TransformerLens 3's ``move_model_modules_to_device`` puts every module on one device, while
    its forward moves the residual stream block by block across ``cfg.n_devices``; this places
    each block where the forward expects it.
    """
    cfg = lm.cfg
    devices = layer_devices(cfg.n_layers, cfg.device, cfg.n_devices)
    lm.embed.to(devices[0])
    lm.hook_embed.to(devices[0])
    for block, device in zip(lm.blocks, devices, strict=True):
        block.to(device)
    if hasattr(lm, "ln_final"):
        lm.ln_final.to(devices[-1])
    lm.unembed.to(devices[-1])
