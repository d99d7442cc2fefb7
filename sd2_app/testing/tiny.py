"""Tiny random-weight SD2 repos in the exact Hub layout, written in seconds (tests and the app's offline demo).

Each kind mirrors one real repo: model_index.json, every subfolder with its config, both the `fp16` variant and
the full-precision safetensors, the real scheduler configs (scheduler/scheduler_config.json of each repo) and
the real UNet/VAE block layout at tiny widths (`sd2_app.testing.configs`). They load through the same code path as the real repos.

    python -m sd2_app.testing.tiny OUTDIR [--kind sd2-base --kind x4-upscaler ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sd2_app.checkpoints.catalog import CheckpointSpec, tiny_registry
from sd2_app.testing.configs import tiny_unet_config, tiny_vae_config
from sd2_app.testing.tiny_transformers import (
    fill_deterministic,
    save_weights,
    write_depth_estimator,
    write_text_encoder,
    write_tokenizer,
)

logger = logging.getLogger(__name__)

KINDS = ("sd2-base", "sd2", "sd21", "sd2-inpainting", "sd2-depth", "x4-upscaler")
LEGACY_VAE_KIND = "sd2-base"  # written with the pre-0.14 VAE attention names, to exercise that mapping
_DONE_MARKER = ".tiny-complete"  # written last, so a half-written folder is never reused
TINY_FORMAT = 2  # bump when the written files change, so ensure_tiny_repos rewrites old caches

# The real scheduler configs (scheduler/scheduler_config.json of each hub repo), byte-for-byte values.
_SD2_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
_X4_BETAS = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear"}
_COMMON = {"clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
           "steps_offset": 1, "trained_betas": None}
_PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", **_SD2_BETAS, **_COMMON}
_DDIM_V = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", **_SD2_BETAS, **_COMMON,
           "prediction_type": "v_prediction"}
SCHEDULERS: dict[str, dict[str, Any]] = {
    "sd2-base": _PNDM,
    "sd2": _DDIM_V,
    "sd21": {**_DDIM_V, "_diffusers_version": "0.10.0.dev0"},
    "sd2-inpainting": _PNDM,
    "sd2-depth": {**_PNDM, "_diffusers_version": "0.10.0.dev0", "prediction_type": "epsilon"},
    "x4-upscaler": {**_DDIM_V, **_X4_BETAS, "_diffusers_version": "0.9.0.dev0"},
}
X4_LOW_RES_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.9.0.dev0", **_X4_BETAS,
                        "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
                        "variance_type": "fixed_small"}

_TEXT = {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
_SD = {"scheduler": ["diffusers", "PNDMScheduler"], **_TEXT, "unet": ["diffusers", "UNet2DConditionModel"],
       "vae": ["diffusers", "AutoencoderKL"]}
_NO_SAFETY = {"feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False}


def model_index(kind: str) -> dict[str, Any]:
    """model_index.json of the real repo (as on the Hub)."""
    if kind in ("sd2-base", "sd2", "sd21"):
        scheduler = "PNDMScheduler" if kind == "sd2-base" else "DDIMScheduler"
        return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0", **_SD,
                "scheduler": ["diffusers", scheduler], **_NO_SAFETY}
    if kind == "sd2-inpainting":
        return {"_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.8.0", **_SD, **_NO_SAFETY}
    if kind == "sd2-depth":
        return {"_class_name": "StableDiffusionDepth2ImgPipeline", "_diffusers_version": "0.10.0.dev0",
                "depth_estimator": ["transformers", "DPTForDepthEstimation"],
                "feature_extractor": ["transformers", "DPTImageProcessor"], **_SD}
    if kind == "x4-upscaler":
        return {"_class_name": "StableDiffusionUpscalePipeline", "_diffusers_version": "0.9.0.dev0",
                "low_res_scheduler": ["diffusers", "DDPMScheduler"], "max_noise_level": 350,
                **_SD, "scheduler": ["diffusers", "DDIMScheduler"]}
    raise ValueError(f"unknown tiny kind {kind!r}; known: {', '.join(KINDS)}")


def _seed(kind: str, component: str) -> int:
    """A fixed seed per (kind, component), stable across runs and Python versions."""
    return zlib.crc32(f"{kind}/{component}".encode())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _to_legacy_vae_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the VAE attention keys back to diffusers 0.8-0.13 names (to_q -> query, ...)."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    pattern = re.compile(r"(\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.")
    return {pattern.sub(lambda m: f"{m.group(1)}.{old[m.group(2)]}.", k): v for k, v in state.items()}


def _write_networks(kind: str, folder: Path) -> None:
    """unet/ and vae/: config.json as the Hub writes it, weights from our own networks."""
    from sd2_app.nn.config import UNetConfig, VAEConfig
    from sd2_app.nn.unet import UNet
    from sd2_app.nn.vae import AutoencoderKL

    unet_dict = tiny_unet_config(kind)
    vae_dict = tiny_vae_config("x4-upscaler" if kind == "x4-upscaler" else "sd2")
    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
        unet = UNet(UNetConfig.from_dict(unet_dict))
        vae = AutoencoderKL(VAEConfig.from_dict(vae_dict))
    _write_json(folder / "unet" / "config.json", unet_dict)
    save_weights(fill_deterministic(unet, _seed(kind, "unet")), folder / "unet", "diffusion_pytorch_model")
    _write_json(folder / "vae" / "config.json", vae_dict)
    vae_state = fill_deterministic(vae, _seed(kind, "vae"))
    if kind == LEGACY_VAE_KIND:
        vae_state = _to_legacy_vae_names(vae_state)
    save_weights(vae_state, folder / "vae", "diffusion_pytorch_model")


def _marker(kind: str) -> str:
    return f"{kind} format {TINY_FORMAT}\n"


def write_tiny_repo(kind: str, folder: str | Path) -> Path:
    """Write one tiny repo of `kind` into `folder` (created; existing files are overwritten) and return it."""
    index = model_index(kind)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "model_index.json", index)
    _write_networks(kind, folder)
    write_text_encoder(folder / "text_encoder", _seed(kind, "text_encoder"))
    write_tokenizer(folder / "tokenizer")
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULERS[kind])
    if kind == "x4-upscaler":
        _write_json(folder / "low_res_scheduler" / "scheduler_config.json", X4_LOW_RES_SCHEDULER)
    if kind == "sd2-depth":
        write_depth_estimator(folder / "depth_estimator", folder / "feature_extractor", _seed(kind, "depth"))
    (folder / _DONE_MARKER).write_text(_marker(kind))
    logger.info("wrote tiny %s repo to %s", kind, folder)
    return folder


def ensure_tiny_repos(cache_dir: str | Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """Tiny repos under `cache_dir/<kind>`, written on first use and reused afterwards."""
    repos: dict[str, Path] = {}
    for kind in kinds:
        folder = Path(cache_dir) / kind
        marker = folder / _DONE_MARKER
        if not (marker.is_file() and marker.read_text() == _marker(kind)):
            write_tiny_repo(kind, folder)
        repos[kind] = folder
    return repos


def tiny_checkpoints(registry: Mapping[str, CheckpointSpec], cache_dir: Path) -> dict[str, CheckpointSpec]:
    """`registry` with every checkpoint pointed at its tiny repo under `cache_dir/tiny` (written on first use):
    what `tiny` means, for the ModelManager and for app.py's Serve front end (which reads their tokenizers)."""
    return tiny_registry(ensure_tiny_repos(cache_dir / "tiny"), registry)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write tiny random-weight SD2 repos in the Hub layout.")
    parser.add_argument("outdir", type=Path, help="one subfolder per kind is written here")
    parser.add_argument("--kind", action="append", choices=KINDS, help="repeatable; default: all kinds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for kind in args.kind or KINDS:
        write_tiny_repo(kind, args.outdir / kind)


if __name__ == "__main__":
    main()
