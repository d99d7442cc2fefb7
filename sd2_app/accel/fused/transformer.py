"""The transformer blocks with their residual adds fused: each residual add of a BasicTransformerBlock inside
the next LayerNorm's kernel, and each Transformer2D's residual add inside its proj_out matmul.

Why: a Transformer2D ends with proj_out (a Linear: matmul, bias in the epilogue) and `+ residual`, an
element-wise kernel that reads both full activations again and writes a third: 16 per SD2 UNet call. Its
GroupNorm reads the residual (the block's input) anyway, so the norm's kernel also writes residual + proj_out's
bias (`group_norm_and_biased_input`), and proj_out becomes `addmm_` accumulating onto that: one launch and
one read of each activation fewer per block. Two fp16 roundings, as before (matmul + bias, then the add).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sd2_app.accel.fused.ops import channels_last_kernels, triton_available
from sd2_app.accel.layout import LayoutKeepingTransformer2D
from sd2_app.accel.twins import adopt
from sd2_app.nn.attention import BasicTransformerBlock


def _use_layer_norm_kernel(x: Tensor, norm: nn.LayerNorm) -> bool:
    return (x.is_cuda and x.is_contiguous() and triton_available() and norm.weight is not None
            and x.dtype == norm.weight.dtype and len(norm.normalized_shape) == 1)


class FusedTransformerBlock(nn.Module):
    """BasicTransformerBlock's math with each residual add fused into the next LayerNorm (one kernel writes
    the new residual stream and its normalised copy); adopts the original's children (same keys).

    The kernel holds whole rows in registers (each element read and written once) and saves the separate add's
    pass and launch: 32 kernels fewer per UNet call. The last residual add goes into the feed-forward's
    output matmul (the norm writes the stream plus that Linear's bias; addmm accumulates onto it): 16 more.
    """

    def __init__(self, block: BasicTransformerBlock) -> None:
        super().__init__()
        adopt(self, block, ("only_cross_attention", "norm1", "attn1", "norm2", "attn2", "norm3", "ff"))

    def forward(self, x: Tensor, context: Tensor, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, N, dim); context: (B, 77, context_dim)
        fp32 = fp32_attention
        if not _use_layer_norm_kernel(x, self.norm1):
            x = self.attn1(self.norm1(x), context if self.only_cross_attention else None, fp32_attention=fp32) + x
            x = self.attn2(self.norm2(x), context, fp32_attention=fp32) + x
            return self.ff(self.norm3(x)) + x
        return self._forward_fused(x, context, fp32)

    def _forward_fused(self, x: Tensor, context: Tensor, fp32_attention: bool = False) -> Tensor:
        from sd2_app.accel.kernels import elementwise as triton_kernels

        self_context = context if self.only_cross_attention else None

        def norm(v: Tensor, layer: nn.LayerNorm, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return triton_kernels.layer_norm(v, layer.weight, layer.bias, layer.eps, residual=residual)

        _, h = norm(x, self.norm1)
        x, h = norm(self.attn1(h, self_context, fp32_attention=fp32_attention), self.norm2, residual=x)
        out = self.ff.net[2]  # the feed-forward's last Linear
        if out.bias is None:
            x, h = norm(self.attn2(h, context, fp32_attention=fp32_attention), self.norm3, residual=x)
            return self.ff(h) + x
        # The stream comes out of the norm with the Linear's bias in it, and the matmul accumulates onto it:
        # ff(h) + x in one kernel instead of a matmul (with bias) and an add.
        attended = self.attn2(h, context, fp32_attention=fp32_attention)
        x, h = triton_kernels.layer_norm(attended, self.norm3.weight, self.norm3.bias, self.norm3.eps, residual=x,
                                         sum_bias=out.bias)
        inner = self.ff.net[0](h)  # (B, N, ff_inner)
        return torch.addmm(x.view(-1, x.shape[-1]), inner.view(-1, inner.shape[-1]), out.weight.t()).view(x.shape)


class FusedTransformer2D(LayoutKeepingTransformer2D):
    """Transformer2D whose proj_out accumulates onto the biased residual; adopts the original's children
    (same keys). A subclass: whatever looks for Transformer2D modules finds these too; where the fused path
    does not apply, the layout-keeping forward runs."""

    def forward(self, x: Tensor, context: Tensor, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, C, H, W); context: (B, 77, D)
        proj_out = self.proj_out
        if not (self.use_linear_projection and proj_out.bias is not None and channels_last_kernels(x, self.norm)
                and proj_out.weight.dtype == x.dtype):
            return super().forward(x, context, fp32_attention=fp32_attention)
        return self._forward_fused(x, context, fp32_attention)

    def _forward_fused(self, x: Tensor, context: Tensor, fp32_attention: bool = False) -> Tensor:
        from sd2_app.accel.kernels import elementwise as triton_kernels

        proj_out = self.proj_out
        b, c, h, w = x.shape
        norm = self.norm
        normed, stream = triton_kernels.group_norm_and_biased_input(
            x, norm.num_groups, norm.weight, norm.bias, norm.eps, proj_out.bias)
        tokens = self.proj_in(normed.permute(0, 2, 3, 1).reshape(b, h * w, c))  # channels_last: views
        for block in self.transformer_blocks:
            tokens = block(tokens, context, fp32_attention=fp32_attention)
        out = stream.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (pixels, C): a view of our own buffer
        out.addmm_(tokens.reshape(b * h * w, -1), proj_out.weight.t())
        return out.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
