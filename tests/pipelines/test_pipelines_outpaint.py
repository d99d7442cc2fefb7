"""Outpainting on the tiny inpainting checkpoint: canvas, mask, fills, paste-back and metadata."""

from __future__ import annotations

import numpy as np
import pytest
from tests.pipeline_fixtures import ComponentCache, sample_image
from PIL import Image

from sd2_app.api.requests import InpaintRequest, OutpaintRequest, Sampling
from sd2_app.errors import Cancelled
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.masks import feather
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.outpaint import EDGE_NOISE_STD, extend_canvas, outpaint


def _strips(width: int, height: int, left: int, right: int, up: int, down: int) -> np.ndarray:
    """The expected mask, written independently: 255 everywhere but the original's box."""
    mask = np.full((height + up + down, width + left + right), 255, np.uint8)
    mask[up : up + height, left : left + width] = 0
    return mask


@pytest.mark.parametrize("fill", ["edge", "blur", "solid"])
def test_extend_canvas_keeps_the_image_and_masks_exactly_the_added_strips(fill: str) -> None:
    image = sample_image(40, 24)
    canvas, mask = extend_canvas(image, 16, 8, 0, 24, fill, seed=3)
    assert canvas.size == (64, 48) and mask.size == (64, 48) and mask.mode == "L"
    assert np.array_equal(np.asarray(mask), _strips(40, 24, 16, 8, 0, 24))
    assert np.array_equal(np.asarray(canvas)[0:24, 16:56], np.asarray(image))
    strip = np.asarray(canvas, dtype=np.float32)[30:48, 0:16]  # bottom-left corner, all new
    if fill == "solid":
        assert np.array_equal(strip, np.broadcast_to(np.asarray(image, np.float32).mean((0, 1)).round(), strip.shape))
    if fill == "edge":  # the corner pixel repeated, plus seeded noise of the documented spread
        noise = strip - np.asarray(image, np.float32)[23, 0]
        assert abs(float(noise.std()) - EDGE_NOISE_STD) < 3 and abs(float(noise.mean())) < 3
    if fill == "blur":  # smooth: neighbouring new pixels differ by little
        assert float(np.abs(np.diff(strip, axis=1)).max()) < 8


def test_edge_noise_follows_the_seed() -> None:
    image = sample_image(16, 16)
    first, again, other = (np.asarray(extend_canvas(image, 8, 0, 0, 0, "edge", s)[0]) for s in (1, 1, 2))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_outpaint_is_inpainting_of_the_extended_canvas_with_the_original_pasted_back(components: ComponentCache) -> None:
    image = sample_image(40, 32)
    sampling = Sampling(steps=3, seed=5)
    request = OutpaintRequest("a field", image, left=24, right=0, up=0, down=0, mask_blur=8, sampling=sampling)
    seen: list[tuple[int, int]] = []
    out = outpaint(components("sd2-inpainting"), request, on_step=lambda i, n, x: seen.append((i, n)))
    result = np.asarray(out.images[0])
    assert out.images[0].size == (64, 32) and seen == [(1, 3), (2, 3), (3, 3)]
    # The known region, pixel for pixel.
    assert np.array_equal(result[:, 24:], np.asarray(image))
    # The mask is exactly the added strip; feathering only lowers the weight inside it, near the seam.
    expected = _strips(40, 32, 24, 0, 0, 0)
    assert np.array_equal(np.asarray(out.mask_image), expected)
    weight = feather(out.mask_image, 8)
    assert float(weight[:, 24:].max()) == 0.0 and float(weight[:, :12].min()) == 1.0
    # Same images as the inpainting pipeline on the canvas and mask (the one loop, reused).
    canvas, mask = extend_canvas(image, 24, 0, 0, 0, "edge", 5)
    direct = inpaint(components("sd2-inpainting"), InpaintRequest("a field", canvas, mask, mask_blur=8,
                                                                  sampling=sampling))
    assert np.array_equal(result, np.asarray(direct.images[0]))
    # The strip is painted: far from the seam it is the model's output, not the fill.
    assert np.abs(result[:, :12].astype(int) - np.asarray(canvas)[:, :12]).mean() > 10
    params = parse_parameters(out.images[0].info["parameters"])
    assert params["Prompt"] == "a field" and params["Size"] == "64x32" and params["Seed"] == 5
    assert [params[f"Outpaint {s}"] for s in ("left", "right", "up", "down")] == [24, 0, 0, 0]
    assert params["Outpaint fill"] == "edge" and params["Mask blur"] == 8 and params["Keep unmasked"] is True


def test_outpaint_on_two_sides_keeps_the_middle(components: ComponentCache) -> None:
    image = sample_image(32, 24)
    request = OutpaintRequest("p", image, left=0, right=16, up=8, down=0, fill="solid", mask_blur=0, sampling=Sampling(steps=2, seed=1))
    out = outpaint(components("sd2-inpainting"), request)
    assert out.images[0].size == (48, 32)
    assert np.array_equal(np.asarray(out.images[0])[8:, :32], np.asarray(image))
    assert np.array_equal(np.asarray(out.mask_image), _strips(32, 24, 0, 16, 8, 0))


def test_outpaint_stop(components: ComponentCache) -> None:
    def stop(i: int, n: int, x: object) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        outpaint(components("sd2-inpainting"), OutpaintRequest("p", sample_image(16, 16), left=0, right=0, up=0, down=8,
                                                              sampling=Sampling(steps=2, seed=1)),
                 on_step=stop)


def test_canvas_of_a_transparent_image_is_rgb() -> None:
    canvas, _ = extend_canvas(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), 0, 0, 8, 0, "edge", 0)
    assert canvas.mode == "RGB" and canvas.size == (8, 16)
