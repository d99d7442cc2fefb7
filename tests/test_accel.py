"""Speed features (sd2_app.accel): every fallback computes exactly what the plain modules compute.

CPU tests check the eager paths against the unfused math and the Triton kernels in triton's interpreter
(when triton is installed); the `gpu` tests check graph replay and the kernels on a real device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sd2_app.accel import AccelOptions, CudaGraphUNet, accelerate_unet, setup_backends
from sd2_app.accel.compile import compile_blocks
from sd2_app.accel.fused import (FusedGEGLU, FusedResnetBlock2D, FusedTransformerBlock,
                                 fuse_modules, geglu, group_norm_silu)
from sd2_app.nn.attention import GEGLU, Attention, BasicTransformerBlock
from sd2_app.nn.config import UNetConfig
from sd2_app.nn.resnet import ResnetBlock2D
from sd2_app.nn.unet import UNet
from sd2_app.testing.configs import tiny_unet_config
from sd2_app.testing.tiny_transformers import fill_deterministic


def _tiny_unet(kind: str = "sd2-base") -> UNet:
    unet = UNet(UNetConfig.from_dict(tiny_unet_config(kind)))
    unet.load_state_dict(fill_deterministic(unet, 1234))  # (it returns the values; the module is untouched)
    return unet.eval()


def _inputs(unet: UNet, batch: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    timestep = torch.full((batch,), 501.0)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return sample, timestep, context


def test_graph_wrapper_on_cpu_returns_exactly_the_unet_output() -> None:
    unet = _tiny_unet("x4-upscaler")
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = _inputs(unet)
    labels = torch.tensor([20, 20])
    with torch.inference_mode():
        expected = unet(sample, timestep, context, class_labels=labels)
        got = wrapped(sample, timestep, context, class_labels=labels)
    assert torch.equal(got, expected)
    assert wrapped.graph_count == 0 and wrapped.captures == 0  # nothing captured on CPU
    # a drop-in for the loop: parameters(), config and submodules come from the UNet
    assert next(wrapped.parameters()) is next(unet.parameters())
    assert wrapped.config is unet.config and wrapped.conv_in is unet.conv_in


def test_accelerate_unet_default_options_are_exact_on_cpu() -> None:
    unet = _tiny_unet()
    sample, timestep, context = _inputs(unet)
    with torch.inference_mode():
        expected = unet(sample, timestep, context)
        accelerated = accelerate_unet(unet, AccelOptions())
        got = accelerated(sample, timestep, context)
    assert isinstance(accelerated, CudaGraphUNet)
    assert torch.equal(got, expected)
    assert accelerate_unet(unet, AccelOptions.eager()) is unet


def test_graph_wrapper_drops_graphs_when_weights_move() -> None:
    unet = _tiny_unet()
    wrapped = CudaGraphUNet(unet)
    wrapped._check_weights()
    wrapped._graphs[("fake",)] = object()  # stands for a captured graph
    wrapped._check_weights()
    assert wrapped.graph_count == 1  # same addresses: kept
    unet.to(torch.float64)  # new storages, as when the manager offloads and reloads
    wrapped._check_weights()
    assert wrapped.graph_count == 0


def test_per_call_fp32_attention_runs_eagerly_with_fp32_attention() -> None:
    """The fallback ladder's fp32-attention rerun never replays a graph recorded with fp16 attention: the
    wrapper runs the UNet eagerly with the per-call switch, and records nothing."""
    unet = _tiny_unet()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = _inputs(unet)
    expected = unet(sample, timestep, context, upcast_attention=True)
    got = wrapped(sample, timestep, context, upcast_attention=True)
    assert torch.equal(got, expected) and wrapped.graph_count == 0
    assert all(not m.upcast for m in unet.modules() if isinstance(m, Attention))  # nothing flipped on modules


@pytest.mark.parametrize("shape,groups", [((2, 32, 8, 8), 8), ((1, 64, 5, 7), 32), ((3, 16, 4, 4), 1)])
def test_group_norm_silu_fallback_equals_unfused(shape: tuple[int, ...], groups: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 3 + 1
    norm = nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=g))
        norm.bias.copy_(torch.randn(shape[1], generator=g))
    expected = F.silu(norm(x))
    got = group_norm_silu(x, norm)
    assert (got - expected).abs().max().item() <= 1e-6
    # channels_last input takes the eager path too
    got_cl = group_norm_silu(x.to(memory_format=torch.channels_last), norm)
    assert (got_cl - expected).abs().max().item() <= 1e-6


def test_geglu_fallback_equals_unfused_module() -> None:
    torch.manual_seed(2)
    module = GEGLU(16, 24)
    x = torch.randn(2, 10, 16)
    value, gate = module.proj(x).chunk(2, dim=-1)
    by_hand = value * 0.5 * gate * (1 + torch.erf(gate / 2**0.5))
    assert (geglu(module.proj(x)) - by_hand).abs().max().item() <= 1e-6
    assert (FusedGEGLU(module)(x) - module(x)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("time_dim", [None, 64])
def test_fused_resnet_equals_resnet(time_dim: int | None) -> None:
    torch.manual_seed(3)
    block = ResnetBlock2D(16, 32, time_dim, groups=8, eps=1e-6)
    fused = FusedResnetBlock2D(block)
    x = torch.randn(2, 16, 6, 6)
    emb = torch.randn(2, time_dim) if time_dim else None
    assert (fused(x, emb) - block(x, emb)).abs().max().item() <= 1e-6
    assert list(fused.state_dict()) == list(block.state_dict())


def test_fused_resnet_folds_biases_only_where_every_conv_has_one() -> None:
    block = ResnetBlock2D(16, 32, 8, groups=8)
    assert FusedResnetBlock2D(block)._has_biases()  # SD2's resnets: conv1, conv2 and the shortcut have biases
    block.conv_shortcut.bias = None
    assert not FusedResnetBlock2D(block)._has_biases()  # -> the unfolded path, which handles a missing bias


def test_fused_transformer_block_off_the_gpu_is_the_block() -> None:
    torch.manual_seed(4)
    block = BasicTransformerBlock(32, 2, 16, 24).eval()
    fused = FusedTransformerBlock(block)
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        assert torch.equal(fused(x, context), block(x, context))
    assert list(fused.state_dict()) == list(block.state_dict())


def test_fuse_modules_keeps_keys_and_output_of_a_unet() -> None:
    unet = _tiny_unet()
    sample, timestep, context = _inputs(unet)
    keys = list(unet.state_dict())
    with torch.no_grad():
        expected = unet(sample, timestep, context)
        swapped = fuse_modules(unet)
        got = unet(sample, timestep, context)
    resnets = 2 * 4 + 2 + 3 * 4  # down, mid, up
    transformers = 2 * 3 + 1 + 3 * 3  # each: its GEGLU, GroupNorm, transformer block and the Transformer2D
    assert swapped == resnets + (4 + 2) * transformers + 1 + 3  # + two attentions each, conv_norm_out, upsamplers
    assert sum(type(m) is nn.GroupNorm for m in unet.modules()) == 2 * resnets  # the resnets fuse their own
    assert sum(type(m) is FusedTransformerBlock for m in unet.modules()) == transformers
    assert list(unet.state_dict()) == keys
    # fp32 rounding only (the sub-pixel upsampler sums its taps in another order); a wrong swap is O(1)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_channels_last_unet_computes_the_same_and_keeps_the_layout_through_attention() -> None:
    """The Transformer2D output follows its input's layout (no NCHW copy inside a channels_last UNet)."""
    unet = _tiny_unet()
    sample, timestep, context = _inputs(unet)
    block = unet.down_blocks[0].attentions[0]
    x = torch.randn(2, block.norm.num_channels, 8, 8)
    with torch.no_grad():
        expected = unet(sample, timestep, context)
        plain = block(x, context)
        fuse_modules(unet)
        unet.to(memory_format=torch.channels_last)
        got = unet(sample, timestep, context)
        last = block(x.to(memory_format=torch.channels_last), context)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert plain.is_contiguous()
    assert (last - plain).abs().max().item() <= 1e-5
    assert (got - expected).abs().max().item() <= 1e-5


