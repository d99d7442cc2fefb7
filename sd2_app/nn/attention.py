"""Spatial transformer of the UNet: Attention, GEGLU, FeedForward, blocks, Transformer2D.

After diffusers transformers/transformer_2d.py and attention.py (BasicTransformerBlock).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sdpa_runs_fused(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether F.scaled_dot_product_attention runs a fused kernel (flash, memory-efficient or cuDNN) for
    these inputs rather than its math backend. The fused kernels accumulate QK^T and the softmax in fp32
    whatever the input dtype; the math backend computes QK^T in the inputs' dtype, where fp16 can overflow.

    PyTorch's own choice (torch._fused_sdp_choice, the dispatcher F.scaled_dot_product_attention uses, with
    the backends enabled now): a few microseconds of host time, paid once per CUDA-graph capture on the
    default path. Inside torch.compile, CUDA inputs count as fused: Inductor lowers SDPA to those kernels.
    """
    if torch.compiler.is_compiling():
        return q.is_cuda
    choose = getattr(torch, "_fused_sdp_choice", None)
    return choose is not None and int(choose(q, k, v)) > 0  # 0: the math backend, -1: none (both unfused)


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention (scale head_dim**-0.5, no mask).

    `upcast` (the checkpoint's `upcast_attention`, set by SD 2.1-768) was made for implementations whose fp16
    QK^T overflows. SDPA's fused kernels cannot overflow that way (they accumulate in fp32), so, as in
    diffusers' default processor (attention_processor.py, AttnProcessor2_0, which ignores the flag), the
    product runs in fp16 wherever one of them serves the inputs, and in fp32 only where SDPA would fall back
    to its math backend (`sdpa_runs_fused`).

    The per-call switch `fp32_attention=True` computes every product in fp32 for one forward pass: the
    fallback ladder's rerun after a sampling run produced NaN/inf (docs/DESIGN.md, "Fallback ladder").
    `UNet.forward` and every block below it pass it on, keyword-only and False by default; subclasses and
    wrappers that replace one of these forwards (sd2_app.accel) must honour it. Nothing is stored on the
    module, so one job never changes a network that others share.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int, *,
                 bias: bool = False, upcast: bool = False) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.upcast = upcast
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])  # slot 1 was dropout

    def forward(self, x: Tensor, context: Tensor | None = None, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, hd)
        k = self.to_k(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, M, hd)
        v = self.to_v(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        out = self.attend(q, k, v, fp32_attention=fp32_attention)  # (B, heads, N, hd)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.to_out[0](out)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, fp32_attention: bool = False) -> Tensor:
        """softmax(q k^T / sqrt(hd)) v for (B, heads, N|M, hd) inputs, in the precision the class doc says."""
        if q.dtype != torch.float32 and (fp32_attention or (self.upcast and not sdpa_runs_fused(q, k, v))):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one Linear to 2*inner, then value * gelu(gate)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])  # slot 1 was dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention (or text attention when only_cross_attention), cross-attention, GEGLU FF."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, *,
                 only_cross_attention: bool = False, upcast: bool = False) -> None:
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, context_dim if only_cross_attention else dim, heads, head_dim, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, N, dim); context: (B, 77, context_dim)
        self_context = context if self.only_cross_attention else None
        x = self.attn1(self.norm1(x), self_context, fp32_attention=fp32_attention) + x
        x = self.attn2(self.norm2(x), context, fp32_attention=fp32_attention) + x
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    """GroupNorm -> proj_in -> one transformer block over the H*W tokens -> proj_out, plus the residual.

    SD2 uses Linear projections on tokens; the 1x1-conv variant (use_linear_projection false) is kept so that
    SD1-style configs load too.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, *, groups: int = 32,
                 use_linear_projection: bool = True, only_cross_attention: bool = False,
                 upcast: bool = False, num_layers: int = 1) -> None:
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, head_dim, context_dim,
                                  only_cross_attention=only_cross_attention, upcast=upcast)
            for _ in range(num_layers)
        ])

    def forward(self, x: Tensor, context: Tensor, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, C, H, W); context: (B, 77, D)
        b, _, h, w = x.shape
        residual = x
        x = self.norm(x)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(b, h * w, -1))  # (B, HW, inner)
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            x = block(x, context, fp32_attention=fp32_attention)
        return self.tokens_to_image(x, residual) + residual

    def tokens_to_image(self, x: Tensor, residual: Tensor) -> Tensor:
        """proj_out of the (B, HW, inner) tokens, as a contiguous image shaped like `residual` (B, C, H, W)."""
        b, _, h, w = residual.shape
        if self.use_linear_projection:
            return self.proj_out(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
