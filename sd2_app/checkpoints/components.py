"""The loaded pieces of one checkpoint, as the model manager hands them to a pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sd2_app.nn.unet import Denoiser
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.samplers.schedules import SchedulerConfig


@dataclass
class Components:
    """Everything a task needs from one checkpoint; modules are already on `device` in `dtype`."""

    key: str  # registry key, e.g. "sd21-base"
    repo: str  # the repo id or folder actually loaded
    unet: Denoiser  # the UNet, or accel's CUDA-graph wrapper of it (after Accelerator.prepare)
    vae: AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: SchedulerConfig
    device: torch.device
    dtype: torch.dtype
    low_res_scheduler_config: SchedulerConfig | None = None  # x4 upscaler only
    max_noise_level: int = 350  # x4 upscaler only (model_index.json)
    depth_estimator: Any = None  # transformers.DPTForDepthEstimation, depth checkpoint only
    depth_processor: Any = None  # transformers.DPTImageProcessor
    # Textual-inversion embeddings a request may use, name -> loading.embeddings.TextualInversion: the
    # service lends its library to each run (a copy of this object), never to the shared models.
    embeddings: Any = None
