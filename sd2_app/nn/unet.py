"""The SD2 conditional UNet; attribute paths equal the diffusers checkpoint keys.

After diffusers unet_2d_condition.py (UNet2DConditionModel.forward).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.nn.config import UNetConfig
from sd2_app.nn.embeddings import TimestepEmbedding, timestep_embedding
from sd2_app.nn.unet_blocks import (
    BlockSpec,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)

_DOWN = {"CrossAttnDownBlock2D": CrossAttnDownBlock2D, "DownBlock2D": DownBlock2D}
_UP = {"CrossAttnUpBlock2D": CrossAttnUpBlock2D, "UpBlock2D": UpBlock2D}


class Denoiser(Protocol):
    """What a pipeline calls as the UNet: the UNet itself, or something that runs it (accel's CudaGraphUNet
    replays it from CUDA graphs). The pipelines use this much of it and no more."""

    @property
    def config(self) -> UNetConfig: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]:
        """The network's modules, the network itself first (nn.Module.modules' order)."""

    def __call__(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                 class_labels: Tensor | None = None, *, fp32_attention: bool = False) -> Tensor: ...


class UNet(nn.Module):
    """eps- or v-predicting UNet; `load_state_dict(diffusers_sd, strict=True)` works without renames."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        n = len(channels)
        time_dim = config.time_embed_dim

        def spec(heads: int, only_cross: bool) -> BlockSpec:
            return BlockSpec(time_dim=time_dim, groups=config.norm_num_groups, eps=config.norm_eps, heads=heads,
                             context_dim=config.cross_attention_dim,
                             use_linear_projection=config.use_linear_projection,
                             only_cross_attention=only_cross, upcast=config.upcast_attention)

        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim)
        self.class_embedding = (nn.Embedding(config.num_class_embeds, time_dim)
                                if config.num_class_embeds is not None else None)

        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, kind in enumerate(config.down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(_DOWN[kind](
                in_ch, out_ch, config.layers_per_block,
                spec(config.num_heads[i], config.only_cross_attention[i]),
                add_downsample=i < n - 1, downsample_padding=config.downsample_padding))

        self.mid_block = UNetMidBlock2DCrossAttn(channels[-1], spec(config.num_heads[-1], False),
                                                 config.mid_block_scale_factor)

        self.up_blocks = nn.ModuleList()
        rev_channels = channels[::-1]
        rev_heads = config.num_heads[::-1]
        rev_only_cross = config.only_cross_attention[::-1]
        out_ch = rev_channels[0]
        for i, kind in enumerate(config.up_block_types):
            prev_ch, out_ch = out_ch, rev_channels[i]
            in_ch = rev_channels[min(i + 1, n - 1)]
            self.up_blocks.append(_UP[kind](
                in_ch, prev_ch, out_ch, config.layers_per_block + 1, spec(rev_heads[i], rev_only_cross[i]),
                add_upsample=i < n - 1))

        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)

    def _time_embedding(self, timestep: Tensor | float, batch: int, device: torch.device) -> Tensor:
        """(B, time_dim) embedding; the sinusoid is built in fp32 then cast to the weights' dtype."""
        if isinstance(timestep, Tensor):
            t = timestep.to(device).reshape(-1).expand(batch)  # scalar, (1,) or (B,)
        else:
            t = torch.full((batch,), float(timestep), dtype=torch.float32, device=device)
        t_emb = timestep_embedding(t, self.config.block_out_channels[0],
                                   flip_sin_to_cos=self.config.flip_sin_to_cos, freq_shift=self.config.freq_shift)
        return self.time_embedding(t_emb.to(self.time_embedding.linear_1.weight.dtype))

    def forward(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                class_labels: Tensor | None = None, *, fp32_attention: bool = False) -> Tensor:
        # sample: (B, Cin, h, w); timestep: float, () or (B,); encoder_hidden_states: (B, 77, D)
        # class_labels: (B,) long noise levels, x4 upscaler only
        # fp32_attention: every attention product in fp32 for this call (see nn.attention.Attention)
        emb = self._time_embedding(timestep, sample.shape[0], sample.device)  # (B, time_dim)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this UNet has a class embedding: pass class_labels (the x4 noise level)")
            emb = emb + self.class_embedding(class_labels).to(emb.dtype)
        emb_act = F.silu(emb)  # every resnet applies SiLU to emb first; do it once here

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x, emb_act, encoder_hidden_states, fp32_attention=fp32_attention)
            skips.extend(states)

        x = self.mid_block(x, emb_act, encoder_hidden_states, fp32_attention=fp32_attention)

        for block in self.up_blocks:
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            upsample_size = tuple(skips[-1].shape[2:]) if skips else None  # next skip's size (odd sizes)
            x = block(x, block_skips, emb_act, encoder_hidden_states, upsample_size,
                      fp32_attention=fp32_attention)

        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)  # (B, out_channels, h, w)
