"""Nearest x2 upsampling then a 3x3 conv, computed as four 2x2 convs on the small input (sub-pixel).

Why: after nearest x2, each output pixel's 3x3 window reads only 2x2 distinct input pixels, so the conv
multiplies the same input values by several taps. Output pixel (2i+a, 2j+b) is a 2x2 conv of the input at
rows {i-1, i} (a = 0: taps {0} and {1, 2} summed) or {i, i+1} (a = 1: taps {0, 1} and {2}), the same for
columns. One conv with the four phases' summed kernels stacked as 4x the output channels (2x2, padding 1)
then computes every phase, and one strided copy (which also adds the bias) interleaves them: 16/36 of the
multiply-adds, and the 4x-sized upsampled input is never written. In SD2 the UNet's three upsampler convs
are ~8% of a call's FLOPs; the VAE decoder's about 29% of its convolution work (at 512 px: 512 channels at
128x128 and 256x256, 256 channels at 512x512: 348 of ~1200 GMAC).

The summed kernels are kept as a buffer (not in the state dict; the manager moves it with the module):
16/9 of the conv's weight; whoever changes the conv's weights in place says so (`weights_changed`). Sums are
taken in fp32 and rounded once to the weights' dtype, and taken again when the weights' dtype changes: a
half-precision module converted to fp32 for one decode (the x4 VAE, the fp32 retry) would otherwise convolve
with fp32 copies of fp16-rounded sums, ~5e-4 off in every weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.nn.resnet import Upsample2D

# Per phase (along one axis), which of the 3x3 kernel's three taps each of the 2x2 kernel's two taps sums:
# phase 0 reads inputs {i-1, i} with taps {0} and {1, 2}; phase 1 reads {i, i+1} with taps {0, 1} and {2}.
_TAP_SUMS = ((
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 1.0),
), (
    (1.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
))


def phase_kernels(weight: Tensor) -> Tensor:
    """(Cout, Cin, 3, 3) -> (4 * Cout, Cin, 2, 2): the kernels of phases (a, b) in the order 2a + b."""
    w = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))  # fp16 sums in fp32
    sums = torch.tensor(_TAP_SUMS, dtype=w.dtype, device=w.device)  # (phase, new tap, old tap)
    phases = [torch.einsum("ky,oiyx,lx->oikl", sums[a], w, sums[b]) for a in (0, 1) for b in (0, 1)]
    return torch.cat(phases).to(weight.dtype)


class SubpixelUpsample2D(Upsample2D):
    """Upsample2D as four 2x2 convs on the small input; adopts the original conv (same keys)."""

    def __init__(self, block: Upsample2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        self.conv = block.conv
        self.register_buffer("phase_weight", phase_kernels(block.conv.weight), persistent=False)
        self._summed_from = block.conv.weight.dtype  # a plain attribute: module.to(dtype) leaves it alone

    def weights_changed(self) -> None:
        """Sum the kernels again, into the same buffer (a captured CUDA graph reads the new sums), after the conv's
        weights changed in place (a LoRA merged or put back: pipelines/lora.py)."""
        with torch.no_grad():
            self.phase_weight.copy_(phase_kernels(self.conv.weight))

    def _phase_weight(self) -> Tensor:
        """The summed kernels for the conv's current weights: summed again (once) after a dtype change."""
        weight = self.conv.weight
        if weight.dtype != self._summed_from:
            self.phase_weight = phase_kernels(weight)
            self._summed_from = weight.dtype
        return self.phase_weight

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        batch, _, height, width = x.shape
        if ((size is not None and tuple(size) != (2 * height, 2 * width)) or self.conv.groups != 1
                or self.conv.padding_mode != "zeros"):  # seamless tiling pads circularly: the plain path
            return super().forward(x, size)
        channels = self.conv.out_channels
        phases = F.conv2d(x, self._phase_weight(), None, padding=1)  # (B, 4C, H+1, W+1), phase p = 2a + b
        s_batch, s_channel, s_row, s_col = phases.stride()
        # (B, i, a, j, b, c) -> phases[B, (2a + b) * C + c, i + a, j + b]: a strided view, no copy
        source = phases.as_strided((batch, height, 2, width, 2, channels),
                                   (s_batch, s_row, s_row + 2 * channels * s_channel, s_col,
                                    s_col + channels * s_channel, s_channel))
        layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                  and not x.is_contiguous() else torch.contiguous_format)
        out = torch.empty((batch, channels, 2 * height, 2 * width), dtype=phases.dtype, device=x.device,
                          memory_format=layout)
        o_batch, o_channel, o_row, o_col = out.stride()
        # (B, i, a, j, b, c) -> out[B, c, 2i + a, 2j + b]
        target = out.as_strided(source.shape, (o_batch, 2 * o_row, o_row, 2 * o_col, o_col, o_channel))
        if self.conv.bias is None:
            target.copy_(source)
        else:
            torch.add(source, self.conv.bias, out=target)
        return out
