"""x4 upscaling (after diffusers pipeline_stable_diffusion_upscale.py): the UNet denoises latents of the low-res
size, conditioned on the noised
low-res image (3 extra channels) and the noise level (class label); the 3-level VAE decodes them at 4x.

Large inputs run in overlapping tiles (UNet every step, and the VAE decode) so a 512x512 input fits in
16 GB; the VAE always decodes in fp32 because the x4 VAE overflows in fp16.
"""

from __future__ import annotations

import torch

from sd2_app import infotext_keys as keys
from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.images import BICUBIC, postprocess, preprocess_image
from sd2_app.pipelines.loop import LatentProgressFn, Tiling
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.pipelines.sampling import draw_noise, finished, start_job
from sd2_app.pipelines.vae_io import vae_factor
from sd2_app.api.requests import UpscaleRequest
from sd2_app.samplers.schedules import SchedulerConfig, alphas_cumprod


def augment_low_res(
    image: torch.Tensor, noise: torch.Tensor, noise_level: int, config: SchedulerConfig
) -> torch.Tensor:
    """sqrt(abar) * image + sqrt(1 - abar) * noise at the integer noise level (pixel space, fp32 like the
    reference's DDPM `add_noise` on the low-res scheduler)."""
    abar = torch.tensor(alphas_cumprod(config)[noise_level], dtype=torch.float32)
    return abar.sqrt().item() * image + (1 - abar).sqrt().item() * noise


def _tiling(tile: int) -> Tiling:
    """Overlap a quarter of a tile, rounded down to a multiple of 8 where that leaves any."""
    quarter = tile // 4
    return Tiling(tile=tile, overlap=quarter // 8 * 8 or quarter)


@torch.inference_mode()
def upscale(
    components: Components, request: UpscaleRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> PipelineOutput:
    """4x super-resolution guided by a prompt; `noise_level` trades faithfulness for invented detail."""
    if components.low_res_scheduler_config is None or components.unet.config.in_channels != 7:
        raise InvalidRequest(f"{components.key} is not the x4 upscaler checkpoint")
    if not 0 <= request.noise_level <= components.max_noise_level:
        raise InvalidRequest(f"noise level must be within 0..{components.max_noise_level}")
    sampling = request.sampling
    factor = vae_factor(components.vae)  # 4
    warnings: list[str] = []
    original = request.image.convert("RGB")
    image = preprocess_image(original, factor=factor, resample=BICUBIC).to(components.device)  # (1, 3, h, w)
    h, w = image.shape[-2:]
    if (w, h) != original.size:
        warnings.append(f"Size {original.width}x{original.height} is not a multiple of {factor}; used {w}x{h}.")

    job = start_job(components, request, mode=mode)

    # Draw order (docs/DESIGN.md, "Random draws"): the augmentation noise, then the start latents.
    batch = (sampling.batch_size, *image.shape[1:])
    noise = draw_noise(batch, job.generator, components.device, components.dtype)  # each image's own
    low_res = augment_low_res(image, noise, request.noise_level, components.low_res_scheduler_config)  # (B, 3, h, w)
    concat = low_res.repeat(job.rows // sampling.batch_size, 1, 1, 1)  # (2B|B, 3, h, w)
    labels = torch.full((job.rows,), request.noise_level, dtype=torch.long, device=components.device)
    x = job.start_noise((sampling.batch_size, components.vae.config.latent_channels, h, w))
    tiling = _tiling(request.tile_size)
    out_w, out_h = w * factor, h * factor

    def finish(latents: torch.Tensor) -> PipelineOutput:
        pixels = job.decode(latents, force_fp32=True, tile=tiling.tile, overlap=tiling.overlap)
        images = postprocess(pixels)
        settings = sampling_settings(sampling, width=out_w, height=out_h, model=components.key,
                                     model_hash=components.model_hash)
        settings |= prompt_settings(job.embeddings, components, padded=job.padded)
        settings[keys.NOISE_LEVEL] = request.noise_level
        if max(h, w) > tiling.tile:
            settings[keys.TILE_SIZE] = tiling.tile
        label_images(images, request.prompt, request.negative_prompt, settings)
        return PipelineOutput(images=images, latents=latents, width=out_w, height=out_h, warnings=warnings)

    # Stop after a step: the image so far, the 4x decode of that step's x0 estimate (pipelines/sampling.py)
    return finished(lambda: job.denoise(x, concat=concat, class_labels=labels, on_step=on_step, tiling=tiling),
                    finish)
