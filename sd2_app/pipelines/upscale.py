"""x4 upscaling (reference §4.7): the UNet denoises latents of the low-res size, conditioned on the noised
low-res image (3 extra channels) and the noise level (class label); the 3-level VAE decodes them at 4x.

Large inputs run in overlapping tiles (UNet every step, and the VAE decode) so a 512x512 input fits in
16 GB; the VAE always decodes in fp32 because the x4 VAE overflows in fp16.
"""

from __future__ import annotations

import torch

from sd2_app.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.images import BICUBIC, postprocess, preprocess_image
from sd2_app.pipelines.loop import Conditioning, ProgressFn, Tiling, run_sampling
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.prompt import encode_prompts
from sd2_app.pipelines.sampling import draw_noise, make_generator, plan_sampling
from sd2_app.pipelines.vae_io import decode, vae_factor
from sd2_app.requests import UpscaleRequest
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
def upscale(components: Components, request: UpscaleRequest, on_step: ProgressFn | None = None) -> PipelineOutput:
    """4x super-resolution guided by a prompt; `noise_level` trades faithfulness for invented detail."""
    if components.low_res_scheduler_config is None or components.unet.config.in_channels != 7:
        raise InvalidRequest(f"{components.key} is not the x4 upscaler checkpoint")
    if not 0 <= request.noise_level <= components.max_noise_level:
        raise InvalidRequest(f"noise level must be within 0..{components.max_noise_level}")
    sampling = request.sampling
    assert sampling.seed is not None, "the service resolves the seed before calling a pipeline"
    factor = vae_factor(components.vae)  # 4
    warnings: list[str] = []
    original = request.image.convert("RGB")
    image = preprocess_image(original, factor=factor, resample=BICUBIC).to(components.device)  # (1, 3, h, w)
    h, w = image.shape[-2:]
    if (w, h) != original.size:
        warnings.append(f"Size {original.width}x{original.height} is not a multiple of {factor}; used {w}x{h}.")

    generator = make_generator(components.device, sampling.seed)
    use_cfg = sampling.cfg_scale > 1.0
    batch = sampling.batch_size
    context, prompt_warnings = encode_prompts(
        components.text_encoder, components.tokenizer, request.prompt, request.negative_prompt,
        batch_size=batch, use_cfg=use_cfg, device=components.device,
    )
    warnings += prompt_warnings
    plan = plan_sampling(components.scheduler_config, sampling)

    # Draw order (reference §4.9): the augmentation noise, then the start latents.
    noise = draw_noise(tuple(image.shape), generator, components.device, components.dtype)
    low_res = augment_low_res(image, noise, request.noise_level, components.low_res_scheduler_config)
    rows = batch * (2 if use_cfg else 1)
    concat = low_res.repeat(rows, 1, 1, 1)  # (2B|B, 3, h, w)
    labels = torch.full((rows,), request.noise_level, dtype=torch.long, device=components.device)
    shape = (batch, components.vae.config.latent_channels, h, w)
    x = draw_noise(shape, generator, components.device, components.dtype) * plan.schedule.init_noise_sigma

    tiling = _tiling(request.tile_size)
    latents = run_sampling(
        components.unet, Conditioning(context=context, concat=concat, class_labels=labels), x, plan.schedule,
        plan.spec, cfg_scale=sampling.cfg_scale, guidance_rescale=sampling.guidance_rescale,
        prediction_type=components.scheduler_config.prediction_type, generator=generator,
        on_step=on_step, tiling=tiling, sampler_options=plan.options,
    )
    pixels = decode(components.vae, latents, force_fp32=True, tile=tiling.tile, overlap=tiling.overlap)
    images = postprocess(pixels)
    out_w, out_h = w * factor, h * factor
    settings = sampling_settings(sampling, width=out_w, height=out_h, model=components.key)
    settings["Noise level"] = request.noise_level
    if max(h, w) > tiling.tile:
        settings["Tile size"] = tiling.tile
    label_images(images, request.prompt, request.negative_prompt, settings)
    return PipelineOutput(images=images, latents=latents, width=out_w, height=out_h, warnings=warnings)
