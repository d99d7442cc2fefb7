"""Residual block and resampling layers shared by the UNet and the VAE.

After diffusers resnet.py (ResnetBlock2D), downsampling.py and upsampling.py.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResnetBlock2D(nn.Module):
    """GN-SiLU-conv twice, plus a 1x1 shortcut when the width changes.

    UNet resnets add a projection of the time embedding after conv1 (`time_dim`); VAE resnets have none.
    The caller passes the time embedding already through SiLU, so the UNet applies that activation once
    per forward instead of once per resnet (same numbers).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None, *,
                 groups: int = 32, eps: float = 1e-5, output_scale_factor: float = 1.0) -> None:
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, out_channels) if time_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, emb_act: Tensor | None = None) -> Tensor:
        # x: (B, Cin, H, W); emb_act: (B, time_dim) = silu(time embedding), or None in the VAE
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(emb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.residual(x, h)

    def residual(self, x: Tensor, h: Tensor) -> Tensor:
        """The block's output (B, Cout, H, W): x (through the 1x1 shortcut when the width changes) plus the
        residual branch h, divided by output_scale_factor."""
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. padding=0 (VAE encoder) pads right/bottom by one first: LDM's asymmetric pad."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest x2 (or to an explicit size, for latents that are not multiples of 2**levels), then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
