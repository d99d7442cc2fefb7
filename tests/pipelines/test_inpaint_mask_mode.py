"""Inpainting's Mask mode (A1111's "Inpaint masked" / "Inpaint not masked") on the tiny inpainting checkpoint: the
inverted mode is the plain mode run on the inverted mask, number for number, and says so in the parameters text."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from sd2_app.api.requests import InpaintRequest, Sampling
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.metadata import parse_parameters
from tests.pipeline_fixtures import ComponentCache, sample_image

BOX = (16, 24, 48, 40)  # the mask's white box (left, top, right, bottom) on the 64x64 image


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, BOX)
    return mask


@pytest.mark.parametrize("only_masked", [False, True], ids=["whole picture", "only masked"])
def test_inpaint_not_masked_repaints_the_rest_as_the_inverted_mask_would(components: ComponentCache,
                                                                           only_masked: bool) -> None:
    checkpoint = components("sd2-inpainting")

    def run(mask: Image.Image, mode: str):
        request = InpaintRequest("a garden", sample_image(64, 64), mask, strength=0.7, only_masked=only_masked,
                                 only_masked_padding=8, mask_mode=mode,
                                 sampling=Sampling(sampler="Euler a", steps=2, seed=11, batch_size=2))
        return inpaint(checkpoint, request)

    inverted = run(_mask(), "Inpaint not masked")
    plain = run(ImageOps.invert(_mask()), "Inpaint masked")
    assert inverted.latents.shape == plain.latents.shape == (2, 4, 8, 8)
    assert inverted.latents.equal(plain.latents)
    for ours, theirs in zip(inverted.images, plain.images, strict=True):
        assert ours.tobytes() == theirs.tobytes()
        # The white box is what is kept: its pixels are the input's (the paste-back feathers inward, into the rest).
        assert ours.crop(BOX).tobytes() == sample_image(64, 64).crop(BOX).tobytes()
    assert inverted.mask_image.tobytes() == ImageOps.invert(_mask()).tobytes()  # the mask used, shown beside
    assert parse_parameters(inverted.images[0].info["parameters"])["Mask mode"] == "Inpaint not masked"
    assert "Mask mode" not in parse_parameters(plain.images[0].info["parameters"])  # A1111 writes the inverted only
    assert not np.array_equal(np.asarray(inverted.images[0]), np.asarray(run(_mask(), "Inpaint masked").images[0]))
