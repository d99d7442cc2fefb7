"""Triton kernels for GEGLU, a resnet's bias + residual and residual add + LayerNorm (imported only when
triton is installed; CUDA at run time). The GroupNorm kernels are in group_norm.py; their wrappers
are re-exported here, so the fused modules and the start-up check take their kernels from one module.

Why: after CUDA graphs remove launch overhead, these element-wise pairs are memory-bound. Fusing them saves
one full read and write of the activation per pair (GELU then the gate product; a conv's bias, the shortcut
and the residual; the residual add and the next LayerNorm). All arithmetic is fp32, one rounding at the end.
Integers that address whole activations are specialised on (divisible by 16, as every SD shape), so Triton
can prove the 16-byte alignment its vector loads and stores need (tests/accel/test_triton_compile.py checks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sd2_app.accel.kernels.group_norm import group_norm_and_biased_input, group_norm_silu  # noqa: F401 - re-exported

_GEGLU_BLOCK = 1024


@triton.jit(do_not_specialize=["two_biases"])  # n, channels: specialised (divisible by 16) for vector loads
def _bias_residual_kernel(a_ptr, r_ptr, bias_ptr, bias2_ptr, y_ptr, n, channels, two_biases, scale,
                          BLOCK: tl.constexpr):
    # y = (a + bias[c] (+ bias2[c]) + r) * scale over channels-last memory (c = flat index % channels): a
    # conv's output without its bias, the block's shortcut (a second conv's bias when it is one), and the
    # output scale, in one pass instead of three or four.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = offs % channels
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
    if two_biases > 0:
        bias += tl.load(bias2_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, ((a + bias + r) * scale).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows", "has_residual", "has_sum_bias"])
def _layer_norm_kernel(x_ptr, r_ptr, sum_ptr, sb_ptr, y_ptr, w_ptr, b_ptr, rows, channels, eps, has_residual,
                       has_sum_bias, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # y = layer_norm(v) with v = x, or v = x + r rounded to x's dtype (also written to sum_ptr, plus sb[c]
    # when has_sum_bias), for BLOCK_R whole rows per program held in registers: each element is read and
    # written once. Statistics in fp32, two passes over the registers (mean, then squared deviations): no
    # E[x^2] - E[x]^2 cancellation.
    rows_idx = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < channels
    mask = (rows_idx < rows)[:, None] & cmask[None, :]
    offs = rows_idx.to(tl.int64)[:, None] * channels + cols[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if has_residual > 0:
        v = (v.to(tl.float32) + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32))
        v = v.to(sum_ptr.dtype.element_ty)
        if has_sum_bias > 0:
            sb = tl.load(sb_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(sum_ptr + offs, (v.to(tl.float32) + sb[None, :]).to(sum_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(sum_ptr + offs, v, mask=mask)
    v = v.to(tl.float32)
    mean = tl.sum(v, axis=1) / channels
    d = tl.where(mask, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / channels + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _geglu_kernel(p_ptr, y_ptr, inner, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    value = tl.load(p_ptr + row * 2 * inner + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(p_ptr + row * 2 * inner + inner + cols, mask=mask, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))  # exact (erf) GELU
    tl.store(y_ptr + row * inner + cols, (value * gelu).to(y_ptr.dtype.element_ty), mask=mask)


_RESIDUAL_BLOCK = 2048


def bias_residual(a: Tensor, bias: Tensor, residual: Tensor, scale: float = 1.0,
                  bias2: Tensor | None = None) -> Tensor:
    """(a + bias (+ bias2) + residual) * scale, biases broadcast over channels, for channels_last
    (B, C, H, W) tensors `a` and `residual` of one shape and dtype; (C,) biases of any float dtype. Sums in
    fp32, one rounding at the end."""
    channels_last = torch.channels_last
    assert a.shape == residual.shape and a.dtype == residual.dtype and a.dim() == 4
    assert a.is_contiguous(memory_format=channels_last) and residual.is_contiguous(memory_format=channels_last)
    assert bias.shape == (a.shape[1],) and bias.is_contiguous()
    assert bias2 is None or (bias2.shape == bias.shape and bias2.is_contiguous())
    y = torch.empty_like(a)
    n = a.numel()
    _bias_residual_kernel[(triton.cdiv(n, _RESIDUAL_BLOCK),)](
        a, residual, bias, bias if bias2 is None else bias2, y, n, a.shape[1], int(bias2 is not None), scale,
        BLOCK=_RESIDUAL_BLOCK)
    return y


def geglu(projected: Tensor) -> Tensor:
    """value * gelu(gate) where (value, gate) are the two halves of the last dim of a contiguous tensor."""
    assert projected.is_contiguous() and projected.shape[-1] % 2 == 0
    inner = projected.shape[-1] // 2
    rows = projected.numel() // (2 * inner)
    y = projected.new_empty((*projected.shape[:-1], inner))
    _geglu_kernel[(rows, triton.cdiv(inner, _GEGLU_BLOCK))](projected, y, inner, BLOCK=_GEGLU_BLOCK)
    return y


_LN_TILE = 2048  # elements of registers per program: 4 rows of 320, 2 of 640, 1 of 1280


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None,
               sum_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(v, layer_norm(v)) over the last dim of a contiguous tensor, with v = x, or v = x + residual (rounded
    to x's dtype, as the unfused add would be) when a residual is given: the transformer block's residual
    add and the next norm in one pass. With `sum_bias` (needs a residual) the first output is v + sum_bias
    (the norm still sees v): the stream with the next Linear's bias already in it, which a matmul can then
    accumulate onto. Compiles once per power-of-two row width (512, 1024, 2048 in SD2)."""
    assert x.is_contiguous() and weight.shape == (x.shape[-1],)
    assert sum_bias is None or (residual is not None and sum_bias.shape == weight.shape and sum_bias.is_contiguous())
    channels = x.shape[-1]
    rows = x.numel() // channels
    block_c = triton.next_power_of_2(channels)
    block_r = max(1, _LN_TILE // block_c)
    y = torch.empty_like(x)
    if residual is None:
        total = x
    else:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.is_contiguous()
        total = torch.empty_like(x)
    _layer_norm_kernel[(triton.cdiv(rows, block_r),)](
        x, x if residual is None else residual, total, weight if sum_bias is None else sum_bias, y, weight, bias,
        rows, channels, eps, int(residual is not None), int(sum_bias is not None), BLOCK_R=block_r, BLOCK_C=block_c)
    return total, y
