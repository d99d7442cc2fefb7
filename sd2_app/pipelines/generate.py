"""Text to latents: pure noise at the schedule's first sigma, then the shared loop (after diffusers
pipeline_stable_diffusion.py, __call__), with A1111's seed extras. The first pass of text-to-image
(pipelines/txt2img.py) and of the hires fix (pipelines/hires.py).
"""

from __future__ import annotations

import torch

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import Txt2ImgRequest
from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.images import round_size
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.metadata import Settings
from sd2_app.pipelines.output import sampling_settings
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import Job, start_job
from sd2_app.pipelines.seeds import seed_settings, seeded_noise, uses_extras
from sd2_app.pipelines.vae_io import vae_factor


def native_size(components: Components) -> int:
    """The checkpoint's training resolution in pixels: UNet sample_size x VAE factor (512 base, 768 v)."""
    sample_size = components.unet.config.sample_size or 64
    return int(sample_size) * vae_factor(components.vae)


def effective_size(width: int, height: int, factor: int, warnings: list[str]) -> tuple[int, int]:
    """Round a requested size to the VAE factor, telling the caller when it changed."""
    new_width, new_height = round_size(width, height, factor)
    if (new_width, new_height) != (width, height):
        warnings.append(f"Size {width}x{height} is not a multiple of {factor}; used {new_width}x{new_height}.")
    return new_width, new_height


def txt2img_settings(request: Txt2ImgRequest, components: Components, width: int, height: int, job: Job) -> Settings:
    """The parameters text's settings, with A1111's keys for the seed extras, tiling when they are on and the
    `job`'s prompts (the embeddings they used, their padding)."""
    settings = sampling_settings(request.sampling, width=width, height=height, model=components.key,
                                 model_hash=components.model_hash)
    settings |= prompt_settings(job.embeddings, components, padded=job.padded)
    settings.update(seed_settings(request.seed_extras))
    if request.tiling:
        settings[keys.TILING] = True
    return settings


def start_latents(
    components: Components, request: Txt2ImgRequest, mode: RunMode
) -> tuple[Job, torch.Tensor, int, int, list[str]]:
    """The job and its start latents (B, 4, h, w) for `request` at its size, with the size used and the warnings."""
    sampling = request.sampling
    factor = vae_factor(components.vae)
    warnings: list[str] = []
    native = native_size(components)
    width, height = effective_size(request.width or native, request.height or native, factor, warnings)

    job = start_job(components, request, mode=mode)
    shape = (sampling.batch_size, components.vae.config.latent_channels, height // factor, width // factor)
    if uses_extras(request.seed_extras):
        noise = seeded_noise(shape, job.generator, request.seed_extras, factor, components.device, components.dtype)
        start = noise * job.plan.schedule.init_noise_sigma
    else:
        start = job.start_noise(shape)
    return job, start, width, height, warnings


def generate(
    components: Components, request: Txt2ImgRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> tuple[torch.Tensor, int, int, list[str]]:
    """The denoised latents (B, 4, h, w) of `request` at its size, with the size used and the warnings."""
    job, start, width, height, warnings = start_latents(components, request, mode)
    return job.denoise(start, on_step=on_step), width, height, warnings
