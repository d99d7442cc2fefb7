"""Triton GroupNorm(+SiLU) kernels for channels_last activations, and the entry point for both layouts
(the NCHW kernels are in group_norm_nchw.py; imported only when triton is installed; CUDA at run
time).

Why: after CUDA graphs remove launch overhead, GroupNorm then SiLU is memory-bound; one kernel saves a full
read and write of the activation, which matters most in the VAE decoder, whose 512x512x128 activations are
64 MB each in fp16. In a resnet block the NHWC kernels also take conv1's bias and the time embedding as a
per-(image, channel) shift (PyTorch adds a cuDNN convolution's bias in a separate broadcast kernel, 88 per
UNet call). They can also read
their input as the channel concatenation of two tensors (an up-path resnet's input and skip connection),
so the concatenation is never written.

All arithmetic is fp32 (inputs are upcast on load), as PyTorch's own GroupNorm kernel does for fp16.
Statistics use a two-level reduction: each program computes the mean and M2 of one chunk of a group, and the
chunks are merged (Chan et al.'s parallel variance; NCHW: in the apply kernel, NHWC: in a small kernel of its
own), so there is no E[x^2]-E[x]^2 cancellation and every SM has work even when batch * groups is small.

NCHW (group_norm_nchw.py): a group is one contiguous run of memory. NHWC (channels_last, where cuDNN's
tensor-core convolutions need no layout transposes): a group is a few adjacent channels of every pixel, so
these kernels work on (pixels x channels) tiles, reduce per channel first and merge the channels of a group in
a small second kernel. PyTorch's own CUDA GroupNorm would copy a channels_last tensor to NCHW and back, which
is what used to make channels_last a loss. Shape integers that vary between layers and do not address vector
loads are not specialised on, so a kernel compiles once per process rather than once per layer shape (each
Triton JIT compile takes about a second, paid by the first image).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sd2_app.accel.kernels.group_norm_nchw import group_norm_nchw


@triton.jit
def _shift(bias_ptr, temb_ptr, temb_stride, b, c, mask, shift_mode):
    # The per-(image, channel) term added to x before normalising, fp32, for a tensor of channel indices `c`
    # (per tile column, or a gather per element: L1 holds the few values): shift_mode 0 none, 1 bias[c] (a
    # conv's bias), 2 bias[c] + temb[b, c] (and the resnet's time embedding). A run-time switch, not a
    # constexpr: one compiled kernel serves all three.
    shift = tl.zeros(c.shape, dtype=tl.float32)
    if shift_mode > 0:
        shift += tl.load(bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
    if shift_mode > 1:
        shift += tl.load(temb_ptr + b * temb_stride + c, mask=mask, other=0.0).to(tl.float32)
    return shift


@triton.jit
def _load_nhwc(x_ptr, x2_ptr, b, pixels, cols, mask, hw, channels, split):
    # fp32 values at (pixels x cols) of image b: of x alone (split == channels), or of the channel
    # concatenation [x, x2] without building it (a UNet skip connection): channels below `split` from x,
    # which has `split` per pixel, the others from x2, which has channels - split. `split` is specialised
    # (divisible by 16), so both stay vector loads; a single source skips the second (a uniform branch).
    # `pixels` within the image: int64 where the caller's offsets could pass 2**31 elements.
    image = b.to(tl.int64) * hw
    first = cols < split
    v = tl.load(x_ptr + image * split + pixels * split + cols, mask=mask & first, other=0.0)
    if split < channels:
        second = channels - split
        v2 = tl.load(x2_ptr + image * second + pixels * second + (cols - split), mask=mask & (cols >= split),
                     other=0.0)
        v = tl.where(first, v, v2)
    return v.to(tl.float32)


@triton.jit(do_not_specialize=["temb_stride", "hw", "rows_per_chunk", "num_chunks", "shift_mode"])
def _nhwc_partial_kernel(x_ptr, x2_ptr, bias_ptr, temb_ptr, temb_stride, mean_ptr, m2_ptr, hw, channels, split,
                         rows_per_chunk, num_chunks, shift_mode, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    # Per-channel mean and M2 over one chunk of pixels of one image: grid (B, chunks, channel blocks).
    # The statistics are those of x + shift (see `_shift`): a conv's bias and the time embedding, added here
    # instead of in two full passes over the activation (a per-channel constant: it moves the mean only).
    # One pass over the chunk: sums of d = x - p and d^2 about a pivot p, the chunk's first pixel, give
    # mean = p + sum(d) / n and M2 = sum(d^2) - sum(d)^2 / n. A pivot drawn from the data keeps sum(d) near
    # zero, so the subtraction loses little (unlike sums of x and x^2); the chunks are then merged exactly.
    # The pivot is loaded after the first tile, not before it: the compiled code converts it to fp32 as soon
    # as it is loaded, so loaded first it cost a memory round trip of its own before the tile's loads were
    # issued; loaded after, it is a cache hit in the lines the tile just brought in.
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < channels
    first = chunk * rows_per_chunk
    end = tl.minimum(first + rows_per_chunk, hw)
    count = (end - first).to(tl.float32)
    offsets = tl.arange(0, BLOCK_HW)
    rows = first + offsets
    mask = (rows < end)[:, None] & cmask[None, :]
    v = _load_nhwc(x_ptr, x2_ptr, b, rows.to(tl.int64)[:, None], cols[None, :], mask, hw, channels, split)
    # the chunk's first pixel, loaded after the tile that holds it: a cache hit, and no reduction over the tile
    pivot = _load_nhwc(x_ptr, x2_ptr, b, first.to(tl.int64), cols, cmask, hw, channels, split)
    d = tl.where(mask, v - pivot[None, :], 0.0)
    sum_d = d
    sum_d2 = d * d
    for i in range(BLOCK_HW, rows_per_chunk, BLOCK_HW):
        rows = first + i + offsets
        mask = (rows < end)[:, None] & cmask[None, :]
        v = _load_nhwc(x_ptr, x2_ptr, b, rows.to(tl.int64)[:, None], cols[None, :], mask, hw, channels, split)
        d = tl.where(mask, v - pivot[None, :], 0.0)
        sum_d += d
        sum_d2 += d * d
    s1 = tl.sum(sum_d, axis=0)
    m2 = tl.maximum(tl.sum(sum_d2, axis=0) - s1 * s1 / count, 0.0)
    # the shift moves the mean, not M2: added once here rather than to every element
    mean = pivot + s1 / count + _shift(bias_ptr, temb_ptr, temb_stride, b, cols, cmask, shift_mode)
    out = (b * num_chunks + chunk) * channels + cols
    tl.store(mean_ptr + out, mean, mask=cmask)
    tl.store(m2_ptr + out, m2, mask=cmask)


@triton.jit
def _group_partials(mean_ptr, m2_ptr, base, i, total, channels, channels_per_group, hw, rows_per_chunk):
    # Partials i (numbered chunk * cpg + channel within the group) of one (image, group): their means, M2s
    # and pixel counts, all 0 past `total`.
    valid = i < total
    j = i // channels_per_group
    offs = base + j * channels + (i - j * channels_per_group)
    means = tl.load(mean_ptr + offs, mask=valid, other=0.0)
    m2s = tl.load(m2_ptr + offs, mask=valid, other=0.0)
    counts = tl.where(valid, tl.minimum(hw - j * rows_per_chunk, rows_per_chunk).to(tl.float32), 0.0)
    return means, m2s, counts


@triton.jit(do_not_specialize=["hw", "channels", "channels_per_group", "num_groups", "rows_per_chunk",
                               "num_chunks"])
def _nhwc_stats_kernel(mean_ptr, m2_ptr, stats_ptr, hw, channels, channels_per_group, num_groups,
                       rows_per_chunk, num_chunks, eps, BLOCK: tl.constexpr):
    # Merge the (chunk, channel) partials of one (image, group) into its mean and 1/std: grid (B * G,).
    # Chan et al.'s merge in one pass, as sums about a pivot p (the group's first partial mean): with
    # A = sum n_i (m_i - p), B = sum n_i (m_i - p)^2, C = sum M2_i, mean = p + A / N and M2 = C + B - A^2 / N.
    # A two-pass merge (the mean, then the spread about it) waits on twice as many loads, and this kernel is
    # nothing but a chain of loads from L2 (a few microseconds per GroupNorm): one block covers the partials
    # of most SD groups (up to 256 chunks x 8 channels), three the largest. The pivot is loaded on its own
    # (one address) rather than picked out of the first block, so no reduction waits for that block before
    # the rest of its loads are issued. The partials are visited as one flat run, so one compiled kernel
    # serves every shape.
    pid = tl.program_id(0)
    b = pid // num_groups
    g = pid % num_groups
    total = num_chunks * channels_per_group
    base = b * num_chunks * channels + g * channels_per_group
    i = tl.arange(0, BLOCK)
    pivot = tl.load(mean_ptr + base)  # chunk 0, the group's first channel: always a partial
    means, m2s, counts = _group_partials(mean_ptr, m2_ptr, base, i, total, channels, channels_per_group, hw,
                                         rows_per_chunk)
    d = means - pivot
    acc_a = counts * d
    acc_b = acc_a * d
    acc_c = m2s
    for start in range(BLOCK, total, BLOCK):
        means, m2s, counts = _group_partials(mean_ptr, m2_ptr, base, start + i, total, channels,
                                             channels_per_group, hw, rows_per_chunk)
        d = means - pivot
        acc_a += counts * d
        acc_b += counts * d * d
        acc_c += m2s
    n = hw.to(tl.float32) * channels_per_group
    a = tl.sum(acc_a, axis=0)
    m2 = tl.maximum(tl.sum(acc_c, axis=0) + tl.sum(acc_b, axis=0) - a * a / n, 0.0)
    tl.store(stats_ptr + pid * 2, pivot + a / n)
    tl.store(stats_ptr + pid * 2 + 1, 1.0 / tl.sqrt(m2 / n + eps))


@triton.jit(do_not_specialize=["temb_stride", "hw", "channels_per_group", "num_groups", "shift_mode", "has_sum"])
def _nhwc_apply_kernel(x_ptr, x2_ptr, bias_ptr, temb_ptr, temb_stride, y_ptr, w_ptr, b_ptr, stats_ptr, z_ptr,
                       zb_ptr, hw, channels, split, channels_per_group, num_groups, shift_mode, has_sum,
                       APPLY_SILU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    # y = (x + shift - mean) / std * w + b (then SiLU) on one (pixels x channels) tile, and with has_sum
    # also z = x + shift + zb[c] (the input plus a Linear's bias, see `group_norm_and_biased_input`):
    # grid (B, pixel blocks, channel blocks).
    b = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < channels
    mask = (rows < hw)[:, None] & cmask[None, :]
    # The tile first: the per-channel values below are small loads from L2, some behind run-time branches
    # (`_shift`) whose conversions wait for them; issued after those, the tile's load from memory would
    # start only once they returned.
    v = _load_nhwc(x_ptr, x2_ptr, b, rows.to(tl.int64)[:, None], cols[None, :], mask, hw, channels, split)
    stat = (b * num_groups + cols // channels_per_group) * 2
    mean = tl.load(stats_ptr + stat, mask=cmask, other=0.0)
    rstd = tl.load(stats_ptr + stat + 1, mask=cmask, other=0.0)
    scale = rstd * tl.load(w_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    # (x + s - mean) * scale + bias = x * scale + (bias + (s - mean) * scale)
    s = _shift(bias_ptr, temb_ptr, temb_stride, b, cols, cmask, shift_mode)
    shift = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32) + (s - mean) * scale
    y = v * scale[None, :] + shift[None, :]
    offs = b.to(tl.int64) * hw * channels + rows.to(tl.int64)[:, None] * channels + cols[None, :]
    if has_sum > 0:
        z = v + (s + tl.load(zb_ptr + cols, mask=cmask, other=0.0).to(tl.float32))[None, :]
        tl.store(z_ptr + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
    if APPLY_SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


_NHWC_BLOCK_HW = 32  # pixels per tile row block (statistics)
_NHWC_APPLY_HW = 64  # pixels per tile (apply)
_NHWC_BLOCK_C = 64  # channels per tile: 128 contiguous bytes in fp16
_NHWC_MAX_CHUNKS = 256  # pixel chunks per image: enough programs to fill the GPU, few partials to merge
_STATS_BLOCK = 2048  # partials merged per loop iteration (one iteration for up to 256 chunks x 8 channels)
_STATS_WARPS = 8  # 8 partials per thread per iteration


def group_norm_silu(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float,
                    *, apply_silu: bool = True, shift_bias: Tensor | None = None,
                    shift_temb: Tensor | None = None, concat: Tensor | None = None) -> Tensor:
    """silu(group_norm(x)) for a (B, C, *spatial) tensor, contiguous or channels_last; same dtype and layout.

    channels_last only: x + shift_bias[c] (+ shift_temb[b, c]) is normalised instead of x, summed in fp32
    on load (a conv's bias and a time embedding, (C,) and (B, C), any float dtype), never written out.
    With `concat` (B, C2, *spatial) of x's dtype, normalises cat([x, concat], dim=1) (C + C2 channels,
    the weights' count): for channels_last inputs the kernels read both tensors, and the concatenation,
    a full write and read of the activation, is never built.
    """
    if concat is not None and not (_is_channels_last(x) and _is_channels_last(concat)):
        x, concat = torch.cat([x, concat], dim=1), None
    if not x.is_contiguous() or shift_bias is not None or concat is not None:
        return _group_norm_nhwc(x, num_groups, weight, bias, eps, apply_silu, shift_bias, shift_temb, concat)[0]
    return group_norm_nchw(x, num_groups, weight, bias, eps, apply_silu)


def group_norm_and_biased_input(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float,
                                sum_bias: Tensor, *, apply_silu: bool = False) -> tuple[Tensor, Tensor]:
    """(group_norm(x) (then SiLU), x + sum_bias[c]) for a channels_last (B, C, H, W) tensor, in one pass.

    The second output is the residual stream with the next Linear's bias already in it, so that Linear can
    run as a matmul accumulating onto it (`addmm`): a Transformer2D's proj_out and its residual add in one
    kernel, instead of a matmul with a bias and a separate add that reads both tensors again.
    """
    assert _is_channels_last(x) and sum_bias.shape == (x.shape[1],) and sum_bias.is_contiguous()
    y, z = _group_norm_nhwc(x, num_groups, weight, bias, eps, apply_silu, sum_bias=sum_bias)
    assert z is not None
    return y, z


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _group_norm_nhwc(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float, apply_silu: bool,
                     shift_bias: Tensor | None = None, shift_temb: Tensor | None = None,
                     concat: Tensor | None = None, sum_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    assert _is_channels_last(x)
    batch, split, height, width = x.shape
    if concat is None:
        channels, second = split, x  # the second source is never read: every channel is below `split`
    else:
        assert _is_channels_last(concat) and concat.dtype == x.dtype and concat.device == x.device
        assert concat.shape[0] == batch and concat.shape[2:] == x.shape[2:]
        channels, second = split + concat.shape[1], concat
    shift_mode = 0 if shift_bias is None else (1 if shift_temb is None else 2)
    if shift_bias is not None:
        assert shift_bias.shape == (channels,) and shift_bias.is_contiguous()
    if shift_temb is not None:
        # a (B, C) view of a wider (B, N) tensor is fine: the kernels index rows by stride
        assert shift_temb.shape == (batch, channels) and shift_temb.stride(1) == 1
    assert channels % num_groups == 0
    hw = height * width
    cpg = channels // num_groups
    # Unused pointers get x: pointers of x's dtype in every call, so one compiled kernel serves all modes
    # (Triton compiles per pointer element type).
    bias_arg = x if shift_bias is None else shift_bias
    temb_arg = x if shift_temb is None else shift_temb
    temb_stride = channels if shift_temb is None else shift_temb.stride(0)
    y = torch.empty((batch, channels, height, width), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    # the biased input (unused: y and the norm's bias stand in, pointers of the same types and alignment)
    z = None if sum_bias is None else torch.empty_like(y)
    z_arg, zb_arg, has_sum = (y, bias, 0) if z is None else (z, sum_bias, 1)
    chunks = min(_NHWC_MAX_CHUNKS, triton.cdiv(hw, _NHWC_BLOCK_HW))
    rows_per_chunk = _NHWC_BLOCK_HW * triton.cdiv(triton.cdiv(hw, chunks), _NHWC_BLOCK_HW)
    chunks = triton.cdiv(hw, rows_per_chunk)
    means = torch.empty((batch, chunks, channels), dtype=torch.float32, device=x.device)
    m2s = torch.empty_like(means)
    stats = torch.empty((batch * num_groups, 2), dtype=torch.float32, device=x.device)
    c_blocks = triton.cdiv(channels, _NHWC_BLOCK_C)
    _nhwc_partial_kernel[(batch, chunks, c_blocks)](x, second, bias_arg, temb_arg, temb_stride, means, m2s, hw,
                                                    channels, split, rows_per_chunk, chunks, shift_mode,
                                                    BLOCK_HW=_NHWC_BLOCK_HW, BLOCK_C=_NHWC_BLOCK_C)
    _nhwc_stats_kernel[(batch * num_groups,)](means, m2s, stats, hw, channels, cpg, num_groups, rows_per_chunk,
                                              chunks, eps, BLOCK=_STATS_BLOCK, num_warps=_STATS_WARPS)
    _nhwc_apply_kernel[(batch, triton.cdiv(hw, _NHWC_APPLY_HW), c_blocks)](
        x, second, bias_arg, temb_arg, temb_stride, y, weight, bias, stats, z_arg, zb_arg, hw, channels, split, cpg,
        num_groups, shift_mode, has_sum, APPLY_SILU=apply_silu, BLOCK_HW=_NHWC_APPLY_HW, BLOCK_C=_NHWC_BLOCK_C)
    return y, z
