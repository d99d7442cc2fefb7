"""The fp32 VAE decode's attention product on tensor cores: q, k, v rounded to fp16, fp32 accumulation.

Why: the x4 upscaler's VAE decodes in fp32 (it overflows in fp16, as diffusers also works around). Its mid
block attends over every latent pixel with one 512-wide head: 16384 tokens for a 512 px output. In fp32 no
tensor-core kernel takes that head width, and the product was the largest single kernel of an x4 image.
The same decode's convolutions already take 10-bit-mantissa inputs (cuDNN's TF32, PyTorch's default, which
diffusers runs with too), so fp16 inputs (also 10 bits) with fp32
accumulation keep the decode's precision class. What fp16 cannot hold is range: when any q, k or v value
would overflow, the product runs in fp32 as before (one host synchronisation per decode, outside the
sampling loop); so it does where SDPA has no fused kernel for the fp16 inputs (its math backend would
compute QK^T in fp16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sd2_app.accel.twins import replace_children
from sd2_app.nn.attention import sdpa_runs_fused
from sd2_app.nn.vae import VAEAttention


class HalfProductVAEAttention(VAEAttention):
    """VAEAttention with the fp16 product for fp32 inputs; adopts the original's children (same keys)."""

    def __init__(self, block: VAEAttention) -> None:  # noqa: D107 - adopts, does not build
        torch.nn.Module.__init__(self)
        self.group_norm, self.to_q, self.to_k, self.to_v, self.to_out = (
            block.group_norm, block.to_q, block.to_k, block.to_v, block.to_out)

    def product(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.dtype != torch.float32:
            return super().product(q, k, v)
        halves = [t.half() for t in (q, k, v)]
        if not sdpa_runs_fused(*halves) or not bool(torch.stack([torch.isfinite(t).all() for t in halves]).all()):
            return super().product(q, k, v)
        return F.scaled_dot_product_attention(*halves).float()


def use_half_products(vae: torch.nn.Module) -> int:
    """Swap every VAEAttention of `vae` for HalfProductVAEAttention, in place; returns the count."""
    return replace_children(vae, VAEAttention, HalfProductVAEAttention)
