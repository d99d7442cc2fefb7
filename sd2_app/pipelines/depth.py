"""Depth-to-image with the 5-channel UNet: img2img start plus a normalised depth channel
(diffusers pipeline_stable_diffusion_depth2img.py).

The depth comes from DPT (MiDaS relative inverse depth: larger = nearer) run on the original image, or from a
user-supplied grayscale map (white = near). Either way it is resized (bicubic) to the latent size and
min/max-normalised to [-1, 1], like the reference.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.images import grayscale_to_tensor, postprocess, preprocess_image
from sd2_app.pipelines.img2img import noised_init_latents
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.pipelines.sampling import finished, start_job
from sd2_app.pipelines.vae_io import vae_factor
from sd2_app.api.requests import DepthRequest


def estimate_depth(components: Components, image: Image.Image) -> torch.Tensor:
    """(1, h', w') fp32 relative inverse depth from DPT. It has BatchNorm, so reduced precision runs under
    autocast (weights stay as loaded) rather than as a plain fp16 forward."""
    if components.depth_estimator is None or components.depth_processor is None:
        raise InvalidRequest(f"{components.key} has no depth estimator; supply a depth map")
    pixels = components.depth_processor(images=image, return_tensors="pt").pixel_values  # (1, 3, 384, 384)
    device = components.device
    estimator_dtype = next(components.depth_estimator.parameters()).dtype
    pixels = pixels.to(device=device, dtype=estimator_dtype)
    use_autocast = components.dtype != torch.float32 and device.type in ("cuda", "cpu")
    autocast = torch.autocast(device.type, dtype=components.dtype) if use_autocast else contextlib.nullcontext()
    with autocast:
        depth = components.depth_estimator(pixels).predicted_depth  # (1, h', w')
    return depth.float()


def depth_to_image(depth: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """(1, h', w') depth -> a viewable grayscale image of `size` (white = near), min/max stretched."""
    d = depth[0].float()
    d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
    array = (d.cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, mode="L").resize(size, Image.Resampling.BICUBIC)


def depth_condition(depth: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(1, h', w') depth -> (1, 1, h, w) in [-1, 1]: bicubic to the latent size, per-sample min/max.

    A flat map (max == min) becomes all -1 instead of the reference's NaNs.
    """
    resized = F.interpolate(depth[:, None].float(), size=latent_size, mode="bicubic", align_corners=False)
    low = resized.amin(dim=(1, 2, 3), keepdim=True)
    high = resized.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (resized - low) / (high - low).clamp_min(1e-12) - 1.0


@torch.inference_mode()
def depth2img(
    components: Components, request: DepthRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> PipelineOutput:
    """Re-draw an image keeping its depth layout."""
    if components.unet.config.in_channels != 5:
        raise InvalidRequest(f"{components.key} is not a depth checkpoint (its UNet takes "
                             f"{components.unet.config.in_channels} channels, depth-to-image needs 5)")
    sampling = request.sampling
    factor = vae_factor(components.vae)
    warnings: list[str] = []
    original = request.image.convert("RGB")
    if request.depth_map is not None:
        depth = grayscale_to_tensor(request.depth_map).to(components.device)  # (1, H', W') in [0, 1]
        depth_image = depth_to_image(depth, original.size)  # min/max stretched: what the condition sees
    else:
        depth = estimate_depth(components, original)
        depth_image = depth_to_image(depth, original.size)
    # The reference sizes the depth from the un-floored input size; floor division matches the latents.
    condition = depth_condition(depth, (original.height // factor, original.width // factor))

    image = preprocess_image(original, factor=factor)  # (1, 3, H, W), floored to the factor
    height, width = image.shape[-2:]
    if (width, height) != original.size:
        warnings.append(f"Size {original.width}x{original.height} is not a multiple of {factor}; "
                        f"used {width}x{height}.")
    job = start_job(components, request, strength=request.strength, mode=mode)
    x = noised_init_latents(components, image, job.plan, sampling.batch_size, job.generator)

    def finish(latents: torch.Tensor) -> PipelineOutput:
        images = postprocess(job.decode(latents))
        settings = sampling_settings(sampling, width=width, height=height, model=components.key,
                                     model_hash=components.model_hash)
        settings |= prompt_settings(job.embeddings, components, padded=job.padded)
        settings[keys.DENOISING_STRENGTH] = request.strength
        settings[keys.DEPTH] = "user map" if request.depth_map is not None else "DPT"
        label_images(images, request.prompt, request.negative_prompt, settings)
        return PipelineOutput(images=images, latents=latents, width=width, height=height, warnings=warnings,
                              depth_image=depth_image)

    concat = condition.repeat(job.rows, 1, 1, 1)  # (2B|B, 1, h, w)
    return finished(lambda: job.denoise(x, concat=concat, on_step=on_step), finish)
