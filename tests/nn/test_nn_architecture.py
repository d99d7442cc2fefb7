"""Real SD2 configs built on the meta device: same state-dict keys and shapes as diffusers, and the reference
parameter / tensor counts of the hub checkpoints, so a hub checkpoint loads with strict=True."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sd2_app.nn.config import UNetConfig, VAEConfig
from sd2_app.nn.unet import UNet
from sd2_app.nn.vae import AutoencoderKL
from sd2_app.testing.configs import UNET_CONFIGS, VAE_CONFIGS, unet_config, vae_config

diffusers = pytest.importorskip("diffusers")

# name -> (tensors in state_dict, parameters) of the hub checkpoints
UNET_COUNTS = {
    "sd2-base": (686, 865_910_724),
    "sd2": (686, 865_910_724),
    "sd21": (686, 865_910_724),
    "sd2-inpainting": (686, 865_925_124),
    "sd2-depth": (686, 865_913_604),
    "x4-upscaler": (687, 473_398_020),
}
VAE_COUNTS = {"sd2": (248, 83_653_863), "x4-upscaler": (204, 55_325_927)}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same_layout(ours: nn.Module, reference: nn.Module) -> None:
    a, b = _shapes(ours), _shapes(reference)
    assert sorted(set(a) - set(b)) == [], "keys only in ours"
    assert sorted(set(b) - set(a)) == [], "keys only in diffusers"
    wrong = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert wrong == {}


def _assert_layout_and_counts(ours_cls: Callable[[Any], nn.Module], reference_cls: Callable[..., nn.Module],
                              config: Any, counts: tuple[int, int]) -> None:
    """Ours and diffusers' model of `config`, built on the meta device: the same layout, and ours has the hub
    checkpoint's (tensors, parameters) `counts`."""
    with torch.device("meta"):
        ours = ours_cls(config)
        reference = reference_cls(**config.to_dict())
    _assert_same_layout(ours, reference)
    tensors, params = counts
    assert len(ours.state_dict()) == tensors
    assert sum(p.numel() for p in ours.parameters()) == params


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_layout_and_counts(name: str) -> None:
    config = UNetConfig.from_dict(unet_config(name))
    _assert_layout_and_counts(UNet, diffusers.UNet2DConditionModel, config, UNET_COUNTS[name])


@pytest.mark.parametrize("name", list(VAE_CONFIGS))
def test_vae_layout_and_counts(name: str) -> None:
    config = VAEConfig.from_dict(vae_config(name))
    _assert_layout_and_counts(AutoencoderKL, diffusers.AutoencoderKL, config, VAE_COUNTS[name])


def test_real_config_quirks_are_absorbed() -> None:
    sd2 = UNetConfig.from_dict(unet_config("sd2"))
    assert sd2.num_heads == (5, 10, 20, 20)  # "attention_head_dim" is the head count
    assert sd2.only_cross_attention == (False,) * 4
    assert sd2.upcast_attention is False and sd2.use_linear_projection is True
    assert sd2.num_class_embeds is None and sd2.time_embed_dim == 1280
    assert UNetConfig.from_dict(unet_config("sd21")).upcast_attention is True
    x4 = UNetConfig.from_dict(unet_config("x4-upscaler"))
    assert x4.num_heads == (8,) * 4
    assert x4.only_cross_attention == (True, True, True, False)
    assert x4.num_class_embeds == 1000 and x4.time_embed_dim == 1024
    assert VAEConfig.from_dict(vae_config("sd2")).scaling_factor == 0.18215  # absent -> default
    x4_vae = VAEConfig.from_dict(vae_config("x4-upscaler"))
    assert x4_vae.scaling_factor == 0.08333 and x4_vae.spatial_factor == 4


def test_x4_only_cross_attention_shapes() -> None:
    """attn1 of the cross-only x4 blocks reads the 1024-d text; down 3, up 0 and mid keep self-attention."""
    with torch.device("meta"):
        shapes = _shapes(UNet(UNetConfig.from_dict(unet_config("x4-upscaler"))))
    block = "attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert shapes[f"down_blocks.1.{block}"] == (512, 1024)
    assert shapes[f"up_blocks.2.{block}"] == (512, 1024)
    assert shapes[f"down_blocks.3.{block}"] == (1024, 1024)
    assert shapes[f"up_blocks.0.{block}"] == (1024, 1024)
    assert shapes[f"mid_block.{block}"] == (1024, 1024)
    assert shapes["class_embedding.weight"] == (1000, 1024)


def test_from_json_logs_ignored_and_roundtrips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = unet_config("x4-upscaler")
    d["some_future_key"] = 3
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with caplog.at_level(logging.DEBUG, logger="sd2_app.nn.config"):
        config = UNetConfig.from_json(path)
    assert "some_future_key" in caplog.text
    assert UNetConfig.from_dict(config.to_dict()) == config
    vae = VAEConfig.from_dict(vae_config("x4-upscaler"))
    assert VAEConfig.from_dict(vae.to_dict()) == vae


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_head_dim": None}, "attention_head_dim"),
        ({"attention_head_dim": [5, 10]}, "attention_head_dim"),
        ({"only_cross_attention": [True]}, "only_cross_attention"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4}, "SimpleCrossAttnDownBlock2D"),
        ({"num_attention_heads": 8}, "num_attention_heads"),
    ],
)
def test_unet_config_refuses_what_we_do_not_build(change: dict, message: str) -> None:
    d = unet_config("sd2")
    d.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        UNetConfig.from_dict(d)


def test_missing_required_key_is_named() -> None:
    d = unet_config("sd2")
    del d["cross_attention_dim"]
    with pytest.raises(ValueError, match="cross_attention_dim"):
        UNetConfig.from_dict(d)
    v = vae_config("sd2")
    del v["block_out_channels"]
    with pytest.raises(ValueError, match="block_out_channels"):
        VAEConfig.from_dict(v)
