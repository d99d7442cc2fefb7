"""Text-to-image: pure noise at the schedule's first sigma, then the shared loop.

After diffusers pipeline_stable_diffusion.py (__call__).
"""

from __future__ import annotations

import torch

from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.images import postprocess, round_size
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import start_job
from sd2_app.pipelines.vae_io import vae_factor
from sd2_app.api.requests import Txt2ImgRequest


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


@torch.inference_mode()
def txt2img(
    components: Components, request: Txt2ImgRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> PipelineOutput:
    """Generate `batch_size` images from a prompt; one generator seeded with the request's seed."""
    sampling = request.sampling
    factor = vae_factor(components.vae)
    warnings: list[str] = []
    native = native_size(components)
    width, height = effective_size(request.width or native, request.height or native, factor, warnings)

    job = start_job(components, request, mode=mode)
    warnings += job.warnings
    shape = (sampling.batch_size, components.vae.config.latent_channels, height // factor, width // factor)
    latents = job.denoise(job.start_noise(shape), on_step=on_step)
    images = postprocess(job.decode(latents))
    settings = sampling_settings(sampling, width=width, height=height, model=components.key)
    label_images(images, request.prompt, request.negative_prompt, settings)
    return PipelineOutput(images=images, latents=latents, width=width, height=height, warnings=warnings)
