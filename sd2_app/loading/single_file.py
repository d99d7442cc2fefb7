"""A single-file SD2 checkpoint (one `.safetensors`, as A1111 and ComfyUI load them) -> a folder in the Hub layout
that the regular loader (`loading.parts`) reads, strict keys and all.

The file holds the three networks' weights only (their names: `ldm_names`). Everything else (the configs, the
tokenizer, the scheduler) comes from the built-in checkpoint of the same kind, `FILE_TEMPLATES`: an inpainting UNet
(9 input channels) takes SD 2 inpainting's, a v-prediction model SD 2.1 768's, any other SD 2.1 base's. Whether a
text-to-image file predicts v is read from the `.yaml` beside it (A1111's convention: the LDM config, whose
`parameterization: "v"` says so) or else found by A1111's test (`predicts_v`).

A file is converted once, into `<cache>/single-file/<stem>-<digest>` (the weights in the file's own dtype); the
digest covers the file's path, size and modification time and the yaml's text, so an edited file or yaml is
converted again and the older folder of that stem is removed.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sd2_app.checkpoints.catalog import FILE_TEMPLATES
from sd2_app.errors import LoadError
from sd2_app.loading import ldm_names
from sd2_app.loading.checkpoint import params_on_meta
from sd2_app.loading.hub import CONFIG_PATTERNS, matches_any
from sd2_app.loading.ldm_names import sidecar, sidecar_prediction

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the converted folder's content changes, so older conversions are redone
_DONE = ".converted"  # written last: a folder without it is never used
ConfigFolder = Callable[[str], Path]  # template key -> a folder with its configs (hub.resolve_configs)


def in_channels(path: Path) -> int:
    """The UNet's input channels (4 text-to-image, 9 inpainting) from the file's header; LoadError for a file
    without a UNet."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if ldm_names.IN_CHANNELS_KEY not in f.keys():
                raise LoadError(str(path), ldm_names.IN_CHANNELS_KEY, "not found: no LDM UNet in this file")
            return int(f.get_slice(ldm_names.IN_CHANNELS_KEY).get_shape()[1])
    except SafetensorError as e:
        raise LoadError(str(path), None, f"corrupt or truncated safetensors file ({e})") from e


def predicts_v(unet: torch.nn.Module, context_width: int) -> bool:
    """A1111's test for an SD2 UNet trained on v (modules/sd_models_config.py,
    is_using_v_parameterization_for_sd2): at t=999 on a constant input, a v model's output lies far below
    its input (mean difference < -1), an epsilon model's does not."""
    x = torch.full((1, 4, 8, 8), 0.5)
    context = torch.full((1, 2, context_width), 0.5)
    with torch.inference_mode():
        out = unet(x, torch.tensor([999.0]), context)
    return float((out - x).mean()) < -1


def _converted(tensors: Callable[[str], torch.Tensor], expected: dict[str, torch.Size | None],
               name: Callable[[str], ldm_names.LdmName], where: str) -> dict[str, torch.Tensor]:
    """Our key -> its tensor of the file, for every key in `expected` (shapes; None: not checked here)."""
    out: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        ldm_key, third = name(key)
        tensor = tensors(ldm_key)
        if third is not None:
            tensor = tensor.chunk(3, dim=0)[third]
        if shape is not None and tensor.shape != shape and tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor[:, :, 0, 0]  # ldm's 1x1-convolution attention, a Linear here
        if shape is not None and tensor.shape != shape:
            raise LoadError(where, ldm_key, f"shape {tuple(tensor.shape)}, expected {tuple(shape)} for an SD 2.x "
                                            "checkpoint of this kind")
        out[key] = tensor.contiguous()
    return out


def _meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    with params_on_meta():
        module = build()
    return {key: value.shape for key, value in module.state_dict().items()}


