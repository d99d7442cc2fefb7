"""Image-to-image: the init image's latents noised to the strength-cut schedule's start.

After diffusers pipeline_stable_diffusion_img2img.py (get_timesteps, prepare_latents).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sd2_app import infotext_keys as keys
from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.images import postprocess, preprocess_image
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.pipelines.sampling import PreparedRun, SamplingPlan, draw_noise, start_job
from sd2_app.pipelines.seamless import tiled_components
from sd2_app.pipelines.seeds import seed_settings, vary
from sd2_app.pipelines.generate import effective_size
from sd2_app.pipelines.vae_io import encode, vae_factor
from sd2_app.api.requests import Img2ImgRequest, SeedExtras
from sd2_app.samplers import add_noise
from sd2_app.samplers.base import NoiseSource


def noised_init_latents(
    components: Components,
    image: torch.Tensor,
    plan: SamplingPlan,
    batch_size: int,
    generator: NoiseSource,
    extras: SeedExtras | None = None,
    start: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(1, 3, H, W) image -> (B, 4, h, w) sigma-space start latents.

    Draw order as in the reference, for each image from its own seed (`generator` one per image): the
    posterior sample, then the noise (slerped towards the variation seed's noise when `extras` has one:
    pipelines/seeds.py).
    `start` changes the (B, 4, h, w) encoded latents before the noise is drawn and added (inpainting's masked
    content: pipelines/inpaint.py); draws it makes come between the two. `add_noise` in sigma space is
    x0 + sigma * noise.
    """
    init = encode(components.vae, image, generator, rows=batch_size)  # (B, 4, h, w)
    if start is not None:
        init = start(init)
    noise = draw_noise(tuple(init.shape), generator, components.device, components.dtype)
    if extras is not None:
        noise = vary(noise, generator, extras, components.dtype)
    return add_noise(init, noise, plan.schedule.sigmas[0])


def prepare_img2img(components: Components, request: Img2ImgRequest, mode: RunMode = NORMAL) -> PreparedRun:
    """An image-to-image run up to its loop (the init image encoded and noised); its finish decodes and labels.

    A tiled request's run holds its own circular view of the UNet and VAE (pipelines/seamless.py).
    """
    sampling = request.sampling
    factor = vae_factor(components.vae)
    warnings: list[str] = []
    width, height = request.width or request.image.width, request.height or request.image.height
    if request.width or request.height:
        width, height = effective_size(width, height, factor, warnings)
    image = preprocess_image(request.image, width, height, factor=factor)  # (1, 3, H, W), floored to factor
    if (image.shape[-1], image.shape[-2]) != (width, height):
        warnings.append(f"Size {width}x{height} is not a multiple of {factor}; "
                        f"used {image.shape[-1]}x{image.shape[-2]}.")
    height, width = image.shape[-2:]

    job_components = tiled_components(components, request.tiling)
    job = start_job(job_components, request, strength=request.strength, mode=mode)
    x = noised_init_latents(job_components, image, job.plan, sampling.batch_size, job.generator, request.seed_extras)

    def finish(latents: torch.Tensor) -> PipelineOutput:
        images = postprocess(job.decode(latents))
        settings = sampling_settings(sampling, width=width, height=height, model=components.key,
                                     model_hash=components.model_hash)
        settings |= prompt_settings(job.embeddings, components, padded=job.padded)
        settings[keys.DENOISING_STRENGTH] = request.strength
        settings.update(seed_settings(request.seed_extras))
        if request.tiling:
            settings[keys.TILING] = True
        label_images(images, request.prompt, request.negative_prompt, settings)
        return PipelineOutput(images=images, latents=latents, width=width, height=height, warnings=warnings)

    return PreparedRun(job, x, finish)


@torch.inference_mode()
def img2img(
    components: Components, request: Img2ImgRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> PipelineOutput:
    """Re-draw an image: strength 1 keeps only its composition's noise-level trace, 0 would keep it all."""
    return prepare_img2img(components, request, mode).complete(on_step)
