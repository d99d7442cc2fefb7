"""channels_last (NHWC) activations: cuDNN's tensor-core convolutions then need no layout transposes.

`to_channels_last` sets the convolution weights NHWC (conv_in's weight decides the layout of every
activation after it) and swaps each Transformer2D for a twin whose output keeps its input's layout: the
plain one returns NCHW, which would cost a copy back and forth at every transformer of an NHWC network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sd2_app.accel.twins import adopt, replace_children
from sd2_app.nn.attention import Transformer2D


def is_channels_last(x: Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also NCHW-contiguous, as 1x1 images are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class LayoutKeepingTransformer2D(Transformer2D):
    """Transformer2D whose output has its input's memory layout; adopts the original's children (same keys).

    channels_last is the token layout already, so proj_out's (B, HW, C) output is an NHWC image as it is.
    """

    def __init__(self, block: Transformer2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        self.use_linear_projection = block.use_linear_projection
        adopt(self, block, tuple(name for name, _ in block.named_children()))  # its order: the same keys

    def tokens_to_image(self, x: Tensor, residual: Tensor) -> Tensor:
        if not is_channels_last(residual):
            return super().tokens_to_image(x, residual)
        b, _, h, w = residual.shape
        layout = torch.channels_last
        if self.use_linear_projection:
            return self.proj_out(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        return self.proj_out(x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=layout))


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model`'s 4-D weights NHWC and its Transformer2Ds layout-keeping, in place."""
    model.to(memory_format=torch.channels_last)
    replace_children(model, Transformer2D, LayoutKeepingTransformer2D)
    return model
