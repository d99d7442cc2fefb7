"""GEGLU's projection and gate in one Triton matmul: y = value * gelu(gate), [value, gate] = x W^T + b.

Why: the feed-forward's projection is twice as wide as what GEGLU keeps. Done as a cuBLAS matmul and then
the gate kernel, the 2x-wide fp16 intermediate is written once and read back once: at 512 px that is 84 MB
per 64x64-level block, and the gate kernel was 0.22 ms of a 6.3 ms UNet call in the run-5 profile. Here
each program computes a (rows x columns) tile of the value half and the same tile of the gate half from
one read of the input tile, and writes only the product.

Rounding follows the unfused path: both halves are rounded to the activation dtype after the bias (as the
matmul's output would be), then the gate is applied in fp32 and rounded once.

An experiment (`AccelOptions.geglu_matmul`, off by default) until a GPU run shows it beats cuBLAS + the
gate kernel: one fixed tile configuration (no autotuning, whose compiles the first image would wait for).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK_M = 128
_BLOCK_N = 64
_BLOCK_K = 64
_GROUP_M = 8  # row tiles walked together, so the weight tiles they share stay in L2
_WARPS = 8
_STAGES = 3


@triton.jit  # integers specialised (divisible by 16 or not): aligned, vectorised, pipelined tile loads
def _geglu_matmul_kernel(x_ptr, w_ptr, b_ptr, y_ptr, rows, k_dim, inner, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # x: (rows, k) row-major; w: (2 * inner, k) row-major (value rows, then gate rows); y: (rows, inner)
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(rows, BLOCK_M)
    tiles_n = tl.cdiv(inner, BLOCK_N)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % in_group) % group_rows
    tile_n = (pid % in_group) // group_rows
    rm = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < rows
    n_ok = rn < inner
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * k_dim
    value_cols = w_ptr + rn.to(tl.int64)[None, :] * k_dim  # (BLOCK_K, BLOCK_N) tiles of W^T
    gate_cols = w_ptr + (rn + inner).to(tl.int64)[None, :] * k_dim
    acc_value = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        k = k0 + rk
        k_ok = k < k_dim
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        acc_value = tl.dot(x, tl.load(value_cols + k[:, None], mask=w_mask, other=0.0), acc_value)
        acc_gate = tl.dot(x, tl.load(gate_cols + k[:, None], mask=w_mask, other=0.0), acc_gate)
    out_type = y_ptr.dtype.element_ty
    value = (acc_value + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :])
    gate = (acc_gate + tl.load(b_ptr + inner + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :])
    value = value.to(out_type).to(tl.float32)
    gate = gate.to(out_type).to(tl.float32)
    y = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))  # exact (erf) GELU
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * inner + rn[None, :], y.to(out_type),
             mask=m_ok[:, None] & n_ok[None, :])


def geglu_matmul(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """value * gelu(gate) of [value, gate] = x @ weight.T + bias, without the 2x-wide intermediate.

    x: (..., k) contiguous; weight: (2 * inner, k) contiguous; bias: (2 * inner,). Returns (..., inner).
    """
    assert x.is_contiguous() and weight.is_contiguous() and bias.is_contiguous()
    k_dim = x.shape[-1]
    assert weight.dim() == 2 and weight.shape[1] == k_dim and weight.shape[0] % 2 == 0
    inner = weight.shape[0] // 2
    rows = x.numel() // k_dim
    y = torch.empty((*x.shape[:-1], inner), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(rows, _BLOCK_M) * triton.cdiv(inner, _BLOCK_N),)
    _geglu_matmul_kernel[grid](x, weight, bias, y, rows, k_dim, inner, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
                               BLOCK_K=_BLOCK_K, GROUP_M=_GROUP_M, num_warps=_WARPS, num_stages=_STAGES)
    return y
