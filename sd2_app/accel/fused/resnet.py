"""The resnet block with GroupNorm+SiLU fused, and the up blocks whose resnets read the skip connection
without concatenating it first."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.accel.fused.ops import channels_last_kernels, group_norm_silu
from sd2_app.accel.twins import adopt
from sd2_app.accel.fused.stacking import SharedInputProjections
from sd2_app.nn.resnet import ResnetBlock2D
from sd2_app.nn.unet_blocks import CrossAttnUpBlock2D, UpBlock2D


def _conv_without_bias(conv: nn.Conv2d, x: Tensor) -> Tensor:
    if conv.padding_mode != "zeros":  # seamless tiling (pipelines/seamless.py): pad first, as Conv2d does
        padded = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padded = padded.contiguous(memory_format=torch.channels_last)  # the NHWC path's layout
        return F.conv2d(padded, conv.weight, None, conv.stride, 0, conv.dilation, conv.groups)
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class FusedResnetBlock2D(ResnetBlock2D):
    """ResnetBlock2D's math with GroupNorm+SiLU fused; adopts the original's children (same keys).

    For channels_last activations the convolutions run without their bias (cuDNN's convolution does not add
    it; PyTorch adds it in a separate pass): conv1's bias and the time embedding go into norm2's kernels as a
    per-(image, channel) shift, conv2's (and the shortcut conv's) bias into one bias + residual kernel. The
    sums are done in fp32 with one rounding instead of three fp16 roundings: the same math, ~1 fp16 ulp apart.
    An up-path block may get its skip connection as a second tensor (`skip`): channels_last, the NHWC
    GroupNorm reads both and the 1x1 shortcut runs as two matmuls, so the concatenation is never written.
    """

    def __init__(self, block: ResnetBlock2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        adopt(self, block, ("output_scale_factor", "norm1", "conv1", "time_emb_proj", "norm2", "conv2",
                            "conv_shortcut"))
        # (the UNet's shared time projections, this block's index), set by fuse_modules
        self.time_projection: tuple[SharedInputProjections, int] | None = None

    def _time(self, emb_act: Tensor | None) -> Tensor | None:
        """time_emb_proj(emb_act), (B, Cout), possibly a column view of the shared projection."""
        if self.time_emb_proj is None:
            return None
        if self.time_projection is not None:
            shared, index = self.time_projection
            return shared(emb_act, index)
        return self.time_emb_proj(emb_act)

    def forward(self, x: Tensor, emb_act: Tensor | None = None, skip: Tensor | None = None) -> Tensor:
        # x: (B, Cin, H, W), or with the up path's skip (B, Cs, H, W) the two make Cin channels together;
        # emb_act: (B, time_dim) already through SiLU, or None in the VAE
        if skip is not None and not self._reads_skip(x, skip):
            x, skip = torch.cat([x, skip], dim=1), None
        if channels_last_kernels(x, self.norm1) and self._has_biases():
            return self._forward_channels_last(x, emb_act, skip)
        h = self.conv1(group_norm_silu(x, self.norm1))
        if self.time_emb_proj is not None:
            h = h + self._time(emb_act)[:, :, None, None]
        h = self.conv2(group_norm_silu(h, self.norm2))
        return self.residual(x, h)  # (B, Cout, H, W)

    def _reads_skip(self, x: Tensor, skip: Tensor) -> bool:
        """Whether the NHWC path can take x and the skip connection apart (a 1x1 shortcut splits in two)."""
        return (self.conv_shortcut is not None and self._has_biases()
                and channels_last_kernels(x, self.norm1) and channels_last_kernels(skip, self.norm1))

    def _has_biases(self) -> bool:
        """The NHWC path folds the convolutions' biases into other kernels, so it needs them (SD2's have)."""
        convs = (self.conv1, self.conv2) + (() if self.conv_shortcut is None else (self.conv_shortcut,))
        return all(conv.bias is not None for conv in convs)

    def _forward_channels_last(self, x: Tensor, emb_act: Tensor | None, skip: Tensor | None = None) -> Tensor:
        from sd2_app.accel.kernels import elementwise as kernels

        norm1, norm2 = self.norm1, self.norm2
        h = kernels.group_norm_silu(x, norm1.num_groups, norm1.weight, norm1.bias, norm1.eps, concat=skip)
        h = _conv_without_bias(self.conv1, h)
        if not h.is_contiguous(memory_format=torch.channels_last):  # cuDNN keeps the layout; never pay for it
            h = h.contiguous(memory_format=torch.channels_last)
        temb = self._time(emb_act)  # (B, Cout) or None
        h = kernels.group_norm_silu(h, norm2.num_groups, norm2.weight, norm2.bias, norm2.eps,
                                    shift_bias=self.conv1.bias, shift_temb=temb)
        h = _conv_without_bias(self.conv2, h)
        shortcut_bias = None
        if self.conv_shortcut is not None:
            x = _conv_without_bias(self.conv_shortcut, x) if skip is None else self._split_shortcut(x, skip)
            shortcut_bias = self.conv_shortcut.bias
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return kernels.bias_residual(h, self.conv2.bias, x, 1.0 / self.output_scale_factor, bias2=shortcut_bias)

    def _split_shortcut(self, x: Tensor, skip: Tensor) -> Tensor:
        """The 1x1 shortcut conv of cat([x, skip]) without its bias, as two matmuls over channels_last
        memory, (pixels, C) @ weight[:, C columns].T: the second accumulates onto the first (one more fp16
        rounding, ~1 ulp), and the concatenation is never built. The weight slices are views."""
        batch, split, height, width = x.shape
        weight = self.conv_shortcut.weight[:, :, 0, 0]  # (Cout, Cin)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, split)  # views of channels_last memory
        skipped = skip.permute(0, 2, 3, 1).reshape(-1, skip.shape[1])
        out = torch.mm(pixels, weight[:, :split].t())
        out.addmm_(skipped, weight[:, split:].t())
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, Cout, H, W), channels_last


class SkipReadingUpBlock2D(UpBlock2D):
    """UpBlock2D whose (fused) resnets get each skip connection as a tensor of its own; adopts the
    original's children (same keys)."""

    def __init__(self, block: UpBlock2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        adopt(self, block, ("resnets", "upsamplers"))

    def forward(self, x: Tensor, skips: list[Tensor], emb_act: Tensor, context: Tensor,
                upsample_size: tuple[int, int] | None = None, *, fp32_attention: bool = False) -> Tensor:
        for resnet, skip in zip(self.resnets, reversed(skips), strict=True):
            x = resnet(x, emb_act, skip)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class SkipReadingCrossAttnUpBlock2D(CrossAttnUpBlock2D):
    """CrossAttnUpBlock2D whose (fused) resnets get each skip connection as a tensor of its own."""

    def __init__(self, block: CrossAttnUpBlock2D) -> None:  # noqa: D107 - adopts, does not build
        nn.Module.__init__(self)
        adopt(self, block, ("resnets", "attentions", "upsamplers"))

    def forward(self, x: Tensor, skips: list[Tensor], emb_act: Tensor, context: Tensor,
                upsample_size: tuple[int, int] | None = None, *, fp32_attention: bool = False) -> Tensor:
        for resnet, attn, skip in zip(self.resnets, self.attentions, reversed(skips), strict=True):
            x = attn(resnet(x, emb_act, skip), context, fp32_attention=fp32_attention)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
