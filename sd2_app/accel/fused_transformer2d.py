"""Transformer2D with its residual add inside proj_out's matmul.

Why: a Transformer2D ends with proj_out (a Linear: matmul, bias in the epilogue) and `+ residual`, an
element-wise kernel that reads both full activations again and writes a third: 16 per SD2 UNet call. Its
GroupNorm reads the residual (the block's input) anyway, so the norm's kernel also writes residual + proj_out's
bias (`group_norm_and_biased_input`), and proj_out becomes `addmm_` accumulating onto that: one launch and
one read of each activation fewer per block. Two fp16 roundings, as before (matmul + bias, then the add).
"""

from __future__ import annotations

from torch import Tensor, nn

from sd2_app.accel.fused import GROUP_NORM_ONE_KERNEL_MAX, _adopt, channels_last_kernels
from sd2_app.nn.attention import Transformer2D


class FusedTransformer2D(Transformer2D):
    """Transformer2D whose proj_out accumulates onto the biased residual; adopts the original's children
    (same keys). A subclass: whatever looks for Transformer2D modules finds these too."""

    def __init__(self, block: Transformer2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        self.use_linear_projection = block.use_linear_projection
        _adopt(self, block, tuple(name for name, _ in block.named_children()))  # its order: the same keys

    def forward(self, x: Tensor, context: Tensor, *, upcast_attention: bool = False) -> Tensor:
        # x: (B, C, H, W); context: (B, 77, D)
        proj_out = self.proj_out
        if not (self.use_linear_projection and proj_out.bias is not None and channels_last_kernels(x, self.norm)
                and proj_out.weight.dtype == x.dtype):
            return super().forward(x, context, upcast_attention=upcast_attention)
        return self._forward_fused(x, context, upcast_attention)

    def _forward_fused(self, x: Tensor, context: Tensor, upcast_attention: bool = False) -> Tensor:
        from sd2_app.accel import triton_kernels

        proj_out = self.proj_out
        b, c, h, w = x.shape
        norm = self.norm
        normed, stream = triton_kernels.group_norm_and_biased_input(
            x, norm.num_groups, norm.weight, norm.bias, norm.eps, proj_out.bias,
            one_kernel_max=getattr(norm, "one_kernel_max", GROUP_NORM_ONE_KERNEL_MAX))
        tokens = self.proj_in(normed.permute(0, 2, 3, 1).reshape(b, h * w, c))  # channels_last: views
        for block in self.transformer_blocks:
            tokens = block(tokens, context, upcast_attention=upcast_attention)
        out = stream.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (pixels, C): a view of our own buffer
        out.addmm_(tokens.reshape(b * h * w, -1), proj_out.weight.t())
        return out.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
