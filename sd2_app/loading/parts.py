"""One loader per component of a Hub-layout folder (see `hub.resolve_repo`): UNet, VAE, text encoder, ...

Our networks go through `checkpoint.build_and_load` (meta build, strict assign). transformers-owned models
(CLIP text encoder, DPT) go through their own `from_pretrained`, which keeps their key conversions, but we
still refuse pickles, check the file first and fail on any missing or mismatched key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from sd2_app.errors import LoadError
from sd2_app.loading.checkpoint import LEGACY_VAE_RENAMES, build_and_load, check_header
from sd2_app.loading.hub import choose_weights, repo_label
from sd2_app.loading.staged_read import module_to_device

if TYPE_CHECKING:
    from sd2_app.samplers.schedules import SchedulerConfig
    from transformers import CLIPTextModel, DPTForDepthEstimation, DPTImageProcessor, PreTrainedModel

    from sd2_app.nn.unet import UNet
    from sd2_app.nn.vae import AutoencoderKL

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")
ModelT = TypeVar("ModelT", bound="PreTrainedModel")

X4_SCALING_FACTOR = 0.08333  # older x4 vae/config.json snapshots lack it; diffusers' upscale pipeline forces it too
# Keys that old transformers saved but current CLIPTextModel does not hold (non-persistent buffers).
IGNORED_TEXT_ENCODER_KEYS = frozenset({"text_model.embeddings.position_ids"})


def read_json(folder: str | Path, file: str) -> dict[str, Any]:
    """A JSON file of the folder, with LoadError naming repo and file when it is absent or malformed."""
    path = Path(folder) / file
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LoadError(repo_label(folder), file, "not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(repo_label(folder), file, f"not valid JSON ({e})") from e


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """model_index.json: the pipeline class, its components and extras such as the x4 `max_noise_level`."""
    return read_json(folder, "model_index.json")


def _weights(folder: Path, component: str) -> tuple[Path, str]:
    """(absolute path, repo-relative name) of the weight file to read: fp16 variant first."""
    sub = folder / component
    listing = [f"{component}/{p.name}" for p in sub.iterdir()] if sub.is_dir() else []
    name = choose_weights(listing, component, repo_label(folder))
    return folder / name, name


def _config(folder: Path, component: str, parse: Callable[[dict[str, Any]], ConfigT]) -> ConfigT:
    """Parse `<component>/config.json` with `parse`; its ValueError becomes a LoadError naming the file."""
    file = f"{component}/config.json"
    try:
        return parse(read_json(folder, file))
    except (ValueError, KeyError, TypeError) as e:
        raise LoadError(repo_label(folder), file, f"unsupported config: {e}") from e


def load_unet(folder: str | Path, device: torch.device | str, dtype: torch.dtype) -> UNet:
    """The UNet of `folder`, strictly loaded on `device` in `dtype`."""
    from sd2_app.nn.config import UNetConfig
    from sd2_app.nn.unet import UNet

    folder = Path(folder)
    config = _config(folder, "unet", UNetConfig.from_dict)
    path, file = _weights(folder, "unet")
    unet = build_and_load(lambda: UNet(config), path, device, dtype, repo=repo_label(folder), file=file)
    logger.info("loaded %s (%s, %s)", file, device, dtype)
    return unet


def load_vae(
    folder: str | Path, device: torch.device | str, dtype: torch.dtype, subfolder: str = "vae"
) -> AutoencoderKL:
    """The VAE of `folder`; accepts the pre-0.14 attention key names; fixes the x4 scaling factor."""
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL

    folder = Path(folder)
    config = _config(folder, subfolder, VAEConfig.from_dict)
    pipeline = read_model_index(folder).get("_class_name") if (folder / "model_index.json").is_file() else None
    if pipeline == "StableDiffusionUpscalePipeline" and config.scaling_factor != X4_SCALING_FACTOR:
        logger.info("x4 VAE: scaling_factor %s -> %s", config.scaling_factor, X4_SCALING_FACTOR)
        config = dataclasses.replace(config, scaling_factor=X4_SCALING_FACTOR)
    path, file = _weights(folder, subfolder)
    return build_and_load(
        lambda: AutoencoderKL(config),
        path,
        device,
        dtype,
        repo=repo_label(folder),
        file=file,
        renames=LEGACY_VAE_RENAMES,
    )


def _from_pretrained(cls: type[ModelT], folder: Path, component: str, device: torch.device | str,
                     dtype: torch.dtype) -> ModelT:
    """transformers' from_pretrained on one subfolder, made strict: no pickles, no missing or resized keys."""
    label = repo_label(folder)
    path, file = _weights(folder, component)
    check_header(path, repo=label, file=file)
    variant = "fp16" if ".fp16." in path.name else None
    try:
        model, info = cls.from_pretrained(
            folder / component,
            variant=variant,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # so the report names the key; we refuse the model below
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise LoadError(label, file, f"transformers could not load it ({e})") from e
    unexpected = sorted(set(info["unexpected_keys"]) - IGNORED_TEXT_ENCODER_KEYS)
    for problem, keys in (("missing keys", sorted(info["missing_keys"])), ("unexpected keys", unexpected)):
        if keys:
            raise LoadError(label, file, f"{problem}: {', '.join(keys[:5])}")
    if info["mismatched_keys"]:
        key, saved, wanted = sorted(info["mismatched_keys"])[0]
        raise LoadError(label, file, f"shape mismatch for {key}: checkpoint {tuple(saved)}, model {tuple(wanted)}")
    if torch.device(device).type == "cuda":
        try:
            module_to_device(model, torch.device(device))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # e.g. no page-locked memory: module.to below still works
            logger.warning("%s: chunked copy to %s failed (%s); copying tensor by tensor", file, device, e)
    model = model.to(device).eval().requires_grad_(False)  # (a no-op for what the chunked copy moved)
    logger.info("loaded %s (%s, %s)", file, device, dtype)
    return model


def load_text_encoder(folder: str | Path, device: torch.device | str, dtype: torch.dtype) -> CLIPTextModel:
    """The CLIP text tower (SD2: OpenCLIP ViT-H, 23 layers); `last_hidden_state` is the conditioning."""
    from transformers import CLIPTextModel

    return _from_pretrained(CLIPTextModel, Path(folder), "text_encoder", device, dtype)


def load_scheduler_config(folder: str | Path, subfolder: str = "scheduler") -> SchedulerConfig:
    """The scheduler settings (betas, prediction type, ...) as a SchedulerConfig."""
    from sd2_app.samplers.schedules import SchedulerConfig

    file = f"{subfolder}/scheduler_config.json"
    try:
        return SchedulerConfig.from_dict(read_json(folder, file))
    except (ValueError, KeyError, TypeError) as e:
        raise LoadError(repo_label(folder), file, f"unsupported scheduler config: {e}") from e


def load_depth_estimator(
    folder: str | Path, device: torch.device | str, dtype: torch.dtype
) -> tuple[DPTForDepthEstimation, DPTImageProcessor]:
    """MiDaS DPT (depth repo only) and its image processor (resize + normalise to [-1, 1])."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    folder = Path(folder)
    model = _from_pretrained(DPTForDepthEstimation, folder, "depth_estimator", device, dtype)
    file = "feature_extractor/preprocessor_config.json"
    if not (folder / file).is_file():
        raise LoadError(repo_label(folder), file, "not found")
    try:
        processor = DPTImageProcessor.from_pretrained(folder / "feature_extractor", local_files_only=True)
    except (OSError, ValueError) as e:
        raise LoadError(repo_label(folder), file, f"transformers could not load it ({e})") from e
    return model, processor
