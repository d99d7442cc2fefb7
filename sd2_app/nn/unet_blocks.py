"""UNet down/mid/up blocks (diffusers unet_2d_blocks.py). Attribute names equal the diffusers checkpoint keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sd2_app.nn.attention import Transformer2D
from sd2_app.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclass(frozen=True)
class BlockSpec:
    """What one UNet level needs to build itself, derived once from UNetConfig."""

    time_dim: int
    groups: int
    eps: float
    heads: int
    context_dim: int
    use_linear_projection: bool
    only_cross_attention: bool
    upcast: bool


def _transformer(channels: int, spec: BlockSpec) -> Transformer2D:
    return Transformer2D(channels, spec.heads, spec.context_dim, groups=spec.groups,
                         use_linear_projection=spec.use_linear_projection,
                         only_cross_attention=spec.only_cross_attention, upcast=spec.upcast)


def _resnet(in_channels: int, out_channels: int, spec: BlockSpec, scale: float = 1.0) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels, out_channels, spec.time_dim, groups=spec.groups, eps=spec.eps,
                         output_scale_factor=scale)


class DownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, spec: BlockSpec, *,
                 add_downsample: bool, downsample_padding: int = 1) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, spec) for i in range(num_layers)
        ])
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, downsample_padding)])
                             if add_downsample else None)

    def forward(self, x: Tensor, emb_act: Tensor, context: Tensor, *,
                fp32_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Returns the output and every state pushed on the skip stack (one per resnet, one per downsample)."""
        states = []
        for resnet in self.resnets:
            x = resnet(x, emb_act)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class CrossAttnDownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, spec: BlockSpec, *,
                 add_downsample: bool, downsample_padding: int = 1) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, spec) for i in range(num_layers)
        ])
        self.attentions = nn.ModuleList([_transformer(out_channels, spec) for _ in range(num_layers)])
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, downsample_padding)])
                             if add_downsample else None)

    def forward(self, x: Tensor, emb_act: Tensor, context: Tensor, *,
                fp32_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        states = []
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            x = attn(resnet(x, emb_act), context, fp32_attention=fp32_attention)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnet -> transformer -> resnet at the lowest resolution; always plain self-attention in attn1."""

    def __init__(self, channels: int, spec: BlockSpec, output_scale_factor: float = 1.0) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(channels, channels, spec, output_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList([_transformer(channels, spec)])

    def forward(self, x: Tensor, emb_act: Tensor, context: Tensor, *, fp32_attention: bool = False) -> Tensor:
        x = self.resnets[0](x, emb_act)
        x = self.attentions[0](x, context, fp32_attention=fp32_attention)
        return self.resnets[1](x, emb_act)


def _up_resnets(in_channels: int, prev_channels: int, out_channels: int, num_layers: int,
                spec: BlockSpec) -> nn.ModuleList:
    """Resnet i takes the running features plus one popped skip; the last skip comes from the level below."""
    resnets = []
    for i in range(num_layers):
        skip = in_channels if i == num_layers - 1 else out_channels
        running = prev_channels if i == 0 else out_channels
        resnets.append(_resnet(running + skip, out_channels, spec))
    return nn.ModuleList(resnets)


class UpBlock2D(nn.Module):
    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, num_layers: int,
                 spec: BlockSpec, *, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = _up_resnets(in_channels, prev_channels, out_channels, num_layers, spec)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: Tensor, skips: list[Tensor], emb_act: Tensor, context: Tensor,
                upsample_size: tuple[int, int] | None = None, *, fp32_attention: bool = False) -> Tensor:
        """`skips` holds this block's skip states in push order; the most recent is consumed first."""
        for resnet, skip in zip(self.resnets, reversed(skips), strict=True):
            x = resnet(torch.cat([x, skip], dim=1), emb_act)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock2D(nn.Module):
    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, num_layers: int,
                 spec: BlockSpec, *, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = _up_resnets(in_channels, prev_channels, out_channels, num_layers, spec)
        self.attentions = nn.ModuleList([_transformer(out_channels, spec) for _ in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: Tensor, skips: list[Tensor], emb_act: Tensor, context: Tensor,
                upsample_size: tuple[int, int] | None = None, *, fp32_attention: bool = False) -> Tensor:
        for resnet, attn, skip in zip(self.resnets, self.attentions, reversed(skips), strict=True):
            x = attn(resnet(torch.cat([x, skip], dim=1), emb_act), context, fp32_attention=fp32_attention)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