def test_compiled_path_compiles_the_whole_unet_in_place_and_never_fuses_it() -> None:
    unet = _tiny_unet()
    keys = list(unet.state_dict())
    accelerated = accelerate_unet(unet, AccelOptions.compiled())
    assert isinstance(accelerated, CudaGraphUNet) and accelerated.unet is unet
    assert unet._compiled_call_impl is not None  # lazy: compiles on the first call of each shape
    assert not any(type(m).__name__.startswith("Fused") for m in unet.modules())
    assert list(unet.state_dict()) == keys
    assert accelerate_unet(accelerated, AccelOptions.compiled()) is accelerated  # applied once


def test_whole_unet_traces_as_one_graph() -> None:
    """fullgraph=True in the compiled path relies on this: no graph break anywhere in the forward."""
    unet = _tiny_unet()
    sample, timestep, context = _inputs(unet)
    with torch.inference_mode():
        explained = torch._dynamo.explain(unet)(sample, timestep, context)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_regional_compile_wraps_the_repeated_blocks_and_keeps_the_output() -> None:
    unet = _tiny_unet()
    keys = list(unet.state_dict())
    count = compile_blocks(unet, backend="eager")  # lazy: nothing is traced until a call
    assert count == (2 * 4 + 2 + 3 * 4) + (2 * 3 + 1 + 3 * 3)
    assert list(unet.state_dict()) == keys
    block = unet.down_blocks[0].resnets[0]
    assert block._compiled_call_impl is not None  # module.compile() took effect in place
    # trace one compiled block (the whole UNet takes too long on CPU)
    x = torch.randn(1, 32, 8, 8)
    emb = F.silu(torch.randn(1, unet.config.time_embed_dim))
    with torch.no_grad():
        got = block(x, emb)
        expected = block.forward(x, emb)  # forward() bypasses the compiled __call__
    assert (got - expected).abs().max().item() <= 1e-6
    torch._dynamo.reset()


