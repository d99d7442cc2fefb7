"""Timestep embeddings: sinusoidal features + the time MLP.

After diffusers embeddings.py (get_timestep_embedding, TimestepEmbedding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(
    timesteps: Tensor, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, always computed in fp32.

    timesteps: (B,) any dtype. Returns (B, dim) fp32: [cos, sin] when flip_sin_to_cos (SD2), else [sin, cos].
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = timesteps[:, None].float() * freqs[None, :]  # (B, half)
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat([first, second], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Time MLP: Linear -> SiLU -> Linear, no activation after (each resnet applies its own SiLU)."""

    def __init__(self, in_dim: int, time_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, time_dim)
        self.linear_2 = nn.Linear(time_dim, time_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
