"""Spatial transformer of the UNet: Attention, GEGLU, FeedForward, blocks, Transformer2D.

After diffusers transformers/transformer_2d.py and attention.py (BasicTransformerBlock).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention (scale head_dim**-0.5, no mask).

    `upcast` (SD2.1-768's `upcast_attention`, fixed when the network is built) runs the attention product in
    fp32 and casts back, because QK^T overflows fp16 for that checkpoint. The per-call switch
    `upcast_attention=True` does the same for one forward pass (the fallback ladder's rerun after NaN/inf
    latents, docs/DESIGN.md "Fallback ladder"); every forward from `UNet.forward` down passes it on, and
    subclasses that replace a forward (sd2_app.accel) must honour it. Nothing is stored on the module.
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

    def forward(self, x: Tensor, context: Tensor | None = None, *, upcast_attention: bool = False) -> Tensor:
        # x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, hd)
        k = self.to_k(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, M, hd)
        v = self.to_v(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        if self.upcast or upcast_attention:
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.to_out[0](out)


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

    def forward(self, x: Tensor, context: Tensor, *, upcast_attention: bool = False) -> Tensor:
        # x: (B, N, dim); context: (B, 77, context_dim)
        self_context = context if self.only_cross_attention else None
        x = self.attn1(self.norm1(x), self_context, upcast_attention=upcast_attention) + x
        x = self.attn2(self.norm2(x), context, upcast_attention=upcast_attention) + x
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

    def forward(self, x: Tensor, context: Tensor, *, upcast_attention: bool = False) -> Tensor:
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
            x = block(x, context, upcast_attention=upcast_attention)
        # Back to (B, C, H, W) in the residual's layout: channels_last is the token layout already (no copy).
        layout = (torch.channels_last if not residual.is_contiguous()
                  and residual.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        else:
            x = self.proj_out(x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=layout))
        return x + residual
