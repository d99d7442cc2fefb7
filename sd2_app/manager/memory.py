"""Sizes, budgets and moves between the two tiers: the device and (pinned) host memory.

Sizes are parameter + buffer bytes. Before a load they are read from the safetensors header (tensor
shapes, no data), so the manager can make room first instead of finding out through an OOM.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from sd2_app.host_memory import GIB, host_memory_bytes
from sd2_app.loading.staged_read import DTYPES, read_header

logger = logging.getLogger(__name__)

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)  # torch.cuda.OutOfMemoryError is this


def gib(n: int) -> str:
    """Bytes for a log line: "1.61 GiB", or "649.0 MiB" under one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def safetensors_bytes(path: Path, dtype: torch.dtype) -> int:
    """Bytes the tensors in `path` take once loaded with floats cast to `dtype` (reads the header only).

    Raises ValueError when the header is not valid safetensors, which is also our first corruption check.
    """
    _, entries = read_header(path)
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for entry in entries.values():
        numel = 1
        for dim in entry.shape:
            numel *= dim
        kind = DTYPES.get(entry.dtype)
        total += numel * (itemsize if kind is None or kind.is_floating_point else kind.itemsize)
    return total


def default_device_budget(device: torch.device, margin: float = 0.25, min_margin: int = 2 * GIB) -> int:
    """The device memory models may use: total less a margin for activations (the larger of 25% and 2 GiB).

    On CPU the "device" is host memory, so the budget is half the RAM.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return max(total - max(int(total * margin), min_margin), 0)
    return host_memory_bytes() // 2


def default_offload_budget() -> int:
    """Host memory for models moved off the device: a quarter of the RAM (pinned pages are not swappable)."""
    return host_memory_bytes() // 4


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on the device as the driver sees it; None on CPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


_SHADOW = "_sd2_pinned_shadow"  # attribute holding a module's pinned host copy (not a parameter or buffer)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def empty_in_layout(tensor: torch.Tensor, device: torch.device | str, *, pin: bool = False) -> torch.Tensor:
    """An uninitialised tensor with `tensor`'s shape, dtype and strides (channels_last stays channels_last, even
    for 1x1 kernels, whose two layouts differ only in strides) on `device`, page-locked when `pin`.

    Why: the accelerator sets the convolutions' weights channels_last once, and the activations take their
    layout from conv_in's weight; a move that made the weights NCHW-contiguous would send every later job
    down the NCHW kernels (slower, and not the numbers of the first job).
    """
    dense = tensor.is_contiguous() or (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last))
    if not dense:  # (no parameter or buffer is; a strided view gets a contiguous copy)
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=device, pin_memory=pin)
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=device, pin_memory=pin)


def _shadow(module: nn.Module) -> list[torch.Tensor] | None:
    """The pinned host copy made the first time `module` left the device, if it still matches its tensors.

    Weights never change during inference, so the copy stays valid: the next offload only re-points the
    tensors at it (no device-to-host copy), which is what makes a swap between two checkpoints fast.
    """
    shadow = getattr(module, _SHADOW, None)
    tensors = _tensors(module)
    if shadow is None or len(shadow) != len(tensors):
        return None
    if any(s.shape != t.shape or s.dtype != t.dtype or s.stride() != t.stride() for s, t in zip(shadow, tensors)):
        return None
    return shadow


def _to_host(module: nn.Module, pin: bool) -> None:
    """Swap every device tensor of `module` for a host tensor (page-locked when `pin`).

    With a valid pinned shadow this is free; otherwise each tensor is copied into a freshly allocated
    pinned buffer in its layout (directly, not through pageable memory) and the buffers are kept as the shadow.
    """
    tensors = _tensors(module)
    shadow = _shadow(module) if pin else None
    if shadow is not None:
        for tensor, host in zip(tensors, shadow):
            tensor.data = host
        return
    for tensor in tensors:
        if tensor.device.type == "cpu":
            continue
        host = empty_in_layout(tensor, "cpu", pin=pin)
        host.copy_(tensor.data, non_blocking=pin)
        tensor.data = host
    if pin and torch.cuda.is_available():
        torch.cuda.synchronize()
    if pin:
        setattr(module, _SHADOW, [t.data for t in tensors])


def _to_device(module: nn.Module, device: torch.device) -> None:
    """Copy host tensors to `device` without dropping the pinned shadow (the way back stays free)."""
    for tensor in _tensors(module):
        if tensor.device != device:
            target = empty_in_layout(tensor, device)
            target.copy_(tensor.data, non_blocking=True)
            tensor.data = target


def move_module(module: nn.Module, device: torch.device, *, pin: bool) -> None:
    """Move `module` in place to `device`; when it goes to the host and `pin`, into pinned memory.

    Pinning can fail when the OS limits locked memory; the rest of the module then goes to pageable
    memory (slower way back, same results), which we log. A module brought back to a GPU keeps its
    pinned host copy (host RAM holds it while the module is on the device; it is freed with the module).
    """
    if device.type == "cpu":
        try:
            _to_host(module, pin)
        except RuntimeError as e:
            if not pin:
                raise
            logger.warning("could not pin %s in host memory (%s); using pageable memory", type(module).__name__, e)
            _to_host(module, pin=False)
        return
    if device.type == "cuda":
        _to_device(module, device)
        torch.cuda.synchronize(device)
    else:
        module.to(device)


def empty_device_cache(device: torch.device) -> None:
    """Give cached blocks back to the driver after models left the device (before a retry or a big load)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
