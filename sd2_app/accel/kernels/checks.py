"""The start-up checks of the Triton kernels: each is run once on random data against the eager math, on the
device, dtype and layout in use, before fuse_modules swaps anything in.

Why: a kernel that is wrong on some GPU or Triton version would otherwise change every image silently (the
CUDA-graph check compares against the same fused modules); a kernel that fails or disagrees keeps the eager
ops. The shapes are chosen so that the kernels compiled here are the ones the first image runs (each JIT
compile costs the first image about a second).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# threads the start-up check runs its cases on (the first kernels' JIT compiles overlap; 1: one by one)
CHECK_THREADS = 8


@cache
def kernels_agree(device_index: int, dtype: torch.dtype, channels_last: bool = False) -> bool:
    """Run the Triton kernels of one activation layout (GroupNorm with and without SiLU, and GEGLU) once on
    random data against the eager math (once per device, dtype and layout).

    A kernel that is wrong on some GPU or Triton version would otherwise change every image silently
    (the CUDA-graph check compares against the same fused modules); a disagreement keeps the eager ops.
    Only the layout in use is checked: each kernel compiled here is a JIT compile the first image waits for.
    """
    from sd2_app.accel.kernels import elementwise as triton_kernels

    device = torch.device("cuda", device_index)
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 64, 12, 10, device=device, dtype=dtype, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    norm = nn.GroupNorm(32, 64, eps=1e-5).to(device=device, dtype=dtype)
    try:
        errors = _kernel_errors(triton_kernels, norm, generator, x, dtype, threads=CHECK_THREADS)
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
                   dtype: torch.dtype, threads: int | None = None) -> tuple[Tensor, ...]:
    """Max abs differences of the kernels from the fp32 eager math on random inputs (for channels_last x
    also the resnet's shifted GroupNorm, its bias + residual kernel, the GroupNorm of a concatenation read from
    its two parts and the one that also writes its biased input).

    The inputs are drawn first, in one order; then the cases run on `threads` threads (default CHECK_THREADS):
    each case's first launch is a JIT compile, and Triton compiles with the GIL mostly released, so a cold
    start compiles several kernels at once (10 kernels for sm_90 on a 2-core CPU with Triton 3.6.0: 4.2 s one
    by one, 2.7 s on two threads). The first case (one small kernel) runs alone: it pays Triton's one-time
    set-up, which is not made for threads. docs/PERFORMANCE.md has the check's cold-start cost on a GPU.
    """
    with torch.no_grad():
        cases = _cases(triton_kernels, norm, generator, x, dtype)
        errors = list(cases[0]())
    workers = min(threads or CHECK_THREADS, os.cpu_count() or 1, len(cases) - 1)
    if workers <= 1:
        with torch.no_grad():
            return tuple(errors + [e for case in cases[1:] for e in case()])

    def run(case: Callable[[], list[Tensor]]) -> list[Tensor]:
        with torch.no_grad():  # (grad mode is per thread)
            return case()

    with ThreadPoolExecutor(workers, thread_name_prefix="kernel-check") as pool:
        return tuple(errors + [e for case_errors in pool.map(run, cases[1:]) for e in case_errors])


Case = Callable[[], list[Tensor]]  # one independent check: its max abs errors


def _error(got: Tensor, want: Tensor) -> Tensor:
    return (got.float() - want).abs().max()


def _group_norm(k, norm: nn.GroupNorm, v: Tensor, **kwargs) -> Tensor:
    return k.group_norm_silu(v, norm.num_groups, norm.weight, norm.bias, norm.eps, **kwargs)


def _cases(k, norm: nn.GroupNorm, generator: torch.Generator, x: Tensor, dtype: torch.dtype) -> list[Case]:
    """The checks as independent callables, each returning its max abs errors; kernels that share compiled
    code (the GroupNorm statistics of one variant) are in one case, so no two threads compile the same one.
    The random inputs are drawn here, in one fixed order, before any case runs."""
    device = x.device
    norm.weight.normal_(generator=generator)
    norm.bias.normal_(generator=generator)
    projected = torch.randn(2, 77, 2 * 96, device=device, dtype=dtype, generator=generator)
    eager_norm = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps)
    value, gate = projected.float().chunk(2, dim=-1)
    # the UNet's three widths: the kernel compiles once per power-of-two row width (512, 1024, 2048 columns),
    # and each compiled here is one the first image's UNet warm-up would otherwise compile, one by one
    rows = {width: tuple(torch.randn(shape, device=device, dtype=dtype, generator=generator)
                         for shape in ((2, 77, width), (2, 77, width), (width,), (width,)))
            for width in (320, 640, 1280)}
    gn = partial(_group_norm, k, norm)
    cases: list[Case] = [
        lambda: [_error(k.geglu(projected), value * F.gelu(gate))],  # first, alone: one small kernel
        lambda: [_error(gn(x), F.silu(eager_norm)), _error(gn(x, apply_silu=False), eager_norm)],
        *(partial(_layer_norms, k, width, *rows[width]) for width in rows),
    ]
    if not (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
        return cases
    return cases + _channels_last_cases(k, norm, generator, x, dtype, eager_norm)


def _layer_norms(k, width: int, tokens: Tensor, stream: Tensor, ln_weight: Tensor, ln_bias: Tensor) -> list[Tensor]:
    """The LayerNorm kernel that also adds the residual stream, at one row width."""
    eager_sum = (tokens.float() + stream.float()).to(tokens.dtype).float()
    eager_ln = F.layer_norm(eager_sum, (width,), ln_weight.float(), ln_bias.float(), 1e-5)
    summed, normed = k.layer_norm(tokens, ln_weight, ln_bias, 1e-5, residual=stream)
    errors = [_error(summed, eager_sum), _error(normed, eager_ln)]
    if width == 320:  # the first output with the next Linear's bias in it (a runtime flag: same kernel)
        biased, _ = k.layer_norm(tokens, ln_weight, ln_bias, 1e-5, residual=stream, sum_bias=ln_bias)
        errors.append(_error(biased, eager_sum + ln_bias.float()))
    return errors


def _channels_last_cases(k, norm: nn.GroupNorm, generator: torch.Generator, x: Tensor, dtype: torch.dtype,
                         eager_norm: Tensor) -> list[Case]:
    """The kernels only the channels_last resnet path uses: the shifted GroupNorm, bias + residual, the
    GroupNorm of a concatenation read from its two parts and the one that also writes its biased input."""
    device, channels = x.device, x.shape[1]
    gn = partial(_group_norm, k, norm)
    conv_bias = torch.randn(channels, device=device, dtype=dtype, generator=generator)
    temb = torch.randn(x.shape[0], channels, device=device, dtype=dtype, generator=generator)
    shifted_input = x.float() + conv_bias.float()[None, :, None, None] + temb.float()[:, :, None, None]
    eager_shifted = F.silu(F.group_norm(shifted_input, 32, norm.weight.float(), norm.bias.float(), norm.eps))
    residual = torch.randn(x.shape, device=device, dtype=dtype, generator=generator)
    residual = residual.contiguous(memory_format=torch.channels_last)
    eager_residual = (x.float() + (conv_bias.float() + temb[0].float())[None, :, None, None] + residual.float()) * 0.5
    head, tail = (part.contiguous(memory_format=torch.channels_last) for part in x.split(channels // 2, 1))
    eager_biased = x.float() + conv_bias.float()[None, :, None, None]

    def shifted() -> list[Tensor]:
        return [_error(gn(x, shift_bias=conv_bias, shift_temb=temb), eager_shifted)]

    def two_sources() -> list[Tensor]:  # the up path's norm of cat([x, skip]) read from two tensors
        return [_error(gn(head, apply_silu=False, concat=tail), eager_norm)]

    def with_biased_input() -> list[Tensor]:  # a Transformer2D's norm, also writing its biased input
        normed, biased = k.group_norm_and_biased_input(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                       conv_bias)
        return [_error(normed, eager_norm), _error(biased, eager_biased)]

    def bias_residual() -> list[Tensor]:
        return [_error(k.bias_residual(x, conv_bias, residual, 0.5, bias2=temb[0].contiguous()), eager_residual)]

    return [bias_residual, shifted, two_sources, with_biased_input]
