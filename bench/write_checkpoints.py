"""Write full-size random-weight SD2 repos in the Hub layout, once, for the benchmark (no Hub access).

Speed does not depend on the weights' values, only on shapes and dtypes, so random fp16 weights with sane
scales (activations stay finite, so no NaN fallback path distorts timings) measure what the real ones would.
Real UNet/VAE configs come from sd2_app.testing.configs, the text encoder is the full 23-layer 1024-wide
CLIP tower (text_encoder/config.json of the SD2 repos) and the tokenizer is the tiny one (tokenizing is not
what we time).

    python -m bench.write_checkpoints DIR          # DIR/<kind>/ for each kind below, ~9 GB

Only the fp16 variant files are written (what both loaders prefer). Parts that are the same across repos
(text encoder, SD VAE) are hard links to one file, as in a Hub cache; the sd2 (768) UNet gets its own
weights so that swapping sd2-base <-> sd2 really moves a different UNet, and so does sd21 (SD 2.1-768: sd2's
architecture with upcast_attention in its config).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd2_app.testing.configs import unet_config, vae_config
from sd2_app.testing.tiny import SCHEDULERS, X4_LOW_RES_SCHEDULER, ensure_tiny_repos, model_index
from sd2_app.testing.tiny_transformers import write_depth_estimator, write_tokenizer

logger = logging.getLogger("bench.write_checkpoints")

KINDS = ("sd2-base", "sd2", "sd21", "sd2-inpainting", "sd2-depth", "x4-upscaler")
DONE = ".bench-complete"
TEXT_ENCODER_CONFIG = {  # text_encoder/config.json of the SD2 repos
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 1024,
    "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 512,
    "dropout": 0.0, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "float32",
}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in module.state_dict().items()}


def random_state(shapes: dict[str, tuple[torch.Size, torch.dtype]], seed: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """fp16 weights ~ N(0, 1/fan_in), norm gains ~1, small biases; integer buffers are zeros/arange."""
    generator = torch.Generator(device=device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in sorted(shapes.items()):
        if not dtype.is_floating_point:
            numel = math.prod(shape)
            state[name] = torch.arange(numel, dtype=dtype).reshape(shape)  # e.g. CLIP position_ids
            continue
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if len(shape) >= 2:
            value = noise / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.1 * noise
        state[name] = value.half().cpu().contiguous()
    return state


def _meta_shapes(kind: str) -> dict[str, dict[str, tuple[torch.Size, torch.dtype]]]:
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd2_app.nn.config import UNetConfig, VAEConfig
    from sd2_app.nn.unet import UNet
    from sd2_app.nn.vae import AutoencoderKL

    vae_kind = "x4-upscaler" if kind == "x4-upscaler" else "sd2"
    unet_kind = "sd2" if kind == "sd2" else kind
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_dict(unet_config(unet_kind)))
        vae = AutoencoderKL(VAEConfig.from_dict(vae_config(vae_kind)))
        text = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    return {"unet": _shapes(unet), "vae": _shapes(vae), "text_encoder": _shapes(text)}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _link_or_write(target: Path, shared: dict[str, Path], share_key: str, make: Callable[[], dict[str, torch.Tensor]]) -> None:
    """Hard-link `target` to an identical file written earlier, or write it and remember it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if share_key in shared:
        os.link(shared[share_key], target)
        return
    start = time.perf_counter()
    save_file(make(), str(target), metadata={"format": "pt"})
    logger.info("wrote %s (%.2f GB) in %.1f s", target, target.stat().st_size / 1e9, time.perf_counter() - start)
    shared[share_key] = target


def write_repo(kind: str, folder: Path, shared: dict[str, Path], device: torch.device) -> Path:
    """One full-size repo of `kind` (a key of sd2_app.testing.tiny.SCHEDULERS) under `folder`."""
    shapes = _meta_shapes(kind)
    vae_kind = "x4-upscaler" if kind == "x4-upscaler" else "sd2"
    unet_kind = "sd2" if kind == "sd2" else kind
    _write_json(folder / "model_index.json", model_index(kind))
    _write_json(folder / "unet" / "config.json", unet_config(unet_kind))
    seed = sum(map(ord, kind))
    _link_or_write(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors", shared, f"unet/{kind}",
                   lambda: random_state(shapes["unet"], seed, device))
    _write_json(folder / "vae" / "config.json", vae_config(vae_kind))
    _link_or_write(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", shared, f"vae/{vae_kind}",
                   lambda: random_state(shapes["vae"], seed + 1, device))
    _write_json(folder / "text_encoder" / "config.json", TEXT_ENCODER_CONFIG)
    _link_or_write(folder / "text_encoder" / "model.fp16.safetensors", shared, "text_encoder",
                   lambda: random_state(shapes["text_encoder"], 7, device))
    write_tokenizer(folder / "tokenizer")
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULERS[kind])
    if kind == "x4-upscaler":
        _write_json(folder / "low_res_scheduler" / "scheduler_config.json", X4_LOW_RES_SCHEDULER)
    if kind == "sd2-depth":  # tiny DPT: the bench passes depth maps, so the estimator is never timed
        write_depth_estimator(folder / "depth_estimator", folder / "feature_extractor", seed)
    (folder / DONE).write_text("1\n")
    return folder


def ensure_checkpoints(root: Path, kinds: tuple[str, ...] = KINDS,
                       device: torch.device | None = None) -> dict[str, Path]:
    """Full-size repos under root/<kind>, written when missing (a marker file says a repo is complete)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shared: dict[str, Path] = {}
    repos: dict[str, Path] = {}
    for kind in kinds:
        folder = root / kind
        if not (folder / DONE).is_file():
            write_repo(kind, folder, shared, device)
        repos[kind] = folder
    return repos


def benchmark_repos(ckpt: Path, tiny: bool, kinds: tuple[str, ...],
                    device: torch.device | None = None) -> dict[str, Path]:
    """The benchmarks' checkpoint folders under `ckpt` (their --ckpt): the tiny random repos under ckpt/tiny, or
    the full-size ones under ckpt/full, written when missing."""
    if tiny:
        return ensure_tiny_repos(ckpt / "tiny", kinds)
    return ensure_checkpoints(ckpt / "full", kinds, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--kind", action="append", choices=KINDS, help="repeatable; default: all")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_checkpoints(args.root, tuple(args.kind or KINDS))


if __name__ == "__main__":
    main()
