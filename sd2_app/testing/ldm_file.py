"""A single-file (LDM / A1111) checkpoint written from a Hub-layout folder: what `loading.single_file` reads,
made from the tiny repos so tests have one. The inverse of `loading.ldm_names`, checked against diffusers'
own single-file loader in tests/loading/test_single_file.py.

Like Stability's files it also holds what a converter must skip: the text tower's last layer (SD2 conditions
on the penultimate one), its projection and logit scale, the training schedule's buffers and an EMA decay.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sd2_app.loading import ldm_names
from sd2_app.loading.checkpoint import LEGACY_VAE_RENAMES, rename_keys
from sd2_app.loading.parts import read_json


def ldm_state(folder: Path, *, extra_text_layer: bool = True, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The LDM state dict of the Hub-layout `folder`'s UNet, VAE and text encoder: from their full-precision files,
    or with `variant` "fp16" from the fp16 ones (which the app loads from a repo that has both)."""

    def _read(folder: Path, file: str) -> dict[str, torch.Tensor]:
        if variant is not None:
            file = file.replace(".safetensors", f".{variant}.safetensors")
        return load_file(str(folder / file))

    unet_config, vae_config = read_json(folder, "unet/config.json"), read_json(folder, "vae/config.json")
    prefixes = ldm_names.unet_block_prefixes(unet_config)
    levels = len(vae_config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in _read(folder, "unet/diffusion_pytorch_model.safetensors").items():
        out[ldm_names.unet_name(key, prefixes)[0]] = value
    vae = rename_keys(_read(folder, "vae/diffusion_pytorch_model.safetensors"), LEGACY_VAE_RENAMES)
    for key, value in vae.items():
        name = ldm_names.vae_name(key, levels)[0]
        out[name] = value[:, :, None, None] if ".attn_1." in name and value.dim() == 2 else value  # 1x1 convs
    text = _read(folder, "text_encoder/model.safetensors")
    thirds: dict[str, list[torch.Tensor | None]] = {}
    for key, value in text.items():
        if key.endswith("position_ids"):
            continue
        # the Hub's files name the tower "text_model."; transformers 5 saves it without (bench/write_checkpoints.py)
        name, third = ldm_names.text_name(key if key.startswith("text_model.") else f"text_model.{key}")
        if third is None:
            out[name] = value
        else:
            thirds.setdefault(name, [None, None, None])[third] = value
    out.update({name: torch.cat(parts) for name, parts in thirds.items()})  # type: ignore[arg-type]
    width = out[ldm_names.TEXT_PREFIX + "ln_final.weight"].shape[0]
    layers = int(read_json(folder, "text_encoder/config.json")["num_hidden_layers"])
    if extra_text_layer:  # the tower's last layer, which SD2 does not use: a copy of the one before
        last = f"{ldm_names.TEXT_PREFIX}transformer.resblocks.{layers - 1}."
        out.update({k.replace(last, last.replace(f".{layers - 1}.", f".{layers}.")): v.clone()
                    for k, v in list(out.items()) if k.startswith(last)})
    out[ldm_names.TEXT_PREFIX + "text_projection"] = torch.eye(width)
    out[ldm_names.TEXT_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    out["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    out["model_ema.decay"] = torch.tensor(0.9999)
    return out


def write_ldm_file(folder: Path, path: Path, *, dtype: torch.dtype | None = None, extra_text_layer: bool = True,
                   variant: str | None = None) -> Path:
    """Write `folder`'s networks (`variant`: as `ldm_state`) as one LDM-layout safetensors file at `path`, floats
    cast to `dtype` if given."""
    state = ldm_state(folder, extra_text_layer=extra_text_layer, variant=variant)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
