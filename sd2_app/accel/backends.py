"""Process-wide backend switches for speed: cuDNN autotuning, TF32 matmuls, the fused SDPA kernels.

These are global torch flags, so they are set once by whoever owns the process (app.py, the bench) and
never from inside a network or a pipeline. Every switch is reported back so the caller can log what it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendState:
    """What `setup_backends` left enabled (for logs and the benchmark report)."""

    cudnn_benchmark: bool
    tf32: bool
    flash_sdp: bool
    mem_efficient_sdp: bool
    math_sdp: bool


def setup_backends(device: torch.device | str, *, allow_tf32: bool = True,
                   cudnn_benchmark: bool = True) -> BackendState:
    """Enable the fast kernels for `device`; a no-op (reporting the current flags) on CPU.

    - cudnn.benchmark (`cudnn_benchmark`): picks the fastest convolution algorithm per input shape once, by
      timing them. Our shapes are few and fixed per resolution (and replayed by CUDA graphs), so the search
      costs only the first call of each shape (docs/PERFORMANCE.md has its cost); off, cuDNN's heuristics
      choose without timing.
    - TF32 for fp32 matmuls (`allow_tf32`): 10-bit mantissa inputs, fp32 accumulation. The fp16 UNet and
      VAE are unaffected; fp32 runs get ~1e-3 relative differences, which is why it can be turned off.
      fp32 convolutions keep PyTorch's default (cuDNN may use TF32, `torch.backends.cudnn.allow_tf32`),
      which is what diffusers runs with: the x4 upscaler's fp32 VAE decode then matches it and is not
      several times slower than it needs to be.
    - SDPA: flash and memory-efficient attention stay enabled, with the math kernel as the fallback for
      shapes they refuse (e.g. the VAE's single 512-wide head on older torch versions).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(True)
        torch.backends.cuda.enable_math_sdp(True)
    state = BackendState(
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        tf32=bool(torch.backends.cuda.matmul.allow_tf32),
        flash_sdp=bool(torch.backends.cuda.flash_sdp_enabled()),
        mem_efficient_sdp=bool(torch.backends.cuda.mem_efficient_sdp_enabled()),
        math_sdp=bool(torch.backends.cuda.math_sdp_enabled()),
    )
    logger.info("backends for %s: %s", device, state)
    return state
