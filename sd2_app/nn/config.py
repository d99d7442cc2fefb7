"""Network configs read from a diffusers `config.json`; every hub quirk is absorbed here and nowhere else.

The SD2 hub configs were written by diffusers 0.8-0.10, so many keys are absent and take diffusers' defaults.
Keys that would change the architecture to something we do not build are refused with a clear message;
keys that do not matter for inference are logged and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNET_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# Keys whose value only matters for training, tiling or bookkeeping.
_UNET_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "sample_size", "dropout"}
_VAE_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "sample_size"}

# Keys we accept only at the value our networks implement (= diffusers' default and every SD2 file).
_UNET_FIXED: dict[str, Any] = {
    "act_fn": "silu",
    "center_input_sample": False,
    "dual_cross_attention": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_attention_heads": None,  # diffusers itself refuses it: the head count lives in attention_head_dim
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "addition_embed_type_num_heads": 64,
}
_VAE_FIXED: dict[str, Any] = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


def _require(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{what} config.json lacks required key(s): {', '.join(missing)}")


def _check_fixed(d: Mapping[str, Any], fixed: Mapping[str, Any], what: str) -> None:
    for key, expected in fixed.items():
        if key in d and d[key] != expected and not (key == "mid_block_only_cross_attention" and d[key] is False):
            raise ValueError(f"{what} config: {key}={d[key]!r} is not supported (only {expected!r})")


def _log_ignored(d: Mapping[str, Any], known: set[str], what: str) -> None:
    ignored = sorted(k for k in d if k not in known)
    if ignored:
        log.debug("%s config: ignoring keys %s", what, ignored)


def _per_block(value: Any, n: int, name: str, kind: type) -> tuple:
    """Expand diffusers' "one value or one per down block" fields."""
    def ok(v: Any) -> bool:  # bool is an int subclass: a head count of True is a mistake
        return isinstance(v, kind) and (kind is bool or not isinstance(v, bool))

    if ok(value):
        return (value,) * n
    values = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(values) != n or not all(ok(v) for v in values):
        raise ValueError(f"UNet config: {name}={value!r} must be one {kind.__name__} or {n} of them")
    return values


