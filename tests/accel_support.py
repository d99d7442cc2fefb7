"""Shared by the accel tests: a tiny UNet with deterministic weights, and inputs for one call."""

from __future__ import annotations

import torch

from sd2_app.nn.config import UNetConfig
from sd2_app.nn.unet import UNet
from sd2_app.testing.configs import tiny_unet_config
from sd2_app.testing.tiny_transformers import fill_deterministic


def tiny_unet(kind: str = "sd2-base") -> UNet:
    unet = UNet(UNetConfig.from_dict(tiny_unet_config(kind)))
    unet.load_state_dict(fill_deterministic(unet, 1234))  # (it returns the values; the module is untouched)
    return unet.eval()


def unet_inputs(unet: UNet, batch: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    timestep = torch.full((batch,), 501.0)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return sample, timestep, context
