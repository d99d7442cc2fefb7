"""The loaded pieces of one checkpoint, as the model manager hands them to a pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer, DPTForDepthEstimation, DPTImageProcessor

    from sd2_app.loading.embeddings import TextualInversion
    from sd2_app.manager.derived import DerivedModules
    from sd2_app.nn.clip_text import TextEncoder
    from sd2_app.nn.unet import Denoiser
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.pipelines.prompt_plan import PromptPlans
    from sd2_app.samplers.schedules import SchedulerConfig


@dataclass
class Components:
    """Everything a task needs from one checkpoint; modules are already on `device` in `dtype`."""

    key: str  # registry key, e.g. "sd21-base"
    repo: str  # the repo id or folder actually loaded
    model_hash: str  # a single-file checkpoint's A1111 short hash (sha256, 10 hex digits); "" for a repo
    unet: Denoiser  # the UNet, or accel's CUDA-graph wrapper of it (after Accelerator.prepare)
    vae: AutoencoderKL
    text_encoder: TextEncoder  # transformers' CLIPTextModel, or accel's CUDA-graph wrapper of it
    tokenizer: CLIPTokenizer
    scheduler_config: SchedulerConfig
    device: torch.device
    dtype: torch.dtype
    low_res_scheduler_config: SchedulerConfig | None = None  # x4 upscaler only
    max_noise_level: int = 350  # x4 upscaler only (model_index.json)
    depth_estimator: DPTForDepthEstimation | None = None  # depth checkpoint only
    depth_processor: DPTImageProcessor | None = None
    # Textual-inversion embeddings a request may use, by prompt name: the service lends its library's to each
    # run (a copy of this object), never to the shared models.
    embeddings: Mapping[str, TextualInversion] | None = None
    # the manager's modules derived from these (pipelines/seamless.py's tiled view), kept while the models
    # stay where they are; None: each job derives its own
    derived: DerivedModules | None = None
    # the Service's prompt plans (lent to each run like the embeddings), so the job takes the plan its request's
    # validation made (pipelines/prompt_plan.py); None: each job plans its own prompts
    prompt_plans: PromptPlans | None = None
    # the LoRAs merged into these models' weights for this job, (name, A1111 short hash) each (the service's
    # LoraTools lend them with a copy of this object)
    loras: tuple[tuple[str, str], ...] = ()
