"""The start-up checks of the Triton kernels: each is run once on random data against the eager math, on the
device, dtype and layout in use, before fuse_modules swaps anything in.

Why: a kernel that is wrong on some GPU or Triton version would otherwise change every image silently (the
CUDA-graph check compares against the same fused modules); a kernel that fails or disagrees keeps the eager
ops. The shapes are chosen so that the kernels compiled here are the ones the first image runs (each JIT
compile costs the first image about a second).
"""

from __future__ import annotations

import logging
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@cache
def geglu_matmul_agrees(device_index: int, dtype: torch.dtype) -> bool:
    """The GEGLU matmul kernel against cuBLAS + the eager gate on random data (once per device and dtype);
    a kernel that fails or disagrees keeps the two-kernel path."""
    from sd2_app.accel.triton_geglu import geglu_matmul

    device = torch.device("cuda", device_index)
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 77, 320, device=device, dtype=dtype, generator=generator)
    weight = torch.randn(2 * 96, 320, device=device, dtype=dtype, generator=generator) * 0.05
    bias = torch.randn(2 * 96, device=device, dtype=dtype, generator=generator)
    try:
        with torch.no_grad():
            value, gate = F.linear(x.float(), weight.float(), bias.float()).chunk(2, dim=-1)
            error = (geglu_matmul(x, weight, bias).float() - value * F.gelu(gate)).abs().max()
    except Exception as e:  # noqa: BLE001 - a kernel that fails to compile or launch
        logger.warning("GEGLU matmul kernel failed its start-up check (%s: %s); keeping cuBLAS + the gate kernel",
                       type(e).__name__, e)
        return False
    if not bool(error <= 2e-2):
        logger.warning("GEGLU matmul kernel disagrees with the eager math (%.3g); keeping cuBLAS + the gate kernel",
                       float(error))
        return False
    return True


@cache
def kernels_agree(device_index: int, dtype: torch.dtype, channels_last: bool = False) -> bool:
    """Run the Triton kernels of one activation layout (GroupNorm with and without SiLU, and GEGLU) once on
    random data against the eager math (once per device, dtype and layout).

    A kernel that is wrong on some GPU or Triton version would otherwise change every image silently
    (the CUDA-graph check compares against the same fused modules); a disagreement keeps the eager ops.
    Only the layout in use is checked: each kernel compiled here is a JIT compile the first image waits for.
    """
    from sd2_app.accel import triton_kernels

    device = torch.device("cuda", device_index)
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 64, 12, 10, device=device, dtype=dtype, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    norm = nn.GroupNorm(32, 64, eps=1e-5).to(device=device, dtype=dtype)
    try:
        errors = _kernel_errors(triton_kernels, norm, generator, x, dtype)
    except Exception as e:  # noqa: BLE001 - a kernel that fails to compile or launch: keep the eager ops
        logger.warning("Triton kernels failed their start-up check (%s: %s); keeping the eager ops",
                       type(e).__name__, e)
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    agree = all(bool(e <= tolerance) for e in errors)  # one host sync, once per process and layout
    if not agree:
        logger.warning("Triton kernels disagree with eager math (%s); keeping the eager ops",
                       ", ".join(f"{float(e):.3g}" for e in errors))
    return agree


def _kernel_errors(triton_kernels, norm: nn.GroupNorm, generator: torch.Generator, x: Tensor,
                   dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Max abs differences of the kernels from the fp32 eager math on random inputs (for channels_last x
    also the resnet's shifted GroupNorm, its bias + residual kernel, the one-launch GroupNorm, the
    GroupNorm of a concatenation read from its two parts and the one that also writes its biased input)."""
    with torch.no_grad():
        norm.weight.normal_(generator=generator)
        norm.bias.normal_(generator=generator)
        projected = torch.randn(2, 77, 2 * 96, device=x.device, dtype=dtype, generator=generator)
        eager_norm = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
        with_silu = triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        plain = triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                               apply_silu=False)
        value, gate = projected.float().chunk(2, dim=-1)
        fused_geglu, eager_geglu = triton_kernels.geglu(projected), value * F.gelu(gate)
        errors = [(with_silu.float() - F.silu(eager_norm)).abs().max(), (plain.float() - eager_norm).abs().max(),
                  (fused_geglu.float() - eager_geglu).abs().max()]
        # 320 wide, as the UNet's first level: the kernel compiled here is the one the first image runs
        tokens, stream, ln_weight, ln_bias = (torch.randn(shape, device=x.device, dtype=dtype, generator=generator)
                                              for shape in ((2, 77, 320), (2, 77, 320), (320,), (320,)))
        summed, normed = triton_kernels.layer_norm(tokens, ln_weight, ln_bias, 1e-5, residual=stream)
        eager_sum = (tokens.float() + stream.float()).to(dtype).float()
        eager_ln = F.layer_norm(eager_sum, (320,), ln_weight.float(), ln_bias.float(), 1e-5)
        errors += [(summed.float() - eager_sum).abs().max(), (normed.float() - eager_ln).abs().max()]
        biased, _ = triton_kernels.layer_norm(tokens, ln_weight, ln_bias, 1e-5, residual=stream, sum_bias=ln_bias)
        errors.append((biased.float() - (eager_sum + ln_bias.float())).abs().max())
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            channels = x.shape[1]
            conv_bias = torch.randn(channels, device=x.device, dtype=dtype, generator=generator)
            temb = torch.randn(x.shape[0], channels, device=x.device, dtype=dtype, generator=generator)
            shifted_input = x.float() + conv_bias.float()[None, :, None, None] + temb.float()[:, :, None, None]
            shifted = triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                     shift_bias=conv_bias, shift_temb=temb)
            eager_shifted = F.silu(F.group_norm(shifted_input, 32, norm.weight.float(), norm.bias.float(), norm.eps))
            residual = torch.randn(x.shape, device=x.device, dtype=dtype, generator=generator)
            residual = residual.contiguous(memory_format=torch.channels_last)
            summed = triton_kernels.bias_residual(x, conv_bias, residual, 0.5, bias2=temb[0].contiguous())
            biases = (conv_bias.float() + temb[0].float())[None, :, None, None]
            eager_sum = (x.float() + biases + residual.float()) * 0.5
            errors += [(shifted.float() - eager_shifted).abs().max(), (summed.float() - eager_sum).abs().max()]
            # the one-launch kernel of small groups, with the shift and SiLU and with neither
            whole = x[0].numel()
            one_shifted = triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                         shift_bias=conv_bias, shift_temb=temb, one_kernel_max=whole)
            one_plain = triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                       apply_silu=False, one_kernel_max=whole)
            errors += [(one_shifted.float() - eager_shifted).abs().max(), (one_plain.float() - eager_norm).abs().max()]
            # the up path's norm of cat([x, skip]) read from two tensors, and the norm that also writes the
            # biased input (a Transformer2D's), both kernel paths
            head, tail = (part.contiguous(memory_format=torch.channels_last) for part in x.split(channels // 2, 1))
            for limit in (0, whole):
                two = triton_kernels.group_norm_silu(head, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                     apply_silu=False, one_kernel_max=limit, concat=tail)
                normed, biased = triton_kernels.group_norm_and_biased_input(
                    x, norm.num_groups, norm.weight, norm.bias, norm.eps, conv_bias, one_kernel_max=limit)
                errors += [(two.float() - eager_norm).abs().max(), (normed.float() - eager_norm).abs().max(),
                           (biased.float() - (x.float() + conv_bias.float()[None, :, None, None])).abs().max()]
    return tuple(errors)
