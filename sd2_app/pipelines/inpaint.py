"""Inpainting with the 9-channel UNet: latents + mask + masked-image latents each step
(diffusers pipeline_stable_diffusion_inpaint.py).

Beyond the reference: "only masked" (crop around the mask, work at the model's resolution, paste back) and
`keep_unmasked`, an inward-feathered paste-back that leaves every pixel outside the mask as it was; and below
strength 1, A1111's "Masked content" (`InpaintRequest.masked_content`): what the masked area starts from. With
A1111's Mask mode "Inpaint not masked" the binarised mask is inverted before anything else uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sd2_app import infotext_keys as keys
from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.images import floor_size, postprocess, preprocess_image, preprocess_mask
from sd2_app.pipelines.img2img import noised_init_latents
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.mask_fill import fill_from_surroundings
from sd2_app.pipelines.masks import binarize, crop_box, paste_back
from sd2_app.pipelines.metadata import Settings
from sd2_app.pipelines.output import PipelineOutput, label_images, sampling_settings
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.pipelines.sampling import Job, draw_noise, finished, start_job
from sd2_app.pipelines.generate import native_size
from sd2_app.pipelines.vae_io import encode, vae_factor
from sd2_app.api.requests import MASK_MODES, InpaintRequest
from sd2_app.samplers.base import NoiseSource


def content_image(image: torch.Tensor, mask: torch.Tensor, content: str, device: torch.device) -> torch.Tensor:
    """The (1, 3, H, W) image the start latents are encoded from: for every masked content but "original" its
    masked area (`mask` (1, 1, H, W), 1 = repaint) painted from the pixels around it, as A1111 does for all three
    (modules/processing.py, StableDiffusionProcessingImg2Img.init, `masking.fill`), computed on `device` (the
    components', where the encode moves it anyway)."""
    if content == "original":
        return image
    pixels = image[0].to(device).permute(1, 2, 0)  # (H, W, 3)
    filled = fill_from_surroundings(pixels, mask[0, 0].to(device) >= 0.5)
    return filled.permute(2, 0, 1)[None]


def _masked_start(content: str, mask: torch.Tensor, generator: NoiseSource,
                  components: Components) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What becomes of the encoded start latents inside the latent-sized `mask` (1, 1, h, w): unit noise drawn
    from the request's generator for "latent noise", zeros for "latent nothing" (A1111, as above); None: as
    encoded."""
    if content not in ("latent noise", "latent nothing"):
        return None

    def start(init: torch.Tensor) -> torch.Tensor:
        area = mask.to(init.device) >= 0.5
        if content == "latent nothing":
            return torch.where(area, torch.zeros_like(init), init)
        noise = draw_noise(tuple(init.shape), generator, components.device, components.dtype)
        return torch.where(area, noise.to(init.device), init)

    return start


Generated = Callable[[list[Image.Image], torch.Tensor, Job], PipelineOutput]


class WorkArea(NamedTuple):
    """What the reference algorithm runs on and how its images become the output (`_work_area`)."""

    image: Image.Image
    mask: Image.Image
    size: tuple[int, int]  # (width, height) the algorithm works at
    out_size: tuple[int, int]
    place: Callable[[list[Image.Image]], list[Image.Image]]  # the generated images -> the output images
    only_masked: bool  # cropped around the mask ("Only masked" with a mask that is not empty)


def _generate(
    components: Components,
    request: InpaintRequest,
    image: Image.Image,
    mask: Image.Image,
    size: tuple[int, int],
    on_step: LatentProgressFn | None,
    mode: RunMode,
    finish: Generated,
) -> PipelineOutput:
    """The reference algorithm on (image, mask) resized to `size`: `finish(decoded images, latents, the job)`, of
    the loop's end or, after Stop, of the image so far (`finished`)."""
    sampling = request.sampling
    factor = vae_factor(components.vae)
    width, height = size
    init_image = preprocess_image(image, width, height, factor=factor)  # (1, 3, H, W)
    mask_tensor = preprocess_mask(mask, width, height, factor=factor)  # (1, 1, H, W) 0/1
    masked_image = init_image * (mask_tensor < 0.5)  # repainted pixels -> 0 (mid-gray)

    job = start_job(components, request, strength=request.strength, mode=mode)

    # Draw order (docs/DESIGN.md, "Random draws"): start latents (posterior, "latent noise" + noise when
    # strength < 1), then the masked encode.
    batch = sampling.batch_size
    h, w = height // factor, width // factor
    mask_latent = F.interpolate(mask_tensor, size=(h, w))  # nearest, (1, 1, h, w)
    if request.strength >= 1.0:
        x = job.start_noise((batch, components.vae.config.latent_channels, h, w))
    else:
        start = _masked_start(request.masked_content, mask_latent, job.generator, components)
        start_image = content_image(init_image, mask_tensor, request.masked_content, components.device)
        x = noised_init_latents(components, start_image, job.plan, batch, job.generator, start=start)
    masked_latents = encode(components.vae, masked_image, job.generator, rows=batch)  # (B, 4, h, w)
    mask_latent = mask_latent.to(masked_latents.device).expand(batch, -1, -1, -1)
    concat = torch.cat([mask_latent, masked_latents], dim=1).repeat(job.rows // batch, 1, 1, 1)  # (2B|B, 5, h, w)
    return finished(lambda: job.denoise(x, concat=concat, on_step=on_step),
                    lambda latents: finish(postprocess(job.decode(latents)), latents, job))


def _work_area(
    components: Components, request: InpaintRequest, full_mask: Image.Image, warnings: list[str]
) -> WorkArea:
    """The reference algorithm's `WorkArea`: "only masked" crops around the mask, works at the model's resolution
    and pastes back; else the whole image at a multiple of the VAE factor, pasted back over the original with
    `keep_unmasked`."""
    original = request.image.convert("RGB")
    box = crop_box(full_mask, request.only_masked_padding, aspect=1.0) if request.only_masked else None
    if request.only_masked and box is None:
        warnings.append("The mask is empty; inpainted the whole image instead of only the masked area.")
    if box is not None:
        native = native_size(components)
        canvas_size = (box[2] - box[0], box[3] - box[1])

        def in_box(generated: list[Image.Image]) -> list[Image.Image]:
            images = []
            for image in generated:
                canvas = original.copy()
                canvas.paste(image.resize(canvas_size, Image.Resampling.LANCZOS), box[:2])
                images.append(paste_back(original, canvas, full_mask, request.mask_blur)
                              if request.keep_unmasked else canvas)
            return images

        return WorkArea(original.crop(box), full_mask.crop(box), (native, native), original.size, in_box, True)
    factor = vae_factor(components.vae)
    work_size = floor_size(original.width, original.height, factor)
    if work_size != original.size:
        warnings.append(f"Size {original.width}x{original.height} is not a multiple of {factor}; "
                        f"worked at {work_size[0]}x{work_size[1]}.")
    if not request.keep_unmasked:
        return WorkArea(original, request.mask, work_size, work_size, list, False)

    def pasted(generated: list[Image.Image]) -> list[Image.Image]:
        return [paste_back(original, image.resize(original.size, Image.Resampling.LANCZOS), full_mask,
                           request.mask_blur) for image in generated]

    return WorkArea(original, request.mask, work_size, original.size, pasted, False)


def _settings(components: Components, request: InpaintRequest, area: WorkArea, job: Job,
              extra_settings: Settings | None) -> Settings:
    """The parameters text's settings, A1111's inpainting keys among them."""
    width, height = area.out_size
    settings = sampling_settings(request.sampling, width=width, height=height, model=components.key,
                                 model_hash=components.model_hash)
    settings |= prompt_settings(job.embeddings, components, padded=job.padded)
    settings[keys.DENOISING_STRENGTH] = request.strength
    settings[keys.MASK_BLUR] = request.mask_blur
    if area.only_masked:
        settings[keys.INPAINT_AREA] = "Only masked"
        settings[keys.MASKED_AREA_PADDING] = request.only_masked_padding
    settings[keys.KEEP_UNMASKED] = request.keep_unmasked
    if request.masked_content != "original" and request.strength < 1.0:  # at strength 1 the start is noise
        settings[keys.MASKED_CONTENT] = request.masked_content
    if request.mask_mode != MASK_MODES[0]:  # A1111 writes only the inverted mode
        settings[keys.MASK_MODE] = request.mask_mode
    settings.update(extra_settings or {})
    return settings


@torch.inference_mode()
def inpaint(
    components: Components, request: InpaintRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL,
    *, extra_settings: Settings | None = None,
) -> PipelineOutput:
    """Repaint the white part of the mask; see the module docstring for the two modes beyond the reference.

    `extra_settings` are appended to the parameters text (outpainting records its margins and fill there).
    """
    if components.unet.config.in_channels != 9:
        raise InvalidRequest(f"{components.key} is not an inpainting checkpoint (its UNet takes "
                             f"{components.unet.config.in_channels} channels, inpainting needs 9)")
    warnings: list[str] = []
    full_mask = binarize(request.mask, request.image.size)
    if request.mask_mode == MASK_MODES[1]:  # "Inpaint not masked": the rest is repainted
        full_mask = ImageOps.invert(full_mask)
        request = replace(request, mask=full_mask)
    area = _work_area(components, request, full_mask, warnings)
    out_size = area.out_size

    def finish(generated: list[Image.Image], latents: torch.Tensor, job: Job) -> PipelineOutput:
        images = area.place(generated)
        label_images(images, request.prompt, request.negative_prompt,
                     _settings(components, request, area, job, extra_settings))
        mask_image = full_mask if out_size == request.image.size else binarize(request.mask, out_size)
        return PipelineOutput(images=images, latents=latents, width=out_size[0], height=out_size[1],
                              warnings=warnings, mask_image=mask_image)

    return _generate(components, request, area.image, area.mask, area.size, on_step, mode, finish)
