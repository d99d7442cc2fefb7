"""What every task returns, and the A1111-style parameters text each image carries."""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.pipelines.metadata import Settings, attach_parameters, format_parameters
from sd2_app.api.requests import ETA_SAMPLERS, Sampling, numbered_seeds


@dataclass
class PipelineOutput:
    """Images (each with `info["parameters"]`), the final latents and what the caller must be told."""

    images: list[Image.Image]
    latents: torch.Tensor  # (B, 4, h, w) scaled latents before decoding
    width: int  # effective output size in pixels
    height: int
    warnings: list[str] = field(default_factory=list)
    mask_image: Image.Image | None = None  # inpainting: the binarised mask actually used
    depth_image: Image.Image | None = None  # depth-to-image: the depth map actually used (white = near)


def sampling_settings(sampling: Sampling, *, width: int, height: int, model: str, model_hash: str = "") -> Settings:
    """The settings every task shares, in A1111's order ("Model hash" for a checkpoint file only: a repo has no one
    file to hash). "Eta DDIM" only where the sampler uses it (`ETA_SAMPLERS`),
    so the text never claims a setting that did not change the image; A1111 names DDIM's eta so (modules/
    sd_samplers_timesteps.py, `initialize`), its "Eta" being the k-diffusion samplers' ancestral eta."""
    settings: Settings = {
        keys.STEPS: sampling.steps,
        keys.SAMPLER: sampling.sampler,
        keys.SCHEDULE_TYPE: sampling.schedule,
        keys.CFG_SCALE: sampling.cfg_scale,
        keys.SEED: sampling.seed,
        keys.SIZE: f"{width}x{height}",
        **({keys.MODEL_HASH: model_hash} if model_hash else {}),
        keys.MODEL: model,
    }
    if sampling.guidance_rescale > 0:
        settings[keys.GUIDANCE_RESCALE] = sampling.guidance_rescale
    if sampling.eta > 0 and sampling.sampler in ETA_SAMPLERS:
        settings[keys.ETA_DDIM] = sampling.eta
    return settings


def label_images(
    images: list[Image.Image], prompt: str, negative_prompt: str, settings: Settings
) -> list[Image.Image]:
    """Attach the parameters text to each image: with its position when the batch has several, and its own seed
    (and variation seed) where `settings` give the first image's (api/requests.py, `numbered_seeds`)."""
    seeds: list[tuple[int, int | None]] = []
    if isinstance(settings.get(keys.SEED), int):
        variation = settings.get(keys.VARIATION_SEED)
        seeds = numbered_seeds(settings[keys.SEED], variation if isinstance(variation, int) else None, len(images))
    for index, image in enumerate(images):
        extra: Settings = {}
        if len(images) > 1:
            extra = {keys.BATCH_SIZE: len(images), keys.BATCH_POS: index}
        own: Settings = {}
        if seeds:
            seed, variation = seeds[index]
            own = {keys.SEED: seed} if variation is None else {keys.SEED: seed, keys.VARIATION_SEED: variation}
        attach_parameters(image, format_parameters(prompt, negative_prompt, {**settings, **own, **extra}))
    return images
