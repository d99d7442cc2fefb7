"""The speed switches as one object, and the two calls that apply them to a loaded UNet and VAE.

The manager (or the bench) decides once, after loading, and hands the result to the pipelines; nothing
below the loop knows which switches are on. Defaults are the "default path" of the app: no long compile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from sd2_app.accel.compile import compile_blocks
from sd2_app.accel.cuda_graph import CudaGraphUNet
from sd2_app.accel.fused import fuse_modules, triton_available

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccelOptions:
    cuda_graphs: bool = True  # capture the UNet forward per shape (CUDA only)
    fused_ops: bool = True  # Triton GroupNorm+SiLU and GEGLU (CUDA + triton only; eager math otherwise)
    channels_last: bool = False  # UNet convs in NHWC; measured, not assumed (it slowed the VAE)
    compile: bool = False  # regional torch.compile of the repeated blocks (minutes of warm-up)
    compile_mode: str | None = "max-autotune-no-cudagraphs"
    tf32: bool = False  # fp32 matmuls in TF32: faster, ~1e-3 relative error; off so fp32 paths (x4 VAE decode, upcast attention) stay exact
    vae_fp16_fallback: bool = True  # decode in fp16, retry in fp32 on inf/NaN

    @classmethod
    def eager(cls) -> AccelOptions:
        """Everything off: the plain modules (the baseline the bench compares against)."""
        return cls(cuda_graphs=False, fused_ops=False, channels_last=False, compile=False, tf32=False,
                   vae_fp16_fallback=False)

    @classmethod
    def compiled(cls) -> AccelOptions:
        """The --compile path: compiled blocks (which fuse the element-wise ops themselves) + CUDA graphs."""
        return cls(fused_ops=False, compile=True)


SPEED_MODES = ("default", "compile", "eager")  # the --speed flag of app.py and the CLI


def options_for(mode: str) -> AccelOptions:
    """The switches behind `--speed`: default (graphs + fused ops, no long warm-up), compile
    (regional torch.compile + graphs, minutes of warm-up), eager (plain modules, for comparison or debugging)."""
    if mode not in SPEED_MODES:
        raise ValueError(f"unknown speed mode {mode!r}; choose one of {', '.join(SPEED_MODES)}")
    return {"default": AccelOptions, "compile": AccelOptions.compiled, "eager": AccelOptions.eager}[mode]()


def accelerate_unet(unet: nn.Module, options: AccelOptions) -> nn.Module | CudaGraphUNet:
    """Apply the UNet switches in place and return what the loop should call (the UNet or its graph wrapper).

    On CPU only the exact ones apply (fused-op swaps are skipped, graphs fall back to eager), so the
    returned object computes the same numbers as `unet` there.
    """
    device = next(unet.parameters()).device
    on_cuda = device.type == "cuda"
    if options.channels_last and on_cuda:
        unet.to(memory_format=torch.channels_last)
    if options.compile:
        compile_blocks(unet, mode=options.compile_mode)
    elif options.fused_ops and on_cuda and triton_available():
        fuse_modules(unet)
    if options.cuda_graphs:
        return CudaGraphUNet(unet)
    return unet


def accelerate_vae(vae: nn.Module, options: AccelOptions) -> nn.Module:
    """Fused GroupNorm+SiLU in the VAE's resnets (its largest memory-bound ops); never channels_last."""
    device = next(vae.parameters()).device
    if options.fused_ops and not options.compile and device.type == "cuda" and triton_available():
        fuse_modules(vae)
    return vae
