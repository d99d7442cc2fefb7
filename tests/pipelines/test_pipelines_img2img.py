"""Image-to-image, inpainting and depth-to-image end to end on the tiny checkpoints, against diffusers."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import (ComponentCache, assert_matches_reference, reference_pipeline, reference_run,
                                    sample_image)
from PIL import Image

from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.depth import depth2img, estimate_depth
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.api.requests import DepthRequest, Img2ImgRequest, InpaintRequest, Sampling

pytest.importorskip("diffusers")



def _mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


@pytest.mark.parametrize(("sampler", "strength", "batch", "eta"), [
    ("Euler a", 0.6, 2, 0.0),
    ("DPM++ 2M", 0.3, 1, 0.0),
    ("DDIM", 0.8, 1, 0.4),
])
def test_img2img_matches_diffusers(
    components: ComponentCache, sampler: str, strength: float, batch: int, eta: float
) -> None:
    image = sample_image(64, 48)
    sampling = Sampling(sampler=sampler, steps=6, seed=5, batch_size=batch, eta=eta)
    ours = img2img(components("sd2-base"), Img2ImgRequest(prompt="oil painting", negative_prompt="photo", image=image,
                                                          strength=strength, sampling=sampling))
    pipe = reference_pipeline("sd2-base", sampler, img2img=True)
    extra = {"eta": eta} if sampler == "DDIM" else {}
    assert_matches_reference(ours, reference_run(
        pipe, 5, prompt="oil painting", negative_prompt="photo", image=image, strength=strength,
        num_inference_steps=6, guidance_scale=7.5, num_images_per_prompt=batch, **extra,
    ))
    assert parse_parameters(ours.images[0].info["parameters"])["Denoising strength"] == strength


def test_img2img_on_v_prediction_counts_only_the_steps_it_runs(components: ComponentCache) -> None:
    steps: list[tuple[int, int]] = []
    request = Img2ImgRequest(prompt="p", image=sample_image(50, 41), strength=0.5,
                             sampling=Sampling(sampler="Euler", steps=8, seed=2))
    out = img2img(components("sd2"), request, on_step=lambda i, n, x: steps.append((i, n)))
    assert steps == [(i, 4) for i in range(1, 5)]  # int(8 * 0.5) steps
    assert out.images[0].size == (48, 40) and (out.width, out.height) == (48, 40)
    assert any("50x41" in w and "48x40" in w for w in out.warnings)


@pytest.mark.parametrize(("sampler", "strength", "batch", "box", "eta", "cfg"), [
    ("DDIM", 1.0, 2, (0, 10, 30, 40), 0.3, 7.5),  # touches the left border
    ("Euler a", 0.7, 1, (20, 0, 64, 20), 0.0, 7.5),  # touches the top and right borders
    ("DPM++ 2M", 1.0, 1, (16, 16, 40, 32), 0.0, 7.5),
    ("Euler", 0.8, 2, (16, 16, 40, 32), 0.0, 1.0),  # guidance off: mask channels not doubled
])
def test_inpaint_matches_diffusers(
    components: ComponentCache, sampler: str, strength: float, batch: int, box: tuple[int, int, int, int],
    eta: float, cfg: float,
) -> None:
    image, mask = sample_image(64, 48), _mask(64, 48, box)
    sampling = Sampling(sampler=sampler, steps=5, seed=7, batch_size=batch, eta=eta, cfg_scale=cfg)
    ours = inpaint(components("sd2-inpainting"), InpaintRequest(
        prompt="a door", negative_prompt="wall", image=image, mask=mask, strength=strength, keep_unmasked=False,
        sampling=sampling))
    pipe = reference_pipeline("sd2-inpainting", sampler)
    extra = {"eta": eta} if sampler == "DDIM" else {}
    assert_matches_reference(ours, reference_run(
        pipe, 7, prompt="a door", negative_prompt="wall", image=image, mask_image=mask, width=64, height=48,
        strength=strength, num_inference_steps=5, guidance_scale=cfg, num_images_per_prompt=batch, **extra,
    ))
    assert np.array_equal(np.asarray(ours.mask_image) > 0, np.asarray(mask) > 127)


def test_inpaint_keeps_unmasked_pixels_exactly(components: ComponentCache) -> None:
    image, mask = sample_image(61, 45), _mask(61, 45, (10, 8, 40, 30))  # not a multiple of 8: worked at 56x40
    request = InpaintRequest(prompt="p", image=image, mask=mask, mask_blur=4, sampling=Sampling(steps=3, seed=1))
    out = inpaint(components("sd2-inpainting"), request)
    result, original = np.asarray(out.images[0]), np.asarray(image)
    outside = np.asarray(mask) == 0
    assert out.images[0].size == (61, 45)
    assert np.array_equal(result[outside], original[outside])
    inside = np.zeros_like(outside)
    inside[14:24, 16:34] = True  # well inside the mask (beyond the feather)
    assert np.abs(result[inside].astype(int) - original[inside]).mean() > 10  # repainted there
    assert any("61x45" in w for w in out.warnings)


def test_inpaint_only_masked_crops_and_pastes_back(components: ComponentCache) -> None:
    image, mask = sample_image(160, 120), _mask(160, 120, (100, 70, 130, 100))
    calls: list[int] = []
    request = InpaintRequest(prompt="p", image=image, mask=mask, only_masked=True, only_masked_padding=8,
                             sampling=Sampling(steps=3, seed=1, batch_size=2))
    out = inpaint(components("sd2-inpainting"), request, on_step=lambda i, n, x: calls.append(x.shape[-1]))
    native = 64 // 8  # the tiny UNet's sample_size: the crop is worked at the model's resolution
    assert calls == [native] * 3
    outside = np.asarray(mask) == 0
    for result in out.images:
        assert result.size == (160, 120)
        assert np.array_equal(np.asarray(result)[outside], np.asarray(image)[outside])
        assert np.abs(np.asarray(result)[80:90, 110:120].astype(int) - np.asarray(image)[80:90, 110:120]).mean() > 10
    params = parse_parameters(out.images[0].info["parameters"])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == 8


def test_inpaint_refuses_a_text_to_image_unet(components: ComponentCache) -> None:
    image = sample_image(64, 48)
    with pytest.raises(InvalidRequest, match="not an inpainting checkpoint"):
        inpaint(components("sd2-base"), InpaintRequest(prompt="p", image=image, mask=_mask(64, 48, (0, 0, 8, 8))))


def test_depth_with_user_map_matches_diffusers(components: ComponentCache) -> None:
    image, depth_map = sample_image(64, 48), sample_image(40, 30, seed=2).convert("L")
    sampling = Sampling(sampler="DPM++ 2M", steps=5, seed=9, batch_size=2)
    ours = depth2img(components("sd2-depth"), DepthRequest(prompt="statue", negative_prompt="blur", image=image,
                                                           depth_map=depth_map, strength=0.8, sampling=sampling))
    pipe = reference_pipeline("sd2-depth", "DPM++ 2M")
    depth = torch.from_numpy(np.asarray(depth_map, dtype=np.float32) / 255)[None]  # (1, H, W) like diffusers wants
    assert_matches_reference(ours, reference_run(
        pipe, 9, prompt="statue", negative_prompt="blur", image=image, depth_map=depth, strength=0.8,
        num_inference_steps=5, guidance_scale=7.5, num_images_per_prompt=2,
    ))
    assert ours.depth_image is not None and ours.depth_image.size == (64, 48)


def test_depth_estimate_is_dpt_on_the_input(components: ComponentCache) -> None:
    image = sample_image(64, 48)
    c = components("sd2-depth")
    ours = estimate_depth(c, image)
    pixels = c.depth_processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = c.depth_estimator(pixels).predicted_depth
    assert torch.allclose(ours, expected)
    out = depth2img(c, DepthRequest(prompt="p", image=image, strength=0.5, sampling=Sampling(steps=2, seed=1)))
    assert out.depth_image is not None and out.depth_image.mode == "L" and out.depth_image.size == (64, 48)
    assert np.isfinite(out.latents.numpy()).all()


def test_depth_estimated_matches_diffusers(components: ComponentCache) -> None:
    """The DPT path end to end: estimate, resize, normalise, condition, sample, decode."""
    image = sample_image(64, 48, seed=3)
    sampling = Sampling(sampler="DPM++ 2M", steps=4, seed=5)
    ours = depth2img(components("sd2-depth"), DepthRequest(prompt="statue", image=image, strength=0.7,
                                                           sampling=sampling))
    pipe = reference_pipeline("sd2-depth", "DPM++ 2M")
    assert_matches_reference(ours, reference_run(pipe, 5, prompt="statue", image=image, strength=0.7,
                                                 num_inference_steps=4, guidance_scale=7.5))


def test_depth_cancel(components: ComponentCache) -> None:
    def cancel(step: int, total: int, latents: torch.Tensor) -> None:
        raise Cancelled

    request = DepthRequest(prompt="p", image=sample_image(64, 48), depth_map=sample_image(64, 48).convert("L"),
                           sampling=Sampling(steps=4, seed=1))
    with pytest.raises(Cancelled):
        depth2img(components("sd2-depth"), request, on_step=cancel)
