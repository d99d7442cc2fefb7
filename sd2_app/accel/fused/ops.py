"""The fused element-wise ops and when they run: Triton kernels for contiguous (or channels_last) CUDA
tensors with triton installed, the eager math everywhere else (the unfused math itself, so CPU results are
identical). Also the two small module twins that only swap an op: FusedGroupNorm, FusedGEGLU."""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.nn.attention import GEGLU


@cache
def triton_available() -> bool:
    """True when triton can be imported (CUDA builds of torch ship it); checked once per process."""
    return importlib.util.find_spec("triton") is not None


def _use_norm_kernel(x: Tensor, norm: nn.GroupNorm) -> bool:
    """NCHW-contiguous or channels_last 4-D CUDA tensors of the norm's dtype (the kernels' layouts)."""
    layout_ok = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    return (x.is_cuda and layout_ok and triton_available() and norm.affine and x.dim() >= 3
            and x.dtype == norm.weight.dtype)


def channels_last_kernels(x: Tensor, norm: nn.GroupNorm) -> bool:
    """The NHWC fast paths (resnets, Transformer2D): channels_last CUDA activations the NHWC kernels take."""
    return (x.is_cuda and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) and triton_available() and norm.affine
            and x.dtype == norm.weight.dtype)


def group_norm_silu(x: Tensor, norm: nn.GroupNorm, *, apply_silu: bool = True) -> Tensor:
    """silu(norm(x)) (or norm(x)): fused kernels on CUDA in either layout, the eager ops elsewhere."""
    if _use_norm_kernel(x, norm):
        from sd2_app.accel.kernels import elementwise

        return elementwise.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                           apply_silu=apply_silu)
    y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.silu(y) if apply_silu else y


def geglu(projected: Tensor) -> Tensor:
    """value * gelu(gate) over the two halves of the last dim (Shazeer 2020), fused on CUDA."""
    if projected.is_cuda and projected.is_contiguous() and triton_available():
        from sd2_app.accel.kernels import elementwise

        return elementwise.geglu(projected)
    value, gate = projected.chunk(2, dim=-1)
    return value * F.gelu(gate)


class FusedGroupNorm(nn.GroupNorm):
    """nn.GroupNorm through the Triton kernel (no SiLU): same parameters, same keys.

    Worth it mainly for channels_last activations, which PyTorch's CUDA GroupNorm copies to NCHW and back.
    """

    @classmethod
    def adopt(cls, norm: nn.GroupNorm) -> FusedGroupNorm:
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.num_groups, fused.num_channels, fused.eps, fused.affine = (norm.num_groups, norm.num_channels,
                                                                         norm.eps, norm.affine)
        fused.weight, fused.bias = norm.weight, norm.bias
        return fused

    def forward(self, x: Tensor) -> Tensor:
        return group_norm_silu(x, self, apply_silu=False)


class FusedGEGLU(nn.Module):
    """GEGLU with the gate product fused after the cuBLAS projection; adopts `proj`."""

    def __init__(self, block: GEGLU) -> None:
        super().__init__()
        self.proj = block.proj

    def forward(self, x: Tensor) -> Tensor:
        return geglu(self.proj(x))  # (..., inner)
