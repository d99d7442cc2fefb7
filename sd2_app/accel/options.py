"""The speed switches as one object, and the two calls that apply them to a loaded UNet and VAE.

The manager (or the bench) decides once, after loading, and hands the result to the pipelines; nothing
below the loop knows which switches are on. Defaults are the "default path" of the app: no long compile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from sd2_app.accel.compile import compile_blocks, compile_unet
from sd2_app.accel.cuda_graph import CudaGraphUNet
from sd2_app.accel.fused import GROUP_NORM_ONE_KERNEL_MAX, fuse_modules, triton_available
from sd2_app.accel.vae_attention import use_half_products

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccelOptions:
    cuda_graphs: bool = True  # capture the UNet and text-encoder forwards per shape (CUDA only)
    # Triton kernels (CUDA + triton only; eager math otherwise): GroupNorm+SiLU, GEGLU, and with channels_last
    # a resnet's conv biases and time embedding folded into its norm and residual kernels; add+LayerNorm.
    fused_ops: bool = True
    # NHWC activations: cuDNN's tensor-core convolutions need no layout transposes, and with `fused_ops` the
    # GroupNorms run the NHWC Triton kernel (PyTorch's would copy to NCHW and back). Measured on an H200,
    # fp16, one UNet call at 512 (batch 2): 9.8 ms NCHW -> 6.8 ms; VAE decode at 512: 9.5 -> 7.8 ms.
    channels_last: bool = True
    vae_channels_last: bool = True
    # channels_last GroupNorms whose groups have at most this many elements run as one kernel (0: never);
    # see fused.GROUP_NORM_ONE_KERNEL_MAX
    group_norm_one_kernel_max: int = GROUP_NORM_ONE_KERNEL_MAX
    # with fused_ops: q, k, v (self-attention) and k, v (cross-attention) projections as one matmul each,
    # their weights made views into one tensor (see fused_attention.py)
    stack_projections: bool = True
    # an experiment, off until timed: GEGLU's projection and gate as one Triton matmul (triton_geglu.py)
    geglu_matmul: bool = False
    # with fused_ops: nearest x2 + 3x3 conv as four 2x2 convs on the small input (upsample.py), UNet and VAE
    subpixel_upsample: bool = True
    # with fused_ops + channels_last: an up-path resnet reads its input and skip connection as two tensors
    # (a two-source GroupNorm, the 1x1 shortcut as two matmuls) instead of concatenating them first
    read_skips: bool = True
    # with fused_ops + channels_last: each Transformer2D's residual add inside its proj_out matmul (the norm's
    # kernel writes the residual plus proj_out's bias; see fused_transformer2d.py)
    residual_in_proj_out: bool = True
    compile: bool = False  # torch.compile of the UNet (about a minute per resolution; see compile.py)
    compile_scope: str = "unet"  # "unet": the whole network; "blocks": the repeated blocks only (regional)
    compile_mode: str | None = None  # inductor's mode; None is its default (max-autotune: many minutes)
    # cuDNN's per-shape algorithm search (torch.backends.cudnn.benchmark): run at each new shape's first call
    # (0.5-2.5 s per new shape on an H200, same image speed: docs/PERFORMANCE.md run 11); off, cuDNN's
    # heuristics pick the algorithms
    cudnn_benchmark: bool = True
    tf32: bool = False  # fp32 matmuls in TF32: faster, ~1e-3 relative error; off so fp32 matmuls (upcast attention) stay exact
    vae_fp16_fallback: bool = True  # decode in fp16, retry in fp32 on inf/NaN
    # in an fp32 VAE decode (the x4 upscaler's), the mid-block attention product from fp16 inputs with fp32
    # accumulation, unless they would overflow (see vae_attention.py)
    vae_attention_fp16: bool = True

    @classmethod
    def eager(cls) -> AccelOptions:
        """Everything off: the plain modules (the baseline the bench compares against)."""
        return cls(cuda_graphs=False, fused_ops=False, channels_last=False, vae_channels_last=False,
                   compile=False, tf32=False, vae_fp16_fallback=False, vae_attention_fp16=False)

    @classmethod
    def compiled(cls) -> AccelOptions:
        """The --compile path: the whole UNet compiled by inductor (which fuses its element-wise ops itself),
        replayed by CUDA graphs; the VAE keeps the fused kernels."""
        return cls(compile=True)


SPEED_MODES = ("default", "compile", "eager")  # the --speed flag of app.py and the CLI


def options_for(mode: str) -> AccelOptions:
    """The switches behind `--speed`: default (graphs + fused ops + channels_last, seconds of warm-up),
    compile (whole-UNet torch.compile + graphs, about a minute of warm-up per resolution), eager (plain
    modules, for comparison or debugging)."""
    if mode not in SPEED_MODES:
        raise ValueError(f"unknown speed mode {mode!r}; choose one of {', '.join(SPEED_MODES)}")
    return {"default": AccelOptions, "compile": AccelOptions.compiled, "eager": AccelOptions.eager}[mode]()


def accelerate_unet(unet: nn.Module, options: AccelOptions) -> nn.Module | CudaGraphUNet:
    """Apply the UNet switches in place and return what the loop should call (the UNet or its graph wrapper).

    On CPU only the exact ones apply (fused-op swaps are skipped, graphs fall back to eager), so the
    returned object computes the same numbers as `unet` there.
    """
    if isinstance(unet, CudaGraphUNet):
        return unet  # already accelerated (the switches change modules in place: apply them once)
    device = next(unet.parameters()).device
    on_cuda = device.type == "cuda"
    if options.channels_last and on_cuda:
        unet.to(memory_format=torch.channels_last)
    if options.compile:
        if options.compile_scope == "blocks":
            compile_blocks(unet, mode=options.compile_mode)
        else:
            compile_unet(unet, mode=options.compile_mode)
    elif options.fused_ops and on_cuda and triton_available():
        fuse_modules(unet, channels_last=options.channels_last, one_kernel_max=options.group_norm_one_kernel_max,
                     stack_projections=options.stack_projections, geglu_matmul=options.geglu_matmul,
                     subpixel_upsample=options.subpixel_upsample, read_skips=options.read_skips,
                     residual_in_proj_out=options.residual_in_proj_out)
    if options.cuda_graphs:
        return CudaGraphUNet(unet)
    return unet


def accelerate_vae(vae: nn.Module, options: AccelOptions) -> nn.Module:
    """Fused GroupNorm(+SiLU) in the VAE (its largest memory-bound ops), NHWC if asked for, and the fp16
    attention product of fp32 decodes."""
    device = next(vae.parameters()).device
    if options.vae_channels_last and device.type == "cuda":
        vae.to(memory_format=torch.channels_last)
    if options.fused_ops and device.type == "cuda" and triton_available():
        fuse_modules(vae, channels_last=options.vae_channels_last,
                     one_kernel_max=options.group_norm_one_kernel_max, subpixel_upsample=options.subpixel_upsample)
    if options.vae_attention_fp16 and device.type == "cuda":
        use_half_products(vae)
    return vae