def convert_networks(path: Path, configs: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet" | "vae" | "text_encoder": state dict in the Hub layout} from the file at `path`, for the networks
    `configs` (a folder with their config.json files) describes. LoadError names the first key the file lacks."""
    from sd2_app.loading.parts import read_json
    from sd2_app.nn.config import UNetConfig, VAEConfig
    from sd2_app.nn.unet import UNet
    from sd2_app.nn.vae import AutoencoderKL

    unet_config, vae_config = read_json(configs, "unet/config.json"), read_json(configs, "vae/config.json")
    layers = int(read_json(configs, "text_encoder/config.json")["num_hidden_layers"])
    where = path.name
    try:
        with safe_open(str(path), framework="pt") as f:
            present, used = set(f.keys()), set()

            def tensor(key: str) -> torch.Tensor:
                if key not in present:
                    raise LoadError(where, key, "not found (is this an SD 2.x checkpoint?)")
                used.add(key)
                return f.get_tensor(key)

            prefixes = ldm_names.unet_block_prefixes(unet_config)
            levels = len(vae_config["block_out_channels"])
            networks = {
                "unet": _converted(tensor, _meta_shapes(lambda: UNet(UNetConfig.from_dict(unet_config))),
                                   lambda k: ldm_names.unet_name(k, prefixes), where),
                "vae": _converted(tensor, _meta_shapes(lambda: AutoencoderKL(VAEConfig.from_dict(vae_config))),
                                  lambda k: ldm_names.vae_name(k, levels), where),
                "text_encoder": _converted(tensor, dict.fromkeys(ldm_names.text_keys(layers)), ldm_names.text_name,
                                           where),
            }
            _check_nothing_left(present, used, where)
            return networks
    except SafetensorError as e:
        raise LoadError(where, None, f"corrupt or truncated safetensors file ({e})") from e


def _check_nothing_left(present: set[str], used: set[str], where: str) -> None:
    """Every UNet and VAE tensor of the file has a place in ours: one more (an unCLIP UNet's class embedding, a
    ControlNet merged in) would be silently dropped otherwise, and the images wrong. The text tower's extras (its
    last layer, projection, logit scale) are what SD2 does not use; ldm's VAE loss weights are training only."""
    left = sorted(key for key in present - used if key.startswith((ldm_names.UNET_PREFIX, ldm_names.VAE_PREFIX))
                  and not key.startswith(ldm_names.VAE_PREFIX + "loss."))
    if left:
        raise LoadError(where, left[0], f"not part of an SD 2.x UNet or VAE ({len(left)} such tensors)")


def _detect_prediction(unet_state: dict[str, torch.Tensor], configs: Path) -> str:
    from sd2_app.loading.parts import read_json
    from sd2_app.nn.config import UNetConfig
    from sd2_app.nn.unet import UNet

    config = read_json(configs, "unet/config.json")
    with params_on_meta():
        unet = UNet(UNetConfig.from_dict(config))
    unet.load_state_dict({k: v.float() for k, v in unet_state.items()}, strict=True, assign=True)
    unet.eval()
    return "v_prediction" if predicts_v(unet, int(config["cross_attention_dim"])) else "epsilon"


def _digest(path: Path) -> str:
    info = path.stat()
    try:
        yaml = sidecar(path).read_bytes()
    except OSError:
        yaml = b""
    key = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{FORMAT}|".encode() + yaml
    return hashlib.sha256(key).hexdigest()[:16]


WEIGHT_FILES = {"unet": "unet/diffusion_pytorch_model.safetensors",
                "vae": "vae/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}


def _write(folder: Path, configs: Path, networks: dict[str, dict[str, torch.Tensor]], source: Path) -> None:
    for config_file in sorted(configs.rglob("*")):
        name = config_file.relative_to(configs).as_posix()
        if config_file.is_file() and matches_any(name, CONFIG_PATTERNS):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config_file, folder / name)
    for component, file in WEIGHT_FILES.items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        save_file(networks[component], str(folder / file), metadata={"source": source.name})
    (folder / _DONE).write_text(f"{source}\n", encoding="utf-8")


def prepare(path: Path, configs_of: ConfigFolder, cache_dir: Path,
            report: Callable[[str], Any] = lambda message: None) -> Path:
    """The Hub-layout folder of the checkpoint file `path`, converted now unless an earlier conversion of the
    same file is in `cache_dir`. `configs_of(template key)` gives a template's configs folder."""
    if not path.is_file():
        raise LoadError(str(path), None, "not found")
    root = cache_dir / "single-file"
    folder = root / f"{path.stem}-{_digest(path)}"
    if (folder / _DONE).is_file():
        return folder
    inpaint = in_channels(path) == ldm_names.INPAINT_CHANNELS
    prediction = "epsilon" if inpaint else sidecar_prediction(path)
    first = configs_of(FILE_TEMPLATES["inpaint" if inpaint else prediction or "epsilon"])
    report(f"{path.name}: converting to the diffusers layout (once)")
    networks = convert_networks(path, first)
    if prediction is None:
        prediction = _detect_prediction(networks["unet"], first)
        logger.info("%s: A1111's test says it predicts %s", path.name, prediction)
    configs = first if inpaint or prediction == "epsilon" else configs_of(FILE_TEMPLATES[prediction])
    staging = root / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        _write(staging, configs, networks, path)
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / _DONE).is_file():  # else another process converted the same file meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for older in root.glob(f"{glob.escape(path.stem)}-*"):  # conversions of an earlier version of the file
        if older != folder and re.fullmatch(re.escape(path.stem) + r"-[0-9a-f]{16}", older.name):
            shutil.rmtree(older, ignore_errors=True)
    logger.info("%s: converted into %s (%s)", path.name, folder, prediction)
    return folder
