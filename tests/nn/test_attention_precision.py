"""Attention precision (sd2_app/nn/attention.py): fp16 SDPA wherever PyTorch runs a fused kernel, for every
checkpoint including upcast_attention ones (SD 2.1-768); fp32 only where SDPA would run its math backend,
and for every product when a NaN retry forces it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sd2_app.nn.attention import Attention, sdpa_runs_fused


def _qkv(dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device).manual_seed(0)
    return tuple(torch.randn(2, 5, 64, 64, generator=g, device=device).to(dtype) for _ in range(3))


def _attention(upcast: bool) -> Attention:
    return Attention(320, 320, 5, 64, upcast=upcast)


def test_pytorchs_own_choice_decides_what_counts_as_fused() -> None:
    q, k, v = _qkv(torch.float16)
    assert sdpa_runs_fused(q, k, v) is (torch._fused_sdp_choice(q, k, v) > 0)
    with sdpa_kernel([SDPBackend.MATH]):
        assert sdpa_runs_fused(q, k, v) is False


def test_fp32_products_are_the_plain_sdpa_whatever_the_switches() -> None:
    q, k, v = _qkv(torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v)
    for upcast in (False, True):
        attention = _attention(upcast)
        assert torch.equal(attention.attend(q, k, v), expected)
        assert torch.equal(attention.attend(q, k, v, fp32_attention=True), expected)


def test_upcast_checkpoints_run_fp16_where_a_fused_kernel_serves_and_fp32_where_math_would() -> None:
    q, k, v = _qkv(torch.float16)
    fp16 = F.scaled_dot_product_attention(q, k, v)
    fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).half()
    upcast, plain = _attention(True), _attention(False)
    if sdpa_runs_fused(q, k, v):  # (CPU builds with the flash kernel: torch >= 2.3)
        assert torch.equal(upcast.attend(q, k, v), fp16)
    with sdpa_kernel([SDPBackend.MATH]):
        math_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).half()
        assert torch.equal(upcast.attend(q, k, v), math_fp32)  # the math backend: QK^T in fp32
        assert torch.equal(plain.attend(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # the NaN retry: fp32 for every checkpoint, fused kernel or not
    assert torch.equal(plain.attend(q, k, v, fp32_attention=True), fp32)


@pytest.mark.gpu
def test_sd21_attention_runs_the_fused_fp16_kernel_on_cuda() -> None:
    """SD 2.1-768's upcast flag costs nothing on a GPU: the same fp16 kernel as any checkpoint, as close to
    fp32 as fp16 SDPA is, and fp32 only on the NaN retry."""
    q, k, v = _qkv(torch.float16, "cuda")
    assert sdpa_runs_fused(q, k, v)
    upcast, plain = _attention(True), _attention(False)
    assert torch.equal(upcast.attend(q, k, v), plain.attend(q, k, v))
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert (upcast.attend(q, k, v).float() - reference).abs().max().item() < 5e-3  # a few fp16 ulps at |out| ~ 1
    assert torch.equal(upcast.attend(q, k, v, fp32_attention=True), reference.half())
