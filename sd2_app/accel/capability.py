"""Which speed switches a CUDA device gets: each feature needs what it needs of the GPU.

- The Triton kernels (fused ops) and torch.compile (Inductor generates Triton kernels): Triton supports
  NVIDIA GPUs of compute capability 8.0 and newer (Triton's README, "Supported Hardware"; PyTorch's Inductor
  itself refuses below 7.0, torch/_inductor/exc.py GPUTooOldForTriton). Below 8.0 (T4: sm_75) both are off.
- channels_last: the UNet gains from it with or without our kernels (cuDNN's NHWC convolutions); the VAE
  only with them (`AccelOptions.vae_channels_last`), so it follows the fused ops.
- CUDA graphs need nothing beyond CUDA; fp16 attention is decided per call by PyTorch's own kernel checks
  (nn.attention.sdpa_runs_fused).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from sd2_app.accel.options import AccelOptions

logger = logging.getLogger(__name__)

TRITON_MIN_CAPABILITY = (8, 0)


def options_for_capability(options: AccelOptions, capability: tuple[int, int], *,
                           triton_installed: bool) -> AccelOptions:
    """`options` less what a GPU of compute `capability` (major, minor) cannot run well."""
    kernels = triton_installed and tuple(capability) >= TRITON_MIN_CAPABILITY
    return dataclasses.replace(options, fused_ops=options.fused_ops and kernels,
                               compile=options.compile and kernels)


def options_for_device(options: AccelOptions, device: torch.device) -> AccelOptions:
    """`options` as `device` can run them (unchanged off CUDA, where the CUDA-only switches never apply)."""
    if device.type != "cuda":
        return options
    from sd2_app.accel.fused import triton_available

    capability = torch.cuda.get_device_capability(device)
    chosen = options_for_capability(options, capability, triton_installed=triton_available())
    if chosen != options:
        logger.warning("sm_%d%d%s: %s off (the Triton kernels need sm_%d%d+ and triton)", *capability,
                       "" if triton_available() else " without triton",
                       ", ".join(f.name for f in dataclasses.fields(options)
                                 if getattr(options, f.name) != getattr(chosen, f.name)),
                       *TRITON_MIN_CAPABILITY)
    return chosen
