"""The fp32 VAE decode's attention product from fp16 inputs (sd2_app/accel/vae_attention.py)."""

from __future__ import annotations

import pytest
import torch

from sd2_app.accel.fused.vae_attention import HalfProductVAEAttention, use_half_products
from sd2_app.nn.vae import VAEAttention


def _attention(channels: int = 64) -> VAEAttention:
    torch.manual_seed(0)
    attention = VAEAttention(channels, 32).eval()
    for param in attention.parameters():
        param.data.normal_(0.0, 0.1)
    return attention


def test_fp32_product_from_fp16_inputs_is_within_fp16_rounding_of_fp32() -> None:
    attention = _attention()
    x = torch.randn(1, 64, 12, 10)
    with torch.no_grad():
        expected = attention(x)
        half = HalfProductVAEAttention(attention)
        got = half(x)
        q = torch.randn(1, 1, 120, 64)
        product_error = (half.product(q, q, q) - attention.product(q, q, q)).abs().max().item()
    assert list(half.state_dict()) == list(attention.state_dict())
    assert got.dtype == torch.float32
    assert 0 < product_error < 4e-3  # fp16 inputs (not the fp32 kernel), within their rounding
    assert (got - expected).abs().max().item() < 2e-3 * expected.abs().max().item()


def test_values_fp16_cannot_hold_keep_the_fp32_product() -> None:
    half = HalfProductVAEAttention(_attention())
    q = torch.randn(1, 1, 50, 64)
    k = q.clone()
    k[0, 0, 3, 5] = 1e6  # beyond fp16's 65504
    with torch.no_grad():
        assert torch.equal(half.product(q, k, q), torch.nn.functional.scaled_dot_product_attention(q, k, q))


def test_fp16_inputs_take_the_plain_product() -> None:
    half = HalfProductVAEAttention(_attention())
    q = torch.randn(1, 1, 20, 64).half()
    with torch.no_grad():
        assert torch.equal(half.product(q, q, q), torch.nn.functional.scaled_dot_product_attention(q, q, q))


def test_use_half_products_swaps_the_vae_mid_block_attention() -> None:
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.testing.configs import tiny_vae_config

    vae = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2")))
    keys = list(vae.state_dict())
    assert use_half_products(vae) == 2  # the encoder's and the decoder's mid block
    assert list(vae.state_dict()) == keys
    assert sum(type(m) is HalfProductVAEAttention for m in vae.modules()) == 2


@pytest.mark.gpu
def test_half_product_on_cuda_matches_fp32_at_the_x4_width() -> None:
    attention = _attention(512).cuda()
    x = torch.randn(1, 512, 64, 64, device="cuda")
    with torch.no_grad():
        expected = attention(x)
        got = HalfProductVAEAttention(attention)(x)
    assert (got - expected).abs().max().item() < 2e-3 * expected.abs().max().item()
