"""torch.compile of the UNet: whole (the --compile path) or regional (the repeated blocks only).

Whole: one graph per resolution (our UNet traces with no graph break), inductor's default mode; its
kernels are then replayed by our CudaGraphUNet, as diffusers' recipe replays them with
mode="reduce-overhead". Inductor fuses the norms, the residual and time-embedding adds and the attention
projections across block boundaries, which once made it the fastest path (H200: 0.177 s per 512 image against
0.203 s on session 1's default). Since the default path got its own fused kernels it is no faster: 0.164 s at
512 and 0.326 s at 768 after ~50 s of compile, against 0.156 / 0.305 s (and diffusers + torch.compile's
0.206 / 0.393 s), docs/PERFORMANCE.md runs 8-10.

Regional: the UNet is ~40 copies of a few block types, and with dynamo's inlining of nn.Module calls
(default since torch 2.5) every instance of one class reuses the code compiled for it, as long as the shapes
match, so the compile cost scales with the number of distinct (block type, shape) pairs. Measured on the
H200: 36 s at 512 for a 3% faster UNet call than the default path (6.63 vs 6.80 ms), so it is not the
--compile path any more. Module.compile() works in place in both cases, keeping the attribute paths (and so
the state-dict keys and the manager's moves) unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sd2_app.nn.attention import BasicTransformerBlock
from sd2_app.nn.resnet import ResnetBlock2D

logger = logging.getLogger(__name__)

COMPILED_TYPES: tuple[type[nn.Module], ...] = (ResnetBlock2D, BasicTransformerBlock)
_RECOMPILE_LIMIT = 64  # distinct shapes per block type: ~15 resnet shapes per resolution, a few resolutions


def _raise_recompile_limit(limit: int) -> None:
    """Dynamo gives up on a code object after 8 shape variants by default; our blocks have more."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit * 8:
            setattr(config, name, limit * 8)


def compile_unet(unet: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile the whole UNet in place (static shapes, full graph); the first call per shape compiles."""
    _raise_recompile_limit(_RECOMPILE_LIMIT)
    unet.compile(backend=backend, mode=mode, dynamic=False, fullgraph=True)
    logger.info("whole-UNet compile (%s, mode=%s)", backend, mode)
    return unet


def compile_blocks(model: nn.Module, *, backend: str = "inductor", mode: str | None = None,
                   types: tuple[type[nn.Module], ...] = COMPILED_TYPES) -> int:
    """Compile every block of `types` inside `model` in place (static shapes); returns how many.

    `mode` is inductor's mode; "max-autotune-no-cudagraphs" searches matmul/conv kernels without
    inductor's own CUDA graphs (our CudaGraphUNet captures the whole UNet, compiled blocks included).
    `backend="eager"` only traces (used by the CPU tests).
    """
    _raise_recompile_limit(_RECOMPILE_LIMIT)
    count = 0
    for module in model.modules():
        if isinstance(module, types):
            module.compile(backend=backend, mode=mode, dynamic=False, fullgraph=False)
            count += 1
    logger.info("regional compile (%s, mode=%s): %d blocks of %s", backend, mode, count, type(model).__name__)
    return count
