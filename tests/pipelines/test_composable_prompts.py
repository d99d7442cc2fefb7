"""A1111's composable prompts (AND and part weights) through the pipelines, against a reference loop built from
diffusers' own components: its text encoder reads each part, its UNet sees [uncond; each part] and its scheduler
steps on A1111's sum (modules/sd_samplers_cfg_denoiser.py, `combine_denoised`): uncond + sum of (cond - uncond) x
(weight x cfg), diffusers' `rescale_noise_cfg` after it where asked, against the guidance at scale 1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sd2_app.api.requests import Img2ImgRequest, Sampling, Txt2ImgRequest
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.txt2img import txt2img
from tests.pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, sample_image

pytest.importorskip("diffusers")

TextsAt = Callable[[int], list[str]]  # step -> [negative prompt, part 1, ..., part K]


def composable_reference(pipe: Any, texts_at: TextsAt, weights: list[float], *, cfg: float, steps: int, seed: int,
                         width: int, height: int, rescale: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' txt2img loop (StableDiffusionPipeline.__call__'s order of draws and steps) with the UNet batch
    and the guidance of a composable prompt; the texts of each step from `texts_at`."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator().manual_seed(seed)
    embeds: dict[str, torch.Tensor] = {}

    def context(step: int) -> torch.Tensor:
        for text in texts_at(step):
            if text not in embeds:
                embeds[text] = pipe.encode_prompt(text, "cpu", 1, False)[0]
        return torch.cat([embeds[text] for text in texts_at(step)])

    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    shape = (1, 4, height // 8, width // 8)
    latents = randn_tensor(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    copies = 1 + len(weights)
    with torch.no_grad():
        for step, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(torch.cat([latents] * copies), t)
            out = pipe.unet(x_in, t, encoder_hidden_states=context(step)).sample
            uncond, *conds = out.chunk(copies)
            pred = uncond + (weights[0] * cfg) * (conds[0] - uncond)
            for weight, cond in zip(weights[1:], conds[1:]):
                pred = pred + (weight * cfg) * (cond - uncond)
            if rescale > 0:
                at_scale_one = uncond + sum(w * (c - uncond) for w, c in zip(weights, conds))
                pred = rescale_noise_cfg(pred, at_scale_one, guidance_rescale=rescale)
            latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return latents, pipe.image_processor.postprocess(image, output_type="np")


def _txt2img(prompt: str, negative: str, sampler: str, *, cfg: float = 7.5, rescale: float = 0.0,
             steps: int = 5) -> Txt2ImgRequest:
    sampling = Sampling(sampler=sampler, steps=steps, cfg_scale=cfg, guidance_rescale=rescale, seed=77)
    return Txt2ImgRequest(prompt=prompt, negative_prompt=negative, width=48, height=40, sampling=sampling)


# (checkpoint, sampler, prompt, the reference's texts of step i, weights, guidance rescale); A1111's schedules count
# the UNet's calls from 0, and call 0 and 1 both read an alternation's first word (README, Prompts)
CASES = [
    ("sd2-base", "Euler", "a red fox AND a blue sky :0.6 AND snow:1.5",
     lambda i: ["blurry", "a red fox", "a blue sky", "snow"], [1.0, 0.6, 1.5], 0.0),
    ("sd2", "DPM++ 2M", "a castle AND fog:-0.4",  # v-prediction, a negative weight, the rescale
     lambda i: ["blurry", "a castle", "fog"], [1.0, -0.4], 0.7),
    ("sd2-base", "Euler", "a [cat:dog:2] AND [sun|moon] :0.5",  # each part its own prompt editing / alternation
     lambda i: ["blurry", "a cat" if i <= 2 else "a dog", "sun" if max(i, 1) % 2 else "moon"], [1.0, 0.5], 0.0),
]


@pytest.mark.parametrize(("kind", "sampler", "prompt", "texts_at", "weights", "rescale"), CASES,
                         ids=[case[2] for case in CASES])
def test_composable_txt2img_matches_the_reference(components: ComponentCache, kind: str, sampler: str, prompt: str,
                                                  texts_at: TextsAt, weights: list[float], rescale: float) -> None:
    ours = txt2img(components(kind), _txt2img(prompt, "blurry", sampler, rescale=rescale))
    pipe = reference_pipeline(kind, sampler)
    assert_matches_reference(ours, composable_reference(pipe, texts_at, weights, cfg=7.5, steps=5, seed=77,
                                                        width=48, height=40, rescale=rescale))


def test_a_part_weight_scales_the_guidance_exactly(components: ComponentCache) -> None:
    """One part of weight 2 at CFG 3.75 is the prompt at CFG 7.5, bit for bit (the same sum, one UNet batch of the
    same shape); "x AND x" is one part of weight 2."""
    c = components("sd2-base")
    plain = txt2img(c, _txt2img("a red fox", "blurry", "Euler", cfg=7.5))
    for prompt in ("a red fox:2", "a red fox AND a red fox"):
        weighted = txt2img(c, _txt2img(prompt, "blurry", "Euler", cfg=3.75))
        assert torch.equal(weighted.latents, plain.latents)
        assert [np.asarray(im).tobytes() for im in weighted.images] == [np.asarray(im).tobytes() for im in plain.images]
    assert not torch.equal(txt2img(c, _txt2img("a red fox:1.5", "blurry", "Euler", cfg=3.75)).latents, plain.latents)


def test_parts_reach_image_to_image_and_the_extra_channels(components: ComponentCache) -> None:
    """Image to image runs the parts too; the inpainting UNet's extra channels are repeated for every part's rows.
    A part of weight 1 beside itself ("x AND x" at half the CFG) gives the plain prompt's image."""
    image = sample_image(48, 40)
    for kind in ("sd2-base", "sd2-inpainting"):
        c = components(kind)
        if kind == "sd2-inpainting":
            from sd2_app.api.requests import InpaintRequest
            from sd2_app.pipelines.inpaint import inpaint
            from PIL import Image

            mask = Image.new("L", (48, 40), 0)
            mask.paste(255, (8, 8, 32, 32))

            def run(prompt: str, cfg: float) -> Any:
                return inpaint(c, InpaintRequest(image=image, mask=mask, prompt=prompt, negative_prompt="dull",
                                                 sampling=Sampling(sampler="Euler", steps=4, cfg_scale=cfg, seed=5)))
        else:
            def run(prompt: str, cfg: float) -> Any:
                return img2img(c, Img2ImgRequest(image=image, prompt=prompt, negative_prompt="dull", strength=0.75,
                                                 sampling=Sampling(sampler="Euler", steps=4, cfg_scale=cfg, seed=5)))
        plain, doubled = run("a hill", 8.0), run("a hill AND a hill", 4.0)
        assert torch.equal(plain.latents, doubled.latents), kind
        assert not torch.equal(run("a hill AND the sea", 8.0).latents, plain.latents), kind


def test_parts_without_guidance_are_refused(components: ComponentCache) -> None:
    with pytest.raises(InvalidRequest, match="^The prompt's parts joined by AND need classifier-free guidance"):
        txt2img(components("sd2-base"), _txt2img("a AND b", "", "Euler", cfg=1.0))
