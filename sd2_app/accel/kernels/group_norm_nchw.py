"""Triton GroupNorm(+SiLU) kernels for NCHW-contiguous activations (the channels_last ones, which the default
path runs, are in triton_group_norm.py, whose `group_norm_silu` dispatches here).

NCHW: a group is one contiguous run of memory, so each program reduces one chunk of it (mean and M2 in fp32)
and the apply kernel merges the group's chunks (Chan et al.'s parallel variance) before normalising its
chunk: two launches, no E[x^2]-E[x]^2 cancellation, every SM busy even when batch * groups is small.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_CHUNK = 4096  # elements of one group handled by one program
_BLOCK = 1024  # elements loaded per loop iteration


@triton.jit
def _group_partial_kernel(x_ptr, mean_ptr, m2_ptr, n_per_group, num_chunks,
                          CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    group = tl.program_id(0)  # b * G + g
    chunk = tl.program_id(1)
    base = group.to(tl.int64) * n_per_group
    start = chunk * CHUNK
    count = tl.minimum(n_per_group - start, CHUNK).to(tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n_per_group
        acc += tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / count
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < n_per_group
        v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, v - mean, 0.0)
        acc2 += d * d
    tl.store(mean_ptr + group * num_chunks + chunk, mean)
    tl.store(m2_ptr + group * num_chunks + chunk, tl.sum(acc2, axis=0))


@triton.jit
def _group_norm_silu_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, m2_ptr, n_per_group, hw, channels_per_group,
                            num_groups, num_chunks, eps, APPLY_SILU: tl.constexpr, CHUNK: tl.constexpr,
                            BLOCK: tl.constexpr, CHUNKS_POW2: tl.constexpr):
    group = tl.program_id(0)
    chunk = tl.program_id(1)
    # Merge the per-chunk statistics of this group (tiny: at most a few hundred chunks).
    j = tl.arange(0, CHUNKS_POW2)
    valid = j < num_chunks
    means = tl.load(mean_ptr + group * num_chunks + j, mask=valid, other=0.0)
    m2s = tl.load(m2_ptr + group * num_chunks + j, mask=valid, other=0.0)
    counts = tl.where(valid, tl.minimum(n_per_group - j * CHUNK, CHUNK).to(tl.float32), 0.0)
    n = n_per_group.to(tl.float32)
    mean = tl.sum(counts * means, axis=0) / n
    d = means - mean
    m2 = tl.sum(m2s, axis=0) + tl.sum(counts * d * d, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / n + eps)
    first_channel = (group % num_groups) * channels_per_group
    base = group.to(tl.int64) * n_per_group
    for i in range(0, CHUNK, BLOCK):
        offs = chunk * CHUNK + i + tl.arange(0, BLOCK)
        mask = offs < n_per_group
        v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        c = first_channel + offs // hw
        w = tl.load(w_ptr + c, mask=mask, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
        y = (v - mean) * rstd * w + b
        if APPLY_SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_nchw(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float,
                    apply_silu: bool) -> Tensor:
    """silu(group_norm(x)) (or group_norm(x)) for a contiguous (B, C, *spatial) tensor; same dtype."""
    assert x.is_contiguous() and x.shape[1] % num_groups == 0
    batch, channels = x.shape[:2]
    hw = x[0, 0].numel()
    n_per_group = channels // num_groups * hw
    num_chunks = triton.cdiv(n_per_group, _CHUNK)
    groups = batch * num_groups
    means = torch.empty((groups, num_chunks), dtype=torch.float32, device=x.device)
    m2s = torch.empty_like(means)
    y = torch.empty_like(x)
    grid = (groups, num_chunks)
    _group_partial_kernel[grid](x, means, m2s, n_per_group, num_chunks, CHUNK=_CHUNK, BLOCK=_BLOCK)
    _group_norm_silu_kernel[grid](x, y, weight, bias, means, m2s, n_per_group, hw, channels // num_groups,
                                  num_groups, num_chunks, eps, APPLY_SILU=apply_silu, CHUNK=_CHUNK,
                                  BLOCK=_BLOCK, CHUNKS_POW2=triton.next_power_of_2(num_chunks))
    return y
