"""The operator's folder of single-file SD2 checkpoints (A1111's `models/Stable-diffusion`): one more checkpoint
per usable `.safetensors` file, named by its stem.

Only headers are read here (the tensors' names and shapes), at start-up: they say whether a file is a whole SD
2.x checkpoint and which kind (text-to-image or inpainting); sd2_app/loading/single_file.py converts it on first
use. A file that cannot be used is logged and listed with the reason: a pickle, SD 1.x or SDXL, a depth or x4
model (their files lack parts the app needs), unCLIP, no UNet, VAE or text encoder, or a name a built-in checkpoint
has. Only files the operator put there are ever read: visitors pick a checkpoint by its key. No torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sd2_app.checkpoints.allowlist import CUSTOM_RESOLUTION, allowed_repos, custom_specs
from sd2_app.checkpoints.catalog import TEXT_TASKS, CheckpointSpec
from sd2_app.loading.folder_scan import PICKLE_SUFFIXES, safetensors_header, scan_folder
from sd2_app.loading.ldm_names import (IN_CHANNELS_KEY, INPAINT_CHANNELS, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX,
                                       sidecar_prediction)

log = logging.getLogger(__name__)

V_RESOLUTION = 768  # a v-prediction SD2 model's native side (SD 2.0 / 2.1 768-v)
INPAINT_TASKS = ("inpaint", "outpaint")
# Input channels of the UNets this folder does not take, and why.
OTHER_UNETS = {5: "a depth-to-image model: its depth estimator is not in the file, use the sd2-depth checkpoint",
               7: "an x4 upscaler: use the x4-upscaler checkpoint"}


class CheckpointFileError(ValueError):
    """A file of the checkpoints folder that is not used; the text says why."""


def _tasks(path: Path) -> tuple[str, ...]:
    """The tasks a file's checkpoint serves, from its header; CheckpointFileError when it is not one we run."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointFileError(f"{path.name}: pickle checkpoints are not loaded; safetensors only")
    header = safetensors_header(path, CheckpointFileError)
    keys = set(header)
    if any(key.startswith("conditioner.embedders.") for key in keys):
        raise CheckpointFileError(f"{path.name}: an SDXL checkpoint; this app runs SD 2.x")
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        raise CheckpointFileError(f"{path.name}: an SD 1.x checkpoint (CLIP ViT-L text encoder); this app runs SD 2.x")
    if any(key.startswith(UNET_PREFIX + "label_emb.") for key in keys):
        raise CheckpointFileError(f"{path.name}: a UNet with a class embedding (SD 2.1 unCLIP?): not supported")
    for prefix, part in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE"), (TEXT_PREFIX, "OpenCLIP text encoder")):
        if not any(key.startswith(prefix) for key in keys):
            raise CheckpointFileError(f"{path.name}: no {part} ({prefix}*): not a whole SD 2.x checkpoint")
    entry = header.get(IN_CHANNELS_KEY)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or len(shape) != 4 or not all(type(side) is int for side in shape):
        raise CheckpointFileError(f"{path.name}: no {IN_CHANNELS_KEY} of four dimensions")
    channels = shape[1]
    if channels in OTHER_UNETS:
        raise CheckpointFileError(f"{path.name}: {OTHER_UNETS[channels]}")
    if channels not in (4, INPAINT_CHANNELS):
        raise CheckpointFileError(f"{path.name}: a UNet with {channels} input channels; SD 2.x has 4 (or 9 to inpaint)")
    return INPAINT_TASKS if channels == INPAINT_CHANNELS else TEXT_TASKS


def _resolution(path: Path) -> int:
    """768 when the yaml beside the file says v-prediction, else 512 (a v model without a yaml is found out when
    it loads, sd2_app/loading/single_file.py; its sizes then default to 512, as in A1111)."""
    return V_RESOLUTION if sidecar_prediction(path) == "v_prediction" else CUSTOM_RESOLUTION


@dataclass(frozen=True)
class CheckpointFiles:
    """The usable checkpoint files of one folder, as `scan` found them."""

    folder: Path | None = None
    specs: dict[str, CheckpointSpec] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # file name -> why it is not used

    @classmethod
    def scan(cls, folder: str | Path | None, taken: Mapping[str, CheckpointSpec]) -> CheckpointFiles:
        """Every usable file of `folder` (not recursive) as a checkpoint keyed by its stem; a stem that `taken`
        (the built-in checkpoints) already has, in any case, is refused. No folder: none."""
        if folder is None or not Path(folder).is_dir():
            return cls(None if folder is None else Path(folder))
        taken_names = {key.lower() for key in taken}

        def read(path: Path) -> CheckpointSpec:
            if path.stem.lower() in taken_names:
                raise CheckpointFileError(f"{path.name}: {path.stem!r} is a built-in checkpoint's name; rename it")
            return CheckpointSpec(path.stem, path.name, (str(path.resolve()),), None, _resolution(path), _tasks(path),
                                  original_file=path.stem)

        found, refused = scan_folder(Path(folder), read, CheckpointFileError, "checkpoint file")
        return cls(Path(folder), found, refused)


def operator_checkpoints(repos: Iterable[str] | None, files: CheckpointFiles | None,
                         registry: Mapping[str, CheckpointSpec]) -> dict[str, CheckpointSpec]:
    """The checkpoints the operator adds to `registry`: the allow-listed Hub repos (`repos`; None:
    $SD2APP_ALLOWED_REPOS) and the checkpoint files (a repo id holds a "/", a file's key does not)."""
    return {**custom_specs(allowed_repos() if repos is None else repos, registry), **(files.specs if files else {})}
