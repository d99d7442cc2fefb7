"""Text-to-image: pure noise at the schedule's first sigma, then the shared loop (after diffusers
pipeline_stable_diffusion.py, __call__).

A request may add A1111's seed extras (pipelines/seeds.py), seamless tiling (pipelines/seamless.py) and the
hires fix (pipelines/hires.py, which runs `generate` as its first pass).
"""

from __future__ import annotations

import torch

from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.images import postprocess, round_size
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.metadata import Settings
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.prompt import embedding_settings
from sd2_app.pipelines.sampling import Job, PreparedRun, start_job
from sd2_app.pipelines.seamless import tiled_components
from sd2_app.pipelines.seeds import seed_settings, seeded_noise, uses_extras
from sd2_app.pipelines.vae_io import decode_in, vae_factor
from sd2_app.api.requests import HiresPassRequest, Txt2ImgRequest


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


def txt2img_settings(request: Txt2ImgRequest, components: Components, width: int, height: int) -> Settings:
    """The parameters text's settings, with A1111's keys for the seed extras and tiling when they are on."""
    settings = sampling_settings(request.sampling, width=width, height=height, model=components.key)
    settings |= embedding_settings(components, request)
    settings.update(seed_settings(request.seed_extras))
    if request.tiling:
        settings["Tiling"] = True
    return settings


def _start(
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
    job, start, width, height, warnings = _start(components, request, mode)
    return job.denoise(start, on_step=on_step), width, height, warnings


def prepare_txt2img(components: Components, request: Txt2ImgRequest, mode: RunMode = NORMAL) -> PreparedRun:
    """A plain text-to-image run (no hires fix) up to its loop; its finish decodes and labels the images.

    A tiled request's run holds its own circular view of the UNet and VAE (pipelines/seamless.py).
    """
    job, start, width, height, warnings = _start(tiled_components(components, request.tiling), request, mode)

    def finish(latents: torch.Tensor) -> PipelineOutput:
        images = postprocess(decode_in(mode, job.components.vae, latents))
        label_images(images, request.prompt, request.negative_prompt,
                     txt2img_settings(request, components, width, height))
        return PipelineOutput(images=images, latents=latents, width=width, height=height, warnings=warnings)

    return PreparedRun(job, start, finish)


@torch.inference_mode()
def txt2img(
    components: Components, request: Txt2ImgRequest | HiresPassRequest, on_step: LatentProgressFn | None = None,
    mode: RunMode = NORMAL,
) -> PipelineOutput:
    """Generate `batch_size` images from a prompt; one generator seeded with the request's seed."""
    if isinstance(request, HiresPassRequest):  # the SD2 x4 hires route's second pass (api/hires_x4.py)
        from sd2_app.pipelines.hires import hires_pass  # hires builds on this module

        return hires_pass(components, request, on_step, mode)
    if request.hires is not None:
        from sd2_app.pipelines.hires import hires_fix

        return hires_fix(components, request, on_step, mode)
    return prepare_txt2img(components, request, mode).complete(on_step)
