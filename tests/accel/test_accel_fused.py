"""The fused twins (sd2_app/accel/fused/): off the GPU each computes exactly what its plain module computes,
with the same state-dict keys; on the GPU each is as close to fp32 as the plain fp16 module is."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sd2_app.accel.fused import fuse_modules
from sd2_app.accel.fused.ops import FusedGEGLU, geglu, group_norm_silu
from sd2_app.accel.fused.resnet import FusedResnetBlock2D
from sd2_app.accel.fused.transformer import FusedTransformerBlock
from sd2_app.accel.layout import LayoutKeepingTransformer2D, to_channels_last
from sd2_app.nn.attention import GEGLU, BasicTransformerBlock, Transformer2D
from sd2_app.nn.resnet import ResnetBlock2D
from tests.accel_support import tiny_unet, unet_inputs


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
    # an up-path skip connection given apart is the concatenation (off the GPU: concatenated first)
    assert torch.equal(fused(x[:, :10], emb, x[:, 10:]), fused(x, emb))
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
    unet = tiny_unet()
    sample, timestep, context = unet_inputs(unet)
    keys = list(unet.state_dict())
    with torch.no_grad():
        expected = unet(sample, timestep, context)
        swapped = fuse_modules(unet)
        got = unet(sample, timestep, context)
    resnets = 2 * 4 + 2 + 3 * 4  # down, mid, up
    transformers = 2 * 3 + 1 + 3 * 3  # each: its GEGLU, GroupNorm, transformer block and the Transformer2D
    # + two attentions each, conv_norm_out, the upsamplers, the four up blocks
    assert swapped == resnets + (4 + 2) * transformers + 1 + 3 + 4
    assert sum(type(m) is nn.GroupNorm for m in unet.modules()) == 2 * resnets  # the resnets fuse their own
    assert sum(type(m) is FusedTransformerBlock for m in unet.modules()) == transformers
    assert list(unet.state_dict()) == keys
    # fp32 rounding only (the sub-pixel upsampler sums its taps in another order); a wrong swap is O(1)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_channels_last_unet_computes_the_same_and_keeps_the_layout_through_attention() -> None:
    """The Transformer2D output follows its input's layout (no NCHW copy inside a channels_last UNet); the
    plain nn module stays NCHW-only."""
    unet = tiny_unet()
    sample, timestep, context = unet_inputs(unet)
    block = unet.down_blocks[0].attentions[0]
    x = torch.randn(2, block.norm.num_channels, 8, 8)
    with torch.no_grad():
        expected = unet(sample, timestep, context)
        plain = block(x, context)
        plain_last = block(x.to(memory_format=torch.channels_last), context)
        to_channels_last(unet)
        twin = unet.down_blocks[0].attentions[0]
        got = unet(sample, timestep, context)
        last = twin(x.to(memory_format=torch.channels_last), context)
        fuse_modules(unet)
        fused_last = unet.down_blocks[0].attentions[0](x.to(memory_format=torch.channels_last), context)
    assert type(twin) is LayoutKeepingTransformer2D and type(block) is Transformer2D
    assert plain.is_contiguous() and plain_last.is_contiguous()
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert fused_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(last, plain_last) and (last - plain).abs().max().item() <= 1e-5
    assert (fused_last - plain).abs().max().item() <= 1e-5
    assert (got - expected).abs().max().item() <= 1e-5


def _assert_as_close_to_fp32_as_plain(fused: torch.Tensor, plain: torch.Tensor, reference: torch.Tensor) -> None:
    """A fused fp16 block's output (channels_last) is no further from the fp32 reference than the plain fp16
    block's is, give or take fp16 rounding (the fused kernels sum in fp32 with fewer roundings)."""
    assert fused.is_contiguous(memory_format=torch.channels_last) and fused.dtype == torch.float16
    scale = reference.abs().max().item()
    plain_error = (plain - reference).abs().max().item() / scale
    fused_error = (fused.float() - reference).abs().max().item() / scale
    assert fused_error <= 1.5 * plain_error + 1e-3, (fused_error, plain_error)


@pytest.mark.gpu
@pytest.mark.parametrize("cin,cout,time_dim,skip_channels",
                         [(320, 640, 1280, 0), (128, 128, None, 0), (640, 320, 1280, 320)])
def test_channels_last_resnet_block_matches_eager_on_cuda(cin: int, cout: int, time_dim: int | None,
                                                          skip_channels: int) -> None:
    """The fused block (biases folded into the norm and residual kernels) vs the plain block, both fp16,
    against an fp32 reference: no further from it than the plain fp16 block is (plus fp16 rounding).
    The up path's block takes a skip connection (640 + 320 channels: groups of 30 straddle the two
    tensors), never concatenated."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(5)
    block = ResnetBlock2D(cin + skip_channels, cout, time_dim).eval()
    for param in block.parameters():
        param.data.normal_(0.0, 0.05, generator=g)
    x = torch.randn(2, cin, 48, 40, generator=g)
    skip = torch.randn(2, skip_channels, 48, 40, generator=g) if skip_channels else None
    emb = None if time_dim is None else torch.randn(2, time_dim, generator=g)

    def joined(t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        return t if s is None else torch.cat([t, s], dim=1)

    def cuda(t: torch.Tensor | None, half: bool = False) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.cuda()
        return t.half().to(memory_format=torch.channels_last) if half and t.dim() == 4 else (t.half() if half else t)

    with torch.no_grad():
        reference = block.cuda()(cuda(joined(x, skip)), cuda(emb))
        block = block.half().to(memory_format=torch.channels_last)
        x16, emb16, skip16 = cuda(x, True), cuda(emb, True), cuda(skip, True)
        plain = block(joined(x16, skip16).contiguous(memory_format=torch.channels_last), emb16).float()
        fused = FusedResnetBlock2D(block)(x16, emb16, skip16)
    _assert_as_close_to_fp32_as_plain(fused, plain, reference)


@pytest.mark.gpu
@pytest.mark.parametrize("size", [64, 16])
def test_transformer2d_with_the_residual_in_proj_out_matches_eager_on_cuda(size: int) -> None:
    """FusedTransformer2D (norm writing the biased residual, proj_out as addmm_ onto it) vs the plain block,
    both fp16, against fp32: no further from it than the plain fp16 block is (plus fp16 rounding)."""
    pytest.importorskip("triton")
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


@pytest.mark.gpu
def test_the_vae_stays_nchw_when_the_fused_kernels_fail_their_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """channels_last without the NHWC GroupNorm kernels is the VAE's slow combination: a start-up check that
    fails (nothing swapped) leaves the VAE NCHW; a passing one makes it NHWC."""
    pytest.importorskip("triton")
    from sd2_app.accel import AccelOptions, accelerate_vae
    from sd2_app.accel.kernels import checks
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.testing.configs import tiny_vae_config

    def vae() -> AutoencoderKL:
        return AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2"))).cuda().half()

    def nhwc(model: AutoencoderKL) -> bool:
        weight = model.decoder.conv_in.weight
        return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    assert nhwc(accelerate_vae(vae(), AccelOptions()))
    monkeypatch.setattr(checks, "kernels_agree", lambda *args: False)
    failed = accelerate_vae(vae(), AccelOptions())
    assert not nhwc(failed) and not any(type(m).__name__.startswith("Fused") for m in failed.modules())
