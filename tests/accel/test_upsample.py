"""Sub-pixel upsampling (sd2_app/accel/upsample.py): nearest x2 + 3x3 conv as four 2x2 convs, exactly."""

from __future__ import annotations

import pytest
import torch

from sd2_app.accel.fused.upsample import SubpixelUpsample2D, phase_kernels
from sd2_app.nn.resnet import Upsample2D


def _upsample(channels: int, dtype: torch.dtype = torch.float64) -> Upsample2D:
    torch.manual_seed(0)
    return Upsample2D(channels).to(dtype).eval()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (4, 4), (1, 3)])
def test_equals_nearest_then_conv_in_float64(size: tuple[int, int], channels_last: bool) -> None:
    up = _upsample(8)
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = up(x)
        fused = SubpixelUpsample2D(up)
        got = fused(x)
        explicit = fused(x, (2 * size[0], 2 * size[1]))
    assert got.shape == expected.shape == (2, 8, 2 * size[0], 2 * size[1])
    assert (got - expected).abs().max().item() < 1e-12
    assert torch.equal(explicit, got)
    if channels_last and size != (1, 3):
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()


def test_a_size_other_than_double_takes_the_plain_path() -> None:
    up = _upsample(4)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(SubpixelUpsample2D(up)(x, (9, 10)), up(x, (9, 10)))


def test_keys_are_the_convs_and_the_phase_kernels_sum_the_taps() -> None:
    up = _upsample(3)
    fused = SubpixelUpsample2D(up)
    assert list(fused.state_dict()) == ["conv.weight", "conv.bias"]  # the buffer is not saved or loaded
    assert "phase_weight" in dict(fused.named_buffers())  # but moves with the module (the manager moves buffers)
    w = up.conv.weight
    k = phase_kernels(w)
    assert k.shape == (12, 3, 2, 2)
    # phase (0, 0): rows {0}, {1, 2}; columns {0}, {1, 2}
    assert torch.allclose(k[:3, :, 1, 1], w[:, :, 1:, 1:].sum(dim=(2, 3)))
    assert torch.allclose(k[:3, :, 0, 0], w[:, :, 0, 0])
    # phase (1, 1): rows {0, 1}, {2}; columns {0, 1}, {2}
    assert torch.allclose(k[9:, :, 0, 0], w[:, :, :2, :2].sum(dim=(2, 3)))
    assert torch.allclose(k[9:, :, 1, 1], w[:, :, 2, 2])


def test_fused_vae_decodes_the_same() -> None:
    from sd2_app.accel.fused import fuse_modules
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.testing.configs import tiny_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2"))).eval()
    z = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        expected = vae.decode(z)
        fuse_modules(vae)
        got = vae.decode(z)
    assert sum(type(m) is SubpixelUpsample2D for m in vae.modules()) == 3
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.gpu
def test_fp16_channels_last_on_cuda_is_as_close_to_fp32_as_the_plain_module() -> None:
    up = _upsample(640, torch.float32).cuda()
    with torch.no_grad():
        up.conv.weight.mul_(0.05)
        x = torch.randn(2, 640, 32, 32, device="cuda")
        reference = up(x)
        up16 = up.half().to(memory_format=torch.channels_last)
        x16 = x.half().to(memory_format=torch.channels_last)
        plain = up16(x16).float()
        fused = SubpixelUpsample2D(up16)(x16)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    scale = reference.abs().max().item()
    plain_error = (plain - reference).abs().max().item() / scale
    fused_error = (fused.float() - reference).abs().max().item() / scale
    assert fused_error <= 1.5 * plain_error + 1e-3, (fused_error, plain_error)


def test_a_half_module_converted_to_fp32_sums_its_kernels_again() -> None:
    """The x4 VAE decodes in fp32 by converting its fp16 module: the phase kernels must then be fp32 sums of
    the weights, not fp32 copies of fp16-rounded sums (~5e-4 relative off in every weight)."""
    up = _upsample(16, torch.float16)
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        fused = SubpixelUpsample2D(up)
        rounded = fused.phase_weight.float()
        fused.float()  # what vae_io.fp32_decoder does for one decode
        expected = up.float()(x)  # the fp16 weights, exactly, in fp32
        got = fused(x)
        assert not torch.equal(fused.phase_weight, rounded)  # summed again from the fp32 weights
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
        fused.half()  # and back: the fp16 sums again, rounded once from fp32 sums
        assert torch.equal(fused._phase_weight(), rounded.half())
