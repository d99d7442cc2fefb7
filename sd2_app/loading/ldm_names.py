"""Where each of our parameters sits in a single-file (original LDM / A1111) SD2 checkpoint.

A single file holds the three networks under their original repositories' names: the UNet under
`model.diffusion_model.` (Stability's `openaimodel.UNetModel`), the VAE under `first_stage_model.`
(`autoencoder.AutoencoderKL`) and the text tower under `cond_stage_model.model.` (OpenCLIP ViT-H/14, all 24
layers; SD2 conditions on the penultimate one, so the 23-layer CLIPTextModel skips the last). The layouts are
those of the Stability-AI/stablediffusion repository's ldm/modules; diffusers' scripts
`convert_original_stable_diffusion_to_diffusers.py` / `loaders/single_file_utils.py` read the same files.

Each function maps one of OUR keys (the diffusers layout, `sd2_app/nn`, transformers' CLIPTextModel as the Hub
files name it) to its LDM key, so the set of keys to find is the model's own: nothing is guessed from the file.
No torch here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
IN_CHANNELS_KEY = UNET_PREFIX + "input_blocks.0.0.weight"  # its shape[1]: 4 text-to-image, 9 inpainting
INPAINT_CHANNELS = 9

# A UNet ResnetBlock2D's parts in openaimodel.ResBlock (in_layers = norm, SiLU, conv; out_layers = norm, SiLU,
# dropout, conv).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# The VAE's mid-block attention in ldm's AttnBlock (1x1 convolutions where ours are Linear).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {"conv_norm_out": "norm_out"}
# A CLIP encoder layer's parts in OpenCLIP's ResidualAttentionBlock; q, k and v are one in_proj there.
_TEXT_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_TEXT_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
QKV = ("q_proj", "k_proj", "v_proj")  # the thirds of in_proj_weight / in_proj_bias, in this order

_PARAMETERIZATION = re.compile(r"^\s*parameterization\s*:\s*[\"']?(\w+)", re.MULTILINE)
LdmName = tuple[str, int | None]  # (the file's key, which third of it for q/k/v, else None)


def _split(key: str) -> tuple[str, str]:
    """("a.b", "weight") from "a.b.weight"."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _renamed(module: str, table: Mapping[str, str]) -> str | None:
    """`table`'s name for `module` or for the part of it its longest listed prefix names; None if none."""
    for ours in sorted(table, key=len, reverse=True):
        if module == ours or module.startswith(ours + "."):
            return table[ours] + module[len(ours):]
    return None


def unet_block_prefixes(config: Mapping[str, Any]) -> dict[str, str]:
    """{our block prefix: LDM block prefix} for a UNet config (diffusers' config.json)."""
    per_block = int(config["layers_per_block"])
    down: Sequence[str] = config["down_block_types"]
    up: Sequence[str] = config["up_block_types"]
    prefixes = {"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                "mid_block.resnets.1": "middle_block.2"}
    for i, kind in enumerate(down):
        for j in range(per_block):
            n = 1 + i * (per_block + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            if "CrossAttn" in kind:
                prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        if i < len(down) - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per_block + 1)}.0.op"
    for i, kind in enumerate(up):
        attention = "CrossAttn" in kind
        for j in range(per_block + 1):
            n = i * (per_block + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
            if attention:
                prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
        if i < len(up) - 1:
            last = i * (per_block + 1) + per_block
            prefixes[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if attention else 1}.conv"
    return prefixes


def unet_name(key: str, prefixes: Mapping[str, str]) -> LdmName:
    """The LDM key of one of our UNet keys (`prefixes`: `unet_block_prefixes`); KeyError for an unknown key."""
    module, leaf = _split(key)
    top = _renamed(module, _UNET_TOP)
    if top is not None:
        return f"{UNET_PREFIX}{top}.{leaf}", None
    block = next((p for p in sorted(prefixes, key=len, reverse=True) if module.startswith(p + ".")
                  or module == p), None)
    if block is None:
        raise KeyError(key)
    rest = module[len(block):]
    if ".resnets." in block:
        inner = _renamed(rest.lstrip("."), _UNET_RESNET)
        rest = "." + inner if inner is not None else rest
    return f"{UNET_PREFIX}{prefixes[block]}{rest}.{leaf}", None


def _vae_module(module: str, levels: int) -> str:
    """One of our VAE module names in ldm's encoder/decoder layout (`levels`: len(block_out_channels))."""
    module = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.([01])",
                    lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}", module)
    attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", module)
    if attention:
        return f"{attention.group(1)}.mid.attn_1.{_renamed(attention.group(2), _VAE_ATTENTION) or attention.group(2)}"
    module = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", module)
    module = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", module)
    # ldm's decoder counts its levels from the smallest resolution up; diffusers' up_blocks go the other way.
    module = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.",
                    lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", module)
    module = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                    lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", module)
    module = re.sub(r"\.conv_shortcut$", ".nin_shortcut", module)
    return re.sub(r"^(encoder|decoder)\.conv_norm_out$", r"\1.norm_out", module)


def vae_name(key: str, levels: int) -> LdmName:
    """The LDM key of one of our VAE keys (`levels`: the config's len(block_out_channels))."""
    module, leaf = _split(key)
    return f"{VAE_PREFIX}{_vae_module(module, levels)}.{leaf}", None


def text_name(key: str) -> LdmName:
    """The LDM key of one of CLIPTextModel's keys as the Hub files name them ("text_model.encoder.layers.0...");
    q/k/v projections name a third of the layer's in_proj."""
    if key in _TEXT_TOP:
        return f"{TEXT_PREFIX}{_TEXT_TOP[key]}", None
    layer = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if layer is None:
        raise KeyError(key)
    index, module, leaf = layer.groups()
    base = f"{TEXT_PREFIX}transformer.resblocks.{index}."
    projection = re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)", module)
    if projection:
        return f"{base}attn.in_proj_{leaf}", QKV.index(projection.group(1))
    renamed = _renamed(module, _TEXT_LAYER)
    if renamed is None:
        raise KeyError(key)
    return f"{base}{renamed}.{leaf}", None


def text_keys(layers: int) -> list[str]:
    """The keys of a CLIPTextModel with `layers` encoder layers, as the Hub files name them (no buffers)."""
    per_layer = [f"{part}.{leaf}" for part in ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
                                               "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
                 for leaf in ("weight", "bias")]
    return [*_TEXT_TOP, *(f"text_model.encoder.layers.{i}.{p}" for i in range(layers) for p in per_layer)]


def sidecar(path: Path) -> Path:
    """The LDM config A1111 reads beside a checkpoint file: `<stem>.yaml`."""
    return path.with_suffix(".yaml")


def sidecar_prediction(path: Path) -> str | None:
    """"v_prediction" or "epsilon", as the yaml beside the checkpoint file `path` says (`parameterization: "v"`;
    LDM's default is eps); None when there is no yaml."""
    try:
        text = sidecar(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _PARAMETERIZATION.search(text)
    return "v_prediction" if found and found.group(1) == "v" else "epsilon"