def _read_json(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass(frozen=True)
class UNetConfig:
    """SD2 UNet2DConditionModel hyper-parameters (the hub repos' unet/config.json; diffusers unet_2d_condition.py)."""

    in_channels: int  # 4 txt2img, 9 inpaint, 5 depth, 7 x4 upscaler
    out_channels: int
    block_out_channels: tuple[int, ...]  # (320, 640, 1280, 1280); x4 (256, 512, 512, 1024)
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    num_heads: tuple[int, ...]  # per down block; hub name "attention_head_dim" is really the head COUNT
    only_cross_attention: tuple[bool, ...]  # per down block; x4: attn1 attends to the text too
    cross_attention_dim: int  # 1024: OpenCLIP ViT-H text width
    layers_per_block: int = 2
    use_linear_projection: bool = True  # proj_in/out are Linear (SD2) or 1x1 conv (SD1-style)
    upcast_attention: bool = False  # SD2.1-768: compute attention in fp32
    num_class_embeds: int | None = None  # x4: 1000 noise levels added to the time embedding
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True  # sinusoidal embedding order [cos, sin]
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    sample_size: int | None = None  # informative only

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "num_heads", "only_cross_attention"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"UNet config: {name} needs {n} entries, got {getattr(self, name)!r}")
        for t in self.down_block_types:
            if t not in UNET_DOWN_TYPES:
                raise ValueError(f"UNet config: down block type {t!r} is not supported")
        for t in self.up_block_types:
            if t not in UNET_UP_TYPES:
                raise ValueError(f"UNet config: up block type {t!r} is not supported")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"UNet config: {c} channels do not split into {self.norm_num_groups} groups")

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Build from a diffusers UNet2DConditionModel config, taking diffusers' defaults for absent keys."""
        _require(d, ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
                     "cross_attention_dim", "attention_head_dim"), "UNet")
        _check_fixed(d, _UNET_FIXED, "UNet")
        n = len(d["block_out_channels"])
        cross = d["cross_attention_dim"]
        if not isinstance(cross, int):
            cross_dims = tuple(cross)
            if len(set(cross_dims)) != 1:
                raise ValueError(f"UNet config: per-block cross_attention_dim {cross!r} is not supported")
            cross = cross_dims[0]
        layers = d.get("layers_per_block", 2)
        if not isinstance(layers, int):
            raise ValueError(f"UNet config: per-block layers_per_block {layers!r} is not supported")
        known = set(_UNET_FIXED) | _UNET_IGNORED | {f.name for f in dataclasses.fields(cls)} | {"attention_head_dim"}
        _log_ignored(d, known, "UNet")
        return cls(
            in_channels=d["in_channels"],
            out_channels=d["out_channels"],
            block_out_channels=tuple(d["block_out_channels"]),
            down_block_types=tuple(d["down_block_types"]),
            up_block_types=tuple(d["up_block_types"]),
            num_heads=_per_block(d["attention_head_dim"], n, "attention_head_dim", int),
            only_cross_attention=_per_block(d.get("only_cross_attention", False), n, "only_cross_attention", bool),
            cross_attention_dim=cross,
            layers_per_block=layers,
            use_linear_projection=bool(d.get("use_linear_projection", False)),
            upcast_attention=bool(d.get("upcast_attention") or False),
            num_class_embeds=d.get("num_class_embeds"),
            norm_num_groups=d.get("norm_num_groups", 32),
            norm_eps=float(d.get("norm_eps", 1e-5)),
            flip_sin_to_cos=bool(d.get("flip_sin_to_cos", True)),
            freq_shift=d.get("freq_shift", 0),
            downsample_padding=d.get("downsample_padding", 1),
            mid_block_scale_factor=float(d.get("mid_block_scale_factor", 1.0)),
            sample_size=d.get("sample_size"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> UNetConfig:
        return cls.from_dict(_read_json(path))

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' UNet2DConditionModel with the same architecture (no `_` keys)."""
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "attention_head_dim": list(self.num_heads),
            "only_cross_attention": list(self.only_cross_attention),
            "cross_attention_dim": self.cross_attention_dim,
            "layers_per_block": self.layers_per_block,
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
            "num_class_embeds": self.num_class_embeds,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "downsample_padding": self.downsample_padding,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "act_fn": "silu",
            "center_input_sample": False,
            "dual_cross_attention": False,
        }


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL hyper-parameters (the hub repos' vae/config.json): 4 levels for SD2 (factor 8), 3 for x4."""

    block_out_channels: tuple[int, ...]  # (128, 256, 512, 512); x4 (128, 256, 512)
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    layers_per_block: int = 2  # encoder resnets per level; the decoder has one more
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215  # latents given to the UNet are z * scaling_factor
    force_upcast: bool = True  # diffusers runs such VAEs in fp32; the manager may honour it
    sample_size: int | None = None  # informative only

    def __post_init__(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"VAE config: {c} channels do not split into {self.norm_num_groups} groups")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Build from a diffusers AutoencoderKL config; absent keys take diffusers' defaults."""
        _require(d, ("block_out_channels", "down_block_types", "up_block_types"), "VAE")
        _check_fixed(d, _VAE_FIXED, "VAE")
        n = len(d["block_out_channels"])
        if list(d["down_block_types"]) != ["DownEncoderBlock2D"] * n:
            raise ValueError(f"VAE config: down_block_types {d['down_block_types']!r} must be {n} DownEncoderBlock2D")
        if list(d["up_block_types"]) != ["UpDecoderBlock2D"] * n:
            raise ValueError(f"VAE config: up_block_types {d['up_block_types']!r} must be {n} UpDecoderBlock2D")
        known = set(_VAE_FIXED) | _VAE_IGNORED | {f.name for f in dataclasses.fields(cls)}
        known |= {"down_block_types", "up_block_types"}
        _log_ignored(d, known, "VAE")
        scaling = d.get("scaling_factor")
        return cls(
            block_out_channels=tuple(d["block_out_channels"]),
            in_channels=d.get("in_channels", 3),
            out_channels=d.get("out_channels", 3),
            latent_channels=d.get("latent_channels", 4),
            layers_per_block=d.get("layers_per_block", 1),
            norm_num_groups=d.get("norm_num_groups", 32),
            scaling_factor=0.18215 if scaling is None else float(scaling),
            force_upcast=bool(d.get("force_upcast", True)),
            sample_size=d.get("sample_size"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> VAEConfig:
        return cls.from_dict(_read_json(path))

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' AutoencoderKL with the same architecture (no `_` keys)."""
        n = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size if self.sample_size is not None else 32,
            "scaling_factor": self.scaling_factor,
            "force_upcast": self.force_upcast,
        }
