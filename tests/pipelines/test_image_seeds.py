"""Each image of a batch is drawn from its own seed, numbered as A1111 numbers them (sd2_app/api/requests.py,
`numbered_seeds`): image x of a batch at seed s is the image seed s + x makes alone (with a variation seed in use:
seed s, variation seed v + x), in every task, and its parameters text names that seed.

The UNet here runs each image's rows as a call of their own (`ImagewiseUNet`), as the image's solo run calls it,
so the batch's arithmetic is the solo runs' and the comparison is exact: the CPU's fp32 kernels are not
batch-invariant (tests/pipelines/test_batch.py's docstring measures that part). diffusers' parity for batches
(the tasks' parity tests) checks the same numbering against diffusers' own single-image runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from tests.pipeline_fixtures import ComponentCache, sample_image

from sd2_app.api.requests import (HiresFix, Img2ImgRequest, InpaintRequest, Sampling, SeedExtras, Txt2ImgRequest,
                                  UpscaleRequest, numbered_seeds)
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.pipelines.upscale import upscale


class ImagewiseUNet(torch.nn.Module):
    """The UNet called once per image on that image's own rows ([uncond; cond] when guided)."""

    def __init__(self, unet: torch.nn.Module, images: int) -> None:
        super().__init__()
        self.unet, self.images = unet, images

    @property
    def config(self) -> object:
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep: Any, context: torch.Tensor,
                class_labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        guided = sample.shape[0] == 2 * self.images
        outputs = []
        for image in range(self.images):
            rows = [image, self.images + image] if guided else [image]
            step = timestep[rows] if isinstance(timestep, torch.Tensor) and timestep.ndim else timestep
            labels = None if class_labels is None else class_labels[rows]
            outputs.append(self.unet(sample[rows], step, context[rows], labels, **kwargs))
        if not guided:
            return torch.cat(outputs)
        halves = [output.chunk(2) for output in outputs]
        return torch.cat([uncond for uncond, _ in halves] + [cond for _, cond in halves])


def _mask() -> Image.Image:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 8:48] = 255
    return Image.fromarray(mask)


Run = Callable[[Any, Any], PipelineOutput]
HIRES = HiresFix(upscaler="Latent", scale=1.5, steps=3, denoising_strength=0.6)
CASES: dict[str, tuple[str, Run, Any]] = {
    "txt2img, ancestral": ("sd2-base", txt2img, Txt2ImgRequest(
        "a red fox", width=64, height=48, sampling=Sampling(sampler="Euler a", steps=4, seed=40, batch_size=3))),
    "txt2img, variation seed and seed resize": ("sd2-base", txt2img, Txt2ImgRequest(
        "a red fox", width=64, height=48, seed_extras=SeedExtras(70, 0.4, (48, 64)),
        sampling=Sampling(sampler="DPM++ 2M SDE", steps=3, seed=40, batch_size=2))),
    "txt2img, hires fix": ("sd2-base", txt2img, Txt2ImgRequest(
        "a red fox", width=64, height=64, hires=HIRES,
        sampling=Sampling(sampler="Euler a", steps=3, seed=40, batch_size=2))),
    "img2img": ("sd2-base", img2img, Img2ImgRequest(
        "a castle", sample_image(64, 48), strength=0.6,
        sampling=Sampling(sampler="Euler a", steps=5, seed=40, batch_size=2))),
    "inpaint, latent noise": ("sd2-inpainting", inpaint, InpaintRequest(
        "a door", sample_image(64, 64), _mask(), strength=0.7, masked_content="latent noise",
        sampling=Sampling(sampler="Euler a", steps=4, seed=40, batch_size=2))),
    "upscale": ("x4-upscaler", upscale, UpscaleRequest(
        "sharp photo", image=sample_image(24, 16), noise_level=30,
        sampling=Sampling(sampler="DDIM", steps=3, eta=0.5, seed=40, batch_size=2))),
}


def _alone(request: Any, seed: int, variation: int | None) -> Any:
    """`request` as the single image of that seed (and variation seed)."""
    alone = replace(request, sampling=replace(request.sampling, seed=seed, batch_size=1))
    if variation is not None:
        alone = replace(alone, seed_extras=replace(alone.seed_extras, variation_seed=variation))
    return alone


@pytest.mark.parametrize("case", list(CASES))
def test_each_image_of_a_batch_is_the_image_its_seed_makes_alone(components: ComponentCache, case: str) -> None:
    kind, run, request = CASES[case]
    c = components(kind)
    count = request.sampling.batch_size
    batch = run(replace(c, unet=ImagewiseUNet(c.unet, count)), request)
    extras = getattr(request, "seed_extras", SeedExtras())
    seeds = numbered_seeds(40, extras.variation_seed if extras.variation_strength > 0 else None, count)
    assert seeds == ([(40, 70), (40, 71)] if extras.variation_strength > 0 else [(40 + x, None) for x in range(count)])
    assert len(batch.images) == count
    for index, (seed, variation) in enumerate(seeds):
        alone = run(replace(c, unet=ImagewiseUNet(c.unet, 1)), _alone(request, seed, variation))
        assert torch.equal(batch.latents[index : index + 1], alone.latents), (case, index)
        # the VAE decodes the whole batch at once: its fp32 kernels may flip a rounding (module docstring)
        gap = np.abs(np.asarray(batch.images[index], dtype=int) - np.asarray(alone.images[0], dtype=int))
        assert gap.max() <= 1, (case, index, gap.max())
        params = parse_parameters(batch.images[index].info["parameters"])
        assert params["Seed"] == seed and params.get("Variation seed") == variation
        assert (params["Batch size"], params["Batch pos"]) == (count, index)
    assert not torch.equal(batch.latents[0], batch.latents[1])  # the images differ
