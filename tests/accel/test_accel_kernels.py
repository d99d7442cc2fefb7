"""The Triton kernels (sd2_app/accel/kernels/): on CPU in triton's interpreter against the eager math (with
whole fused blocks and the start-up check's own comparison); on a GPU, compiled, and through the start-up
check of that GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sd2_app.accel.fused.ops import geglu, group_norm_silu

_INTERPRETED_KERNELS = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from sd2_app.accel.kernels import elementwise as k
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    # 2 groups of 4 channels x 40x40 = 6400 elements: two chunks, the second ragged
    for shape, groups in [((2, 8, 40, 40), 2), ((1, 32, 3, 5), 8)]:
        x = torch.randn(shape, generator=g) * 2 + 5
        w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
        got = k.group_norm_silu(x, groups, w, b, 1e-6)
        worst = max(worst, (got - F.silu(F.group_norm(x, groups, w, b, 1e-6))).abs().max().item())
    # channels_last: many chunks, chunks of several row blocks, a ragged last chunk, 80 channels per group,
    # and 144 chunks x 16 channels: more partials per group than the merge kernel takes in one block
    for shape, groups in [((2, 8, 40, 40), 2), ((1, 8, 100, 100), 2), ((1, 160, 33, 3), 32), ((1, 160, 9, 9), 2),
                          ((1, 32, 96, 96), 2)]:
        for silu in (True, False):
            x = (torch.randn(shape, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
            w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
            got = k.group_norm_silu(x, groups, w, b, 1e-6, apply_silu=silu)
            assert got.is_contiguous(memory_format=torch.channels_last)
            ref = F.group_norm(x.contiguous(), groups, w, b, 1e-6)
            worst = max(worst, (got - (F.silu(ref) if silu else ref)).abs().max().item())
    p = torch.randn(3, 7, 2 * 1100, generator=g)
    value, gate = p.chunk(2, dim=-1)
    worst = max(worst, (k.geglu(p) - value * F.gelu(gate)).abs().max().item())
    # the resnet's channels_last path: conv bias + time embedding into norm2, conv2 bias + shortcut after
    for shape, groups in [((2, 8, 40, 40), 2), ((1, 160, 33, 3), 32)]:
        for mode in (1, 2):  # 1: the bias only (VAE resnets), 2: bias + time embedding (UNet resnets)
            x = (torch.randn(shape, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
            w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
            conv_bias = torch.randn(shape[1], generator=g) * 3
            # the time embedding as a column slice of a wider tensor (one matmul projects every resnet's)
            temb = (torch.randn(shape[0], shape[1] + 7, generator=g) * 3)[:, 5:5 + shape[1]] if mode == 2 else None
            got = k.group_norm_silu(x, groups, w, b, 1e-6, shift_bias=conv_bias, shift_temb=temb)
            assert got.is_contiguous(memory_format=torch.channels_last)
            shifted = x + conv_bias[None, :, None, None] + (0 if temb is None else temb[:, :, None, None])
            worst = max(worst, (got - F.silu(F.group_norm(shifted.contiguous(), groups, w, b, 1e-6))).abs().max().item())
    # the up path's GroupNorm of cat([x, skip]) read from both tensors: groups that straddle the two
    # (96 + 64 channels in groups of 5; 12 + 4 in groups of 8)
    for (batch, c1, c2, h, w_), groups in [((2, 8, 8, 40, 40), 2), ((1, 96, 64, 9, 7), 32), ((2, 96, 64, 6, 5), 32),
                                           ((1, 12, 4, 70, 70), 2)]:
        x = (torch.randn(batch, c1, h, w_, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
        skip = (torch.randn(batch, c2, h, w_, generator=g) * 3 - 1).to(memory_format=torch.channels_last)
        w, b = torch.randn(c1 + c2, generator=g), torch.randn(c1 + c2, generator=g)
        got = k.group_norm_silu(x, groups, w, b, 1e-6, concat=skip)
        assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == (batch, c1 + c2, h, w_)
        ref = F.silu(F.group_norm(torch.cat([x, skip], dim=1).contiguous(), groups, w, b, 1e-6))
        worst = max(worst, (got - ref).abs().max().item())
    # the norm with the biased input as a second output (a Transformer2D's residual for proj_out's addmm)
    for shape, groups in [((2, 160, 9, 7), 32), ((2, 160, 6, 5), 32), ((1, 4, 70, 70), 2)]:
        x = (torch.randn(shape, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
        w, b, sb = (torch.randn(shape[1], generator=g) for _ in range(3))
        y, z = k.group_norm_and_biased_input(x, groups, w, b, 1e-6, sb)
        assert y.is_contiguous(memory_format=torch.channels_last) and z.is_contiguous(memory_format=torch.channels_last)
        worst = max(worst, (y - F.group_norm(x.contiguous(), groups, w, b, 1e-6)).abs().max().item(),
                    (z - (x + sb[None, :, None, None])).abs().max().item())
    for shape in [(2, 8, 40, 40), (3, 7, 5, 5)]:
        for two in (False, True):
            a, r = (torch.randn(shape, generator=g).to(memory_format=torch.channels_last) for _ in range(2))
            b1, b2 = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
            got = k.bias_residual(a, b1, r, 0.5, bias2=b2 if two else None)
            ref = (a + b1[None, :, None, None] + (b2[None, :, None, None] if two else 0) + r) * 0.5
            worst = max(worst, (got - ref).abs().max().item())
    # LayerNorm, alone and with the residual add before it
    for shape in [(2, 37, 320), (1, 5, 100), (3, 64)]:
        for with_residual in (False, True):
            x = torch.randn(shape, generator=g) * 3 + 2
            r = torch.randn(shape, generator=g) if with_residual else None
            w, b = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
            total, y = k.layer_norm(x, w, b, 1e-5, residual=r)
            v = x if r is None else x + r
            worst = max(worst, (total - v).abs().max().item(),
                        (y - F.layer_norm(v, shape[-1:], w, b, 1e-5)).abs().max().item())
    # the stream plus the next Linear's bias as the first output (the norm still sees the plain stream)
    x, r, w, b, sb = (torch.randn(shape, generator=g) for shape in ((2, 9, 320), (2, 9, 320), 320, 320, 320))
    total, y = k.layer_norm(x, w, b, 1e-5, residual=r, sum_bias=sb)
    worst = max(worst, (total - (x + r + sb)).abs().max().item(),
                (y - F.layer_norm(x + r, (320,), w, b, 1e-5)).abs().max().item())
    # a whole transformer block: residual adds in the norms, the last one in the feed-forward's matmul
    from sd2_app.accel.fused.transformer import FusedTransformerBlock
    from sd2_app.nn.attention import BasicTransformerBlock
    block = BasicTransformerBlock(64, 2, 32, 48).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.2, generator=g)
    x, context = torch.randn(2, 12, 64, generator=g), torch.randn(2, 5, 48, generator=g)
    with torch.no_grad():
        got, ref = FusedTransformerBlock(block)._forward_fused(x, context), block(x, context)
    worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    # a whole Transformer2D: the residual inside proj_out's matmul
    from sd2_app.accel.fused import fuse_modules
    from sd2_app.nn.attention import Transformer2D
    for size in ((16, 12), (4, 3)):
        t2d = Transformer2D(64, 2, 48).eval()
        for param in t2d.parameters():
            param.data.normal_(0.0, 0.2, generator=g)
        x = torch.randn(2, 64, *size, generator=g).to(memory_format=torch.channels_last)
        context = torch.randn(2, 5, 48, generator=g)
        with torch.no_grad():
            ref = t2d(x, context)
            holder = torch.nn.Sequential(t2d)
            fuse_modules(holder)
            got = holder[0]._forward_fused(x, context)
        assert type(holder[0]).__name__ == "FusedTransformer2D" and got.is_contiguous(memory_format=torch.channels_last)
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    # whole resnet blocks (UNet with a time embedding and a shortcut conv; VAE without either)
    from sd2_app.accel.fused.resnet import FusedResnetBlock2D
    from sd2_app.nn.resnet import ResnetBlock2D
    # (and an up-path resnet whose input is x plus a skip connection: 48 + 32 channels, groups of 5)
    for cin, cout, time_dim, skip_channels in [(32, 64, 16, 0), (64, 64, None, 0), (48, 32, 16, 32)]:
        block = ResnetBlock2D(cin + skip_channels, cout, time_dim, groups=16).eval()
        for param in block.parameters():
            param.data.normal_(generator=g)
        x = torch.randn(2, cin, 6, 5, generator=g).to(memory_format=torch.channels_last)
        skip = torch.randn(2, skip_channels, 6, 5, generator=g).to(memory_format=torch.channels_last)
        skip = skip if skip_channels else None
        emb = None if time_dim is None else torch.randn(2, time_dim, generator=g)
        with torch.no_grad():
            got = FusedResnetBlock2D(block)._forward_channels_last(x, emb, skip)
            ref = block(x if skip is None else torch.cat([x, skip], dim=1), emb)
        assert got.is_contiguous(memory_format=torch.channels_last)
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    # the GPU start-up check's own comparison, both layouts
    from sd2_app.accel.kernels.checks import _kernel_errors
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 64, 12, 10, generator=g).to(memory_format=layout)
        errors = _kernel_errors(k, torch.nn.GroupNorm(32, 64), g, x, torch.float32, threads=1)  # interpreter: 1
        worst = max([worst] + [e.item() for e in errors])
    print(worst)
""")


