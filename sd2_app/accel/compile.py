"""torch.compile of the whole UNet: the `--speed compile` path.

One graph per resolution (our UNet traces with no graph break), Inductor's default mode; its kernels are
then replayed by our CudaGraphUNet, as diffusers' recipe replays them with mode="reduce-overhead". Inductor
fuses the norms, the residual and time-embedding adds and the attention projections across block
boundaries; the default path's own fused kernels do the same without the compile (docs/PERFORMANCE.md
compares the two). Module.compile() works in place, keeping the attribute paths (and so the state-dict keys
and the manager's moves) unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_RECOMPILE_LIMIT = 64  # distinct shapes: every resolution and batch a server sees is a recompile


def _raise_recompile_limit(limit: int) -> None:
    """Dynamo gives up on a code object after 8 shape variants by default; a server sees more sizes."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)


def compile_unet(unet: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile the whole UNet in place (static shapes, full graph); the first call per shape compiles."""
    _raise_recompile_limit(_RECOMPILE_LIMIT)
    unet.compile(backend=backend, mode=mode, dynamic=False, fullgraph=True)
    logger.info("whole-UNet compile (%s, mode=%s)", backend, mode)
    return unet