def test_setup_backends_on_cpu_leaves_cudnn_alone() -> None:
    before = torch.backends.cudnn.benchmark
    state = setup_backends("cpu")
    assert torch.backends.cudnn.benchmark == before == state.cudnn_benchmark


def test_the_manager_applies_the_cudnn_benchmark_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sd2_app.manager import core

    calls = []
    monkeypatch.setattr(core, "setup_backends", lambda device, **flags: calls.append((str(device), flags)))
    for benchmark in (False, True):
        core.ModelManager(torch.device("cuda", 0), torch.float16, registry={}, device_budget=1 << 30,
                          cache_dir=tmp_path, accel=AccelOptions(cudnn_benchmark=benchmark))
    assert calls == [("cuda:0", {"allow_tf32": False, "cudnn_benchmark": False}),
                     ("cuda:0", {"allow_tf32": False, "cudnn_benchmark": True})]


@pytest.mark.gpu
def test_setup_backends_sets_cudnn_benchmark_as_asked() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        assert setup_backends("cuda", cudnn_benchmark=False).cudnn_benchmark is False
        assert torch.backends.cudnn.benchmark is False
        assert setup_backends("cuda").cudnn_benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


_INTERPRETED_KERNELS = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from sd2_app.accel import triton_kernels as k
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
    # the one-launch kernel of small groups: one loop iteration, and two with a ragged second (9800 > 8192)
    for shape, groups in [((2, 160, 8, 8), 32), ((1, 4, 70, 70), 2)]:
        for mode, silu in [(0, True), (0, False), (1, True), (2, True), (2, False)]:
            x = (torch.randn(shape, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
            w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
            conv_bias = torch.randn(shape[1], generator=g) * 3 if mode else None
            temb = (torch.randn(shape[0], shape[1] + 7, generator=g) * 3)[:, 5:5 + shape[1]] if mode == 2 else None
            got = k.group_norm_silu(x, groups, w, b, 1e-6, apply_silu=silu, shift_bias=conv_bias, shift_temb=temb,
                                    one_kernel_max=x[0].numel())
            assert got.is_contiguous(memory_format=torch.channels_last)
            shifted = x + (0 if conv_bias is None else conv_bias[None, :, None, None])
            shifted = shifted + (0 if temb is None else temb[:, :, None, None])
            ref = F.group_norm(shifted.contiguous(), groups, w, b, 1e-6)
            worst = max(worst, (got - (F.silu(ref) if silu else ref)).abs().max().item())
    # the up path's GroupNorm of cat([x, skip]) read from both tensors: groups that straddle the two
    # (96 + 64 channels in groups of 5; 12 + 4 in groups of 8), both the three-kernel and one-kernel paths
    for (batch, c1, c2, h, w_), groups, one in [((2, 8, 8, 40, 40), 2, 0), ((1, 96, 64, 9, 7), 32, 0),
                                                ((2, 96, 64, 6, 5), 32, 10**9), ((1, 12, 4, 70, 70), 2, 10**9)]:
        x = (torch.randn(batch, c1, h, w_, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
        skip = (torch.randn(batch, c2, h, w_, generator=g) * 3 - 1).to(memory_format=torch.channels_last)
        w, b = torch.randn(c1 + c2, generator=g), torch.randn(c1 + c2, generator=g)
        got = k.group_norm_silu(x, groups, w, b, 1e-6, concat=skip, one_kernel_max=one)
        assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == (batch, c1 + c2, h, w_)
        ref = F.silu(F.group_norm(torch.cat([x, skip], dim=1).contiguous(), groups, w, b, 1e-6))
        worst = max(worst, (got - ref).abs().max().item())
    # the norm with the biased input as a second output (a Transformer2D's residual for proj_out's addmm)
    for shape, groups, one in [((2, 160, 9, 7), 32, 0), ((2, 160, 6, 5), 32, 10**9), ((1, 4, 70, 70), 2, 10**9)]:
        x = (torch.randn(shape, generator=g) * 2 + 5).to(memory_format=torch.channels_last)
        w, b, sb = (torch.randn(shape[1], generator=g) for _ in range(3))
        y, z = k.group_norm_and_biased_input(x, groups, w, b, 1e-6, sb, one_kernel_max=one)
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
    # GEGLU's projection and gate in one matmul: ragged row, column and k tiles
    from sd2_app.accel.triton_geglu import geglu_matmul
    for rows, k_dim, inner in [(200, 96, 80), (37, 130, 70)]:
        x = torch.randn(2, rows, k_dim, generator=g)
        weight, bias = torch.randn(2 * inner, k_dim, generator=g) * 0.1, torch.randn(2 * inner, generator=g)
        value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
        worst = max(worst, (geglu_matmul(x, weight, bias) - value * F.gelu(gate)).abs().max().item())
    # the stream plus the next Linear's bias as the first output (the norm still sees the plain stream)
    x, r, w, b, sb = (torch.randn(shape, generator=g) for shape in ((2, 9, 320), (2, 9, 320), 320, 320, 320))
    total, y = k.layer_norm(x, w, b, 1e-5, residual=r, sum_bias=sb)
    worst = max(worst, (total - (x + r + sb)).abs().max().item(),
                (y - F.layer_norm(x + r, (320,), w, b, 1e-5)).abs().max().item())
    # a whole transformer block: residual adds in the norms, the last one in the feed-forward's matmul
    from sd2_app.accel.fused import FusedTransformerBlock
    from sd2_app.nn.attention import BasicTransformerBlock
    block = BasicTransformerBlock(64, 2, 32, 48).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.2, generator=g)
    x, context = torch.randn(2, 12, 64, generator=g), torch.randn(2, 5, 48, generator=g)
    with torch.no_grad():
        got, ref = FusedTransformerBlock(block)._forward_fused(x, context), block(x, context)
    worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    # a whole Transformer2D: the residual inside proj_out's matmul (16x12 tokens: the three-kernel norm;
    # 4x3: the one-kernel norm)
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
    from sd2_app.accel.fused import FusedResnetBlock2D
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
            ref = block(x, emb, skip)
        assert got.is_contiguous(memory_format=torch.channels_last)
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    # the GPU start-up check's own comparison, both layouts
    from sd2_app.accel.kernel_checks import _kernel_errors
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 64, 12, 10, generator=g).to(memory_format=layout)
        errors = _kernel_errors(k, torch.nn.GroupNorm(32, 64), g, x, torch.float32, threads=1)  # interpreter: 1
        worst = max([worst] + [e.item() for e in errors])
    print(worst)
""")


def test_triton_kernels_match_eager_math_in_the_interpreter() -> None:
    """The kernels themselves, run on CPU by triton's interpreter (skipped where triton is absent)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _INTERPRETED_KERNELS], env=env, capture_output=True,
                            text=True, timeout=300, check=True)
    assert float(result.stdout.strip().splitlines()[-1]) < 2e-5


@pytest.mark.gpu
def test_graph_replay_matches_eager_on_cuda() -> None:
    unet = _tiny_unet("x4-upscaler").cuda().half()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = (t.cuda() for t in _inputs(unet))
    labels = torch.tensor([20, 20], device="cuda")
    with torch.inference_mode():
        expected = unet(sample.half(), timestep, context.half(), class_labels=labels).float()
        for scale in (1.0, 0.5):  # a second call replays with new input values
            got = wrapped(sample.half() * scale, timestep * scale, context.half(), class_labels=labels).float()
        again = unet(sample.half() * 0.5, timestep * 0.5, context.half(), class_labels=labels).float()
    assert wrapped.captures == 1
    assert (got - again).abs().max().item() < 1e-2
    assert not torch.equal(got, expected)


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


def _assert_as_close_to_fp32_as_plain(fused: torch.Tensor, plain: torch.Tensor, reference: torch.Tensor) -> None:
    """A fused fp16 block's output (channels_last) is no further from the fp32 reference than the plain fp16
    block's is, give or take fp16 rounding (the fused kernels sum in fp32 with fewer roundings)."""
    assert fused.is_contiguous(memory_format=torch.channels_last) and fused.dtype == torch.float16
    scale = reference.abs().max().item()
    plain_error = (plain - reference).abs().max().item() / scale
    fused_error = (fused.float() - reference).abs().max().item() / scale
    assert fused_error <= 1.5 * plain_error + 1e-3, (fused_error, plain_error)


@pytest.mark.gpu
@pytest.mark.parametrize("one_kernel_max", [0, 32768])  # three-kernel GroupNorms (default) / mixed
@pytest.mark.parametrize("cin,cout,time_dim,skip_channels",
                         [(320, 640, 1280, 0), (128, 128, None, 0), (640, 320, 1280, 320)])
def test_channels_last_resnet_block_matches_eager_on_cuda(cin: int, cout: int, time_dim: int | None,
                                                          skip_channels: int, one_kernel_max: int) -> None:
    """The fused block (biases folded into the norm and residual kernels) vs the plain block, both fp16,
    against an fp32 reference: no further from it than the plain fp16 block is (plus fp16 rounding).
    At 48x40 a 32768 threshold puts the 320- and 128-channel norms (19200 and 7680 elements per group)
    on the one-launch kernel and the 640-channel one (38400) on the three-kernel path. The up path's block
    takes a skip connection (640 + 320 channels: groups of 30 straddle the two tensors), never concatenated."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(5)
    block = ResnetBlock2D(cin + skip_channels, cout, time_dim).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.05, generator=g)
    x = torch.randn(2, cin, 48, 40, generator=g)
    skip = torch.randn(2, skip_channels, 48, 40, generator=g) if skip_channels else None
    emb = None if time_dim is None else torch.randn(2, time_dim, generator=g)

    def cuda(t: torch.Tensor | None, half: bool = False) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.cuda()
        return t.half().to(memory_format=torch.channels_last) if half and t.dim() == 4 else (t.half() if half else t)

    with torch.no_grad():
        reference = block.cuda()(cuda(x), cuda(emb), cuda(skip))
        block = block.half().to(memory_format=torch.channels_last)
        x16, emb16, skip16 = cuda(x, True), cuda(emb, True), cuda(skip, True)
        plain = block(x16, emb16, skip16).float()
        fused = FusedResnetBlock2D(block, one_kernel_max)(x16, emb16, skip16)
    _assert_as_close_to_fp32_as_plain(fused, plain, reference)


@pytest.mark.gpu
@pytest.mark.parametrize("size", [64, 16])  # 320 channels: the three-kernel norm at 64x64, one kernel at 16x16
def test_transformer2d_with_the_residual_in_proj_out_matches_eager_on_cuda(size: int) -> None:
    """FusedTransformer2D (norm writing the biased residual, proj_out as addmm_ onto it) vs the plain block,
    both fp16, against fp32: no further from it than the plain fp16 block is (plus fp16 rounding)."""
    pytest.importorskip("triton")
    from sd2_app.nn.attention import Transformer2D

    g = torch.Generator().manual_seed(6)
    block = Transformer2D(320, 5, 1024).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.05, generator=g)
    x, context = torch.randn(2, 320, size, size, generator=g), torch.randn(2, 77, 1024, generator=g)
    with torch.no_grad():
        reference = block.cuda()(x.cuda(), context.cuda())
        block = block.half().to(memory_format=torch.channels_last)
        x16, context16 = x.cuda().half().to(memory_format=torch.channels_last), context.cuda().half()
        plain = block(x16, context16).float()
        holder = nn.Sequential(block)
        fuse_modules(holder, channels_last=True)
        fused = holder[0](x16, context16)
    assert type(holder[0]).__name__ == "FusedTransformer2D"
    _assert_as_close_to_fp32_as_plain(fused, plain, reference)


@pytest.mark.gpu
def test_geglu_matmul_matches_the_two_kernel_path_on_cuda() -> None:
    """The experiment's kernel at the 64x64 level's shape: as close to fp32 as cuBLAS + the gate kernel."""
    pytest.importorskip("triton")
    from sd2_app.accel.kernel_checks import geglu_matmul_agrees
    from sd2_app.accel.triton_geglu import geglu_matmul

    g = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(2, 4096, 320, device="cuda", generator=g)
    weight = torch.randn(2 * 1280, 320, device="cuda", generator=g) * 0.05
    bias = torch.randn(2 * 1280, device="cuda", generator=g) * 0.1
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    reference = value * F.gelu(gate)
    x16, w16, b16 = x.half(), weight.half(), bias.half()
    plain = geglu(F.linear(x16, w16, b16)).float()
    fused = geglu_matmul(x16, w16, b16).float()
    scale = reference.abs().max().item()
    plain_error = (plain - reference).abs().max().item() / scale
    fused_error = (fused - reference).abs().max().item() / scale
    assert fused_error <= 1.5 * plain_error + 1e-3, (fused_error, plain_error)
    assert geglu_matmul_agrees(torch.cuda.current_device(), torch.float16)


def test_fused_geglu_with_the_matmul_switch_is_exact_off_the_gpu() -> None:
    block = GEGLU(32, 48)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(FusedGEGLU(block, matmul=True)(x), FusedGEGLU(block)(x))


@pytest.mark.gpu
def test_fused_transformer_block_matches_eager_on_cuda() -> None:
    """Residual adds fused into the LayerNorms: the fp16 block's output, as close to fp32 as eager fp16's."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(6)
    block = BasicTransformerBlock(320, 5, 64, 1024).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.05, generator=g)
    x, context = torch.randn(2, 4096, 320, generator=g), torch.randn(2, 77, 1024, generator=g)
    with torch.no_grad():
        reference = block.cuda()(x.cuda(), context.cuda())
        block = block.half()
        plain = block(x.cuda().half(), context.cuda().half()).float()
        fused = FusedTransformerBlock(block)(x.cuda().half(), context.cuda().half()).float()
    scale = reference.abs().max().item()
    plain_error = (plain - reference).abs().max().item() / scale
    fused_error = (fused - reference).abs().max().item() / scale
    assert fused_error <= 1.5 * plain_error + 1e-3, (fused_error, plain_error)


