"""Depth maps with more than 8 bits: 16-bit PNGs and 32-bit float TIFFs reach the depth condition at full
precision (validation keeps them as float images), and the result matches diffusers fed the same float map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import (ComponentCache, assert_matches_reference, reference_pipeline, reference_run,
                                    sample_image)
from PIL import Image

from sd2_app.api.requests import DepthRequest, Sampling
from sd2_app.api.validation import validate
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.depth import depth2img, depth_condition
from sd2_app.pipelines.images import grayscale_to_tensor
from tests.ui_doubles import fake_catalog

WIDTH, HEIGHT = 40, 30


def _gradient() -> np.ndarray:
    """A smooth depth ramp spanning 300 of 65535 levels: little more than one 8-bit level."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return 30000 + 250 * x / (WIDTH - 1) + 50 * y / (HEIGHT - 1)


def _sixteen_bit(path) -> Image.Image:
    Image.fromarray(np.round(_gradient()).astype(np.uint16)).save(path)  # a 16-bit grayscale PNG
    opened = Image.open(path)
    assert opened.mode in ("I;16", "I")
    return opened


def _validated_map(depth_map: Image.Image) -> Image.Image:
    request = DepthRequest(prompt="p", image=sample_image(64, 48), checkpoint="sd2-depth", depth_map=depth_map)
    checked, _ = validate(request, fake_catalog())
    return checked.depth_map


def test_16_bit_map_gives_a_finer_condition_than_its_8_bit_rounding(tmp_path) -> None:
    sixteen = _validated_map(_sixteen_bit(tmp_path / "depth16.png"))
    eight = _validated_map(Image.fromarray(np.round(_gradient() / 65535 * 255).astype(np.uint8)))
    assert sixteen.mode == "F"
    assert np.array_equal(np.asarray(sixteen), (np.round(_gradient()) / 65535).astype(np.float32))

    exact = depth_condition(torch.from_numpy(_gradient()).float()[None], (6, 8))  # the ramp before any rounding
    condition16 = depth_condition(grayscale_to_tensor(sixteen), (6, 8))
    condition8 = depth_condition(grayscale_to_tensor(eight), (6, 8))
    assert len(np.unique(np.asarray(eight))) == 2 and len(np.unique(np.asarray(sixteen))) > 250
    assert float((condition16 - exact).abs().max()) < 0.01
    assert float((condition8 - exact).abs().max()) > 0.3
    assert not torch.equal(condition16, condition8)


def test_16_bit_depth_matches_diffusers_fed_the_same_float_map(components: ComponentCache, tmp_path) -> None:
    image = sample_image(64, 48)
    sampling = Sampling(sampler="DPM++ 2M", steps=5, seed=9)
    request = DepthRequest(prompt="statue", image=image, depth_map=_sixteen_bit(tmp_path / "d.png"),
                           checkpoint="sd2-depth", strength=0.8, sampling=sampling)
    checked, _ = validate(request, fake_catalog())
    ours = depth2img(components("sd2-depth"), checked)
    depth = torch.from_numpy(np.round(_gradient()).astype(np.float32) / 65535)[None]  # (1, H, W)
    pipe = reference_pipeline("sd2-depth", "DPM++ 2M")
    assert_matches_reference(ours, reference_run(pipe, 9, prompt="statue", image=image, depth_map=depth, strength=0.8,
                                                 num_inference_steps=5, guidance_scale=7.5))
    assert ours.depth_image.mode == "L" and ours.depth_image.size == (64, 48)


def test_float_tiff_keeps_its_values_and_non_finite_depths_are_refused(tmp_path) -> None:
    values = (_gradient() / 7.0).astype(np.float32)  # metres, say: any range
    Image.fromarray(values).save(tmp_path / "depth.tif")
    tiff = _validated_map(Image.open(tmp_path / "depth.tif"))
    assert tiff.mode == "F" and np.array_equal(np.asarray(tiff), values)
    values[3, 4] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(InvalidRequest, match="^The depth map has NaN or infinite values; save it with finite depths.$"):
        _validated_map(Image.open(tmp_path / "nan.tif"))
