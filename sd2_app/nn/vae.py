"""AutoencoderKL of SD2: 4 levels (factor 8) or, for the x4 upscaler, 3 (factor 4).

After diffusers autoencoders/autoencoder_kl.py (AutoencoderKL) and autoencoders/vae.py (Encoder, Decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.nn.config import VAEConfig
from sd2_app.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D

_EPS = 1e-6  # every GroupNorm of the VAE


class VAEAttention(nn.Module):
    """Single-head self-attention over all pixels, with biases and a residual (the mid block's only attention).

    Names are the current diffusers ones (to_q/to_k/to_v/to_out.0); the loader renames legacy
    query/key/value/proj_attn checkpoints.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Identity()])  # slot 1 was dropout

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        q = self.to_q(t)[:, None]  # (B, 1, HW, C): one head
        k = self.to_k(t)[:, None]
        v = self.to_v(t)[:, None]
        t = self.product(q, k, v)[:, 0]  # (B, HW, C)
        t = self.to_out[0](t)
        return t.transpose(1, 2).reshape(b, c, h, w) + x

    def product(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(C)) v over (B, 1, HW, C) tensors (the step a faster kernel may replace)."""
        return F.scaled_dot_product_attention(q, k, v)


class UNetMidBlock2D(nn.Module):
    """resnet -> attention -> resnet, no time input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups=groups, eps=_EPS)
                                      for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups=groups, eps=_EPS)
            for i in range(num_layers)
        ])
        # padding 0 => asymmetric (0,1,0,1) pad inside Downsample2D, as in LDM
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if add_downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups=groups, eps=_EPS)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> moments (B, 2*latent, H/f, W/f) before quant_conv."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch = config.block_out_channels
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], config.layers_per_block, groups, i < len(ch) - 1)
            for i in range(len(ch))
        ])
        self.mid_block = UNetMidBlock2D(ch[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latent (B, latent, h, w) after post_quant_conv -> image (B, 3, h*f, w*f)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        rev = config.block_out_channels[::-1]
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, rev[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], groups)
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], config.layers_per_block + 1, groups, i < len(rev) - 1)
            for i in range(len(rev))
        ])
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(rev[-1], config.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over latents; moments: (B, 2*latent, h, w)."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, latent, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * noise, the noise drawn on the generator's device like diffusers' randn_tensor (same seeds)."""
        device = generator.device if generator is not None else self.mean.device
        return self.sample_with(torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype))

    def sample_with(self, noise: Tensor) -> Tensor:
        """mean + std * noise for unit `noise` (B, latent, h, w); a posterior of one image broadcasts to B."""
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """KL autoencoder; images in [-1, 1]. Scaling by `config.scaling_factor` is the pipeline's job."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        # x: (B, 3, H, W) -> posterior over (B, latent, H/f, W/f)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        # z: (B, latent, h, w) unscaled -> (B, 3, h*f, w*f)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x).mode())