def test_accelerator_keeps_one_wrapper_per_unet_and_lets_go_with_it() -> None:
    import gc

    from sd2_app.accel import Accelerator

    accelerator = Accelerator(AccelOptions())
    unet = _tiny_unet()
    first = accelerator.unet(unet)
    assert accelerator.unet(unet) is first and isinstance(first, CudaGraphUNet)
    sample, timestep, context = _inputs(unet)
    with torch.inference_mode():
        assert torch.equal(first(sample, timestep, context), unet(sample, timestep, context))
    del unet
    gc.collect()
    assert len(accelerator._unets) == 0  # the cache does not keep a freed UNet (or its graphs) alive
    with pytest.raises(ReferenceError):
        first.config  # noqa: B018


def test_speed_modes_map_to_their_switches() -> None:
    from sd2_app.accel import SPEED_MODES, options_for

    assert SPEED_MODES == ("default", "compile", "eager")
    default, compiled, eager = (options_for(mode) for mode in SPEED_MODES)
    assert default.cuda_graphs and default.fused_ops and not default.compile
    assert default.channels_last and default.vae_channels_last  # measured faster on an H200 (PERFORMANCE.md)
    assert compiled.compile and compiled.compile_scope == "unet" and compiled.compile_mode is None
    assert compiled.cuda_graphs and compiled.fused_ops  # fused kernels stay in the (uncompiled) VAE
    assert not (eager.cuda_graphs or eager.fused_ops or eager.compile or eager.channels_last)
    with pytest.raises(ValueError, match="unknown speed mode 'fast'"):
        options_for("fast")


@pytest.mark.gpu
def test_triton_kernels_pass_their_start_up_check_on_this_gpu() -> None:
    from sd2_app.accel.fused import triton_available
    from sd2_app.accel.kernel_checks import kernels_agree

    if not triton_available():
        pytest.skip("triton is not installed")
    for channels_last, one_kernel in ((False, False), (True, False), (True, True)):
        assert kernels_agree(0, torch.float16, channels_last, one_kernel)
        assert kernels_agree(0, torch.float32, channels_last, one_kernel)
