"""The real `unet/config.json` and `vae/config.json` of the SD2 hub repos as plain dicts (as published).

Used by the architecture tests (meta-device builds compared with diffusers) and by the tiny-checkpoint writer,
which shrinks widths but keeps block types, order and quirks. Keys absent from the hub files are absent here too.
"""

from __future__ import annotations

import copy
from typing import Any

_SD2_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.8.0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}


def _unet(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(_SD2_UNET)
    d.update(changes)
    return d


UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd2-base": _unet(num_class_embeds=None, only_cross_attention=False, upcast_attention=False),
    "sd2": _unet(sample_size=96, _diffusers_version="0.10.0.dev0"),
    "sd21": _unet(sample_size=96, upcast_attention=True, _diffusers_version="0.10.0.dev0"),
    "sd2-inpainting": _unet(in_channels=9),
    "sd2-depth": _unet(in_channels=5, sample_size=32, num_class_embeds=None, only_cross_attention=False,
                       _diffusers_version="0.10.0.dev0"),
    "x4-upscaler": _unet(
        _diffusers_version="0.9.0.dev0",
        in_channels=7,
        sample_size=128,
        block_out_channels=[256, 512, 512, 1024],
        attention_head_dim=8,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        num_class_embeds=1000,
        only_cross_attention=[True, True, True, False],
    ),
}

_SD2_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.8.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "sd2": copy.deepcopy(_SD2_VAE),
    "x4-upscaler": {
        **copy.deepcopy(_SD2_VAE),
        "_diffusers_version": "0.9.0.dev0",
        "block_out_channels": [128, 256, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "sample_size": 256,
        "scaling_factor": 0.08333,
    },
}


def unet_config(name: str) -> dict[str, Any]:
    """A fresh copy of one real UNet config dict (callers may mutate it)."""
    return copy.deepcopy(UNET_CONFIGS[name])


def vae_config(name: str) -> dict[str, Any]:
    """A fresh copy of one real VAE config dict; sd2-base/inpainting/depth share the "sd2" one."""
    return copy.deepcopy(VAE_CONFIGS[name])


def _scaled_heads(heads: int | list[int], channels: list[int]) -> int | list[int]:
    """Head counts for tiny widths: keep the real per-level pattern, but at most channels/8 heads each."""
    if isinstance(heads, int):
        return max(1, min(heads, min(channels) // 16))
    return [max(1, min(h // 5 or 1, c // 8)) for h, c in zip(heads, channels, strict=True)]


def tiny_unet_config(name: str) -> dict[str, Any]:
    """A real UNet config shrunk for CPU tests: same block types, order, quirks and in_channels.

    Widths (32, 32, 64, 64), 8 GroupNorm groups, cross_attention_dim 32. SD2 heads [5,10,20,20] become
    [1, 2, 4, 4] (head_dim 32, 16, 16, 16); x4's single 8 becomes 2.
    """
    d = unet_config(name)
    channels = [32, 32, 64, 64]
    d.update(
        block_out_channels=channels,
        attention_head_dim=_scaled_heads(d["attention_head_dim"], channels),
        norm_num_groups=8,
        cross_attention_dim=32,
        sample_size=8,
    )
    if d.get("num_class_embeds"):
        d["num_class_embeds"] = 1000  # noise levels 0..999 stay valid inputs
    return d


def tiny_vae_config(name: str) -> dict[str, Any]:
    """A real VAE config shrunk for CPU tests: widths 32, 32, 64(, 64), 8 groups, same level count."""
    d = vae_config(name)
    d.update(block_out_channels=[32, 32, 64, 64][: len(d["block_out_channels"])], norm_num_groups=8, sample_size=32)
    return d