@pytest.mark.slow
def test_triton_kernels_match_eager_math_in_the_interpreter() -> None:
    """The kernels themselves, run on CPU by triton's interpreter (skipped where triton is absent)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _INTERPRETED_KERNELS], env=env, capture_output=True,
                            text=True, timeout=300, check=True)
    assert float(result.stdout.strip().splitlines()[-1]) < 2e-5


@pytest.mark.gpu
def test_fused_kernels_match_eager_on_cuda() -> None:
    pytest.importorskip("triton")
    x = torch.randn(2, 320, 64, 64, device="cuda", dtype=torch.float16)
    norm = nn.GroupNorm(32, 320, eps=1e-5).cuda().half()
    ref = F.silu(norm(x.float().half()))
    assert (group_norm_silu(x, norm).float() - ref.float()).abs().max().item() < 1e-2
    last = group_norm_silu(x.to(memory_format=torch.channels_last), norm)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert (last.float() - ref.float()).abs().max().item() < 1e-2
    p = torch.randn(2, 4096, 2560, device="cuda", dtype=torch.float16)
    value, gate = p.chunk(2, dim=-1)
    assert (geglu(p).float() - (value * F.gelu(gate)).float()).abs().max().item() < 1e-2


@pytest.mark.gpu
def test_triton_kernels_pass_their_start_up_check_on_this_gpu() -> None:
    from sd2_app.accel.fused import triton_available
    from sd2_app.accel.kernels.checks import kernels_agree

    if not triton_available():
        pytest.skip("triton is not installed")
    for channels_last in (False, True):
        assert kernels_agree(0, torch.float16, channels_last)
        assert kernels_agree(0, torch.float32, channels_last)
