"""Inpainting's masked content (A1111's "fill", "original", "latent noise", "latent nothing") on the tiny inpainting
checkpoint: the image the start latents are encoded from and the start latents themselves, inside and outside the
mask, and the fill itself (pipelines/mask_fill.py) on numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sd2_app.api.requests import InpaintRequest, Sampling
from sd2_app.pipelines import img2img as img2img_module
from sd2_app.pipelines.images import preprocess_image
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.mask_fill import fill_from_surroundings as torch_fill
from sd2_app.pipelines.metadata import parse_parameters
from tests.mask_fill_reference import reference_fill
from tests.pipeline_fixtures import ComponentCache, sample_image

HOLE = (16, 24, 48, 40)  # the repainted box (left, top, right, bottom) of the 64x64 tests: latents 2:6 x 3:5


def _mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, HOLE)
    return mask


def _hole(size: int = 64) -> np.ndarray:
    return np.asarray(_mask(size)) > 0


def fill_from_surroundings(pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The pipelines' fill (torch, on the CPU here) on numpy arrays."""
    return torch_fill(torch.from_numpy(pixels), torch.from_numpy(hole)).numpy()


def _holes(height: int, width: int) -> dict[str, np.ndarray]:
    """Hole shapes the fill meets: an inpainting box and blob inside, and outpainting's strips along the borders."""
    rows, cols = np.mgrid[:height, :width]
    box = np.zeros((height, width), bool)
    box[height // 4 : height // 2, width // 3 : width * 3 // 4] = True
    blob = (rows - height * 0.6) ** 2 / (height * 0.3) ** 2 + (cols - width * 0.4) ** 2 / (width * 0.2) ** 2 < 1
    strips = np.ones((height, width), bool)
    strips[height // 8 : height - 3, width // 5 : width - width // 6] = False  # four strips, uneven widths
    corner = (rows < height // 3) & (cols >= width // 2)  # touches the top and right edges
    return {"box": box, "blob": blob, "strips": strips, "corner": corner}


@pytest.mark.parametrize("size", [(64, 64), (77, 130), (160, 256), pytest.param((512, 384), marks=pytest.mark.slow),
                                  pytest.param((200, 1000), marks=pytest.mark.slow)])
def test_the_torch_fill_equals_the_numpy_fill_it_replaced(size: tuple[int, int]) -> None:
    """Commit 4a251eb's numpy fill (tests/mask_fill_reference.py) and the torch one agree to within float32
    rounding (max abs difference < 1e-4 on 0..1 pixels), and the known pixels come back bit for bit."""
    height, width = size
    rng = np.random.default_rng(height * width)
    smooth = np.cumsum(rng.uniform(0, 1, (height, width, 3)), axis=1, dtype=np.float32) / width  # gradients
    pixels = np.where(rng.uniform(0, 1, (height, width, 1)) < 0.1, rng.uniform(0, 1, (height, width, 3)), smooth)
    pixels = pixels.astype(np.float32)
    for name, hole in _holes(height, width).items():
        ours, theirs = fill_from_surroundings(pixels, hole), reference_fill(pixels, hole)
        assert np.abs(ours - theirs).max() < 1e-4, name
        assert np.array_equal(ours[~hole], pixels[~hole]), name


def test_fill_paints_a_hole_from_its_surroundings_and_keeps_every_other_pixel() -> None:
    hole = _hole()
    flat = np.empty((64, 64, 3), np.float32)
    flat[...] = (0.25, -0.5, 0.75)
    flat[hole] = np.random.default_rng(1).uniform(-1, 1, (int(hole.sum()), 3))  # what the hole held goes
    out = fill_from_surroundings(flat, hole)
    assert np.array_equal(out[~hole], flat[~hole])
    assert np.abs(out[hole] - (0.25, -0.5, 0.75)).max() < 1e-4  # the one colour around it

    halves = np.empty((64, 64, 3), np.float32)
    halves[:, :32], halves[:, 32:] = 1.0, -1.0  # the hole straddles the two halves' border at x = 32
    row = fill_from_surroundings(halves, hole)[32, 16:48, 0]
    assert row[0] > 0.9 and row[-1] < -0.9 and np.all(np.diff(row) < 0)  # from one side's colour to the other's
    assert abs(float(row[15] + row[16])) < 0.05  # symmetric about the border

    everything = np.ones((64, 64), bool)
    assert np.array_equal(fill_from_surroundings(flat, everything), flat)  # nothing known: nothing to fill from


@pytest.mark.slow  # the first "meta" run loads torch's meta kernels: ~9 s on this CPU
def test_the_fill_runs_where_its_tensors_are_and_reads_nothing_back_to_the_host() -> None:
    """On the "meta" device every value is unknown, so any host read (numpy, .item(), a Python branch on a
    tensor) raises: the fill stays on the pipeline's device (the GPU, in a real run) from start to end."""
    pixels = torch.empty(96, 130, 3, device="meta")
    filled = torch_fill(pixels, torch.empty(96, 130, dtype=torch.bool, device="meta"))
    assert (filled.device.type, filled.shape, filled.dtype) == ("meta", (96, 130, 3), torch.float32)


class _Spy:
    """The images the start latents are encoded from, and the encoded latents before the strength's noise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encoded: list[torch.Tensor] = []
        self.starts: list[torch.Tensor] = []
        encode, add_noise = img2img_module.encode, img2img_module.add_noise

        def spy_encode(vae, image, generator, rows=None):
            self.encoded.append(image.clone())
            return encode(vae, image, generator, rows)

        def spy_add_noise(init, noise, sigma):
            self.starts.append(init.clone())
            return add_noise(init, noise, sigma)

        monkeypatch.setattr(img2img_module, "encode", spy_encode)
        monkeypatch.setattr(img2img_module, "add_noise", spy_add_noise)


def _run(components: ComponentCache, content: str, strength: float = 0.5, seed: int = 4):
    request = InpaintRequest("a door", sample_image(64, 64), _mask(), strength=strength, masked_content=content,
                             sampling=Sampling(sampler="Euler", steps=2, seed=seed, batch_size=2))
    return inpaint(components("sd2-inpainting"), request)


def test_each_masked_content_starts_the_masked_area_as_a1111_defines_it(components: ComponentCache,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    outputs = {content: _run(components, content) for content in ("original", "fill", "latent noise", "latent nothing")}
    image = preprocess_image(sample_image(64, 64))[0].permute(1, 2, 0).numpy()
    hole = _hole()
    filled = fill_from_surroundings(image, hole)
    original, fill, noise, nothing = (e[0].permute(1, 2, 0).numpy() for e in spy.encoded)
    assert np.array_equal(original, image)  # "original": the image as it is
    for fed in (fill, noise, nothing):  # the three others: the masked area painted from around it (A1111 too)
        assert np.array_equal(fed, filled)
        assert np.array_equal(fed[~hole], image[~hole]) and np.abs(fed[hole] - image[hole]).mean() > 0.1

    latent_hole = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    latent_hole[..., 3:5, 2:6] = True  # HOLE / 8 (rows 24:40, columns 16:48)
    area = latent_hole.expand(2, 4, 8, 8)
    start_original, start_fill, start_noise, start_nothing = spy.starts
    assert start_fill.shape == (2, 4, 8, 8)
    assert torch.equal(start_nothing[~area], start_fill[~area]) and torch.equal(start_noise[~area], start_fill[~area])
    assert torch.count_nonzero(start_nothing[area]) == 0  # "latent nothing": zeros
    # "latent noise": unit noise drawn right after the posterior sample, each image's from its own seed (4, 5)
    expected = []
    for seed in (4, 5):
        generator = torch.Generator().manual_seed(seed)
        torch.randn((1, 4, 8, 8), generator=generator)  # the image's posterior sample
        expected.append(torch.randn((1, 4, 8, 8), generator=generator))
    expected = torch.cat(expected)
    assert torch.equal(start_noise[area], expected[area])
    assert not torch.equal(start_original[area], start_fill[area])  # the fill changed what was encoded

    for content, output in outputs.items():
        params = parse_parameters(output.images[0].info["parameters"])
        assert params.get("Masked content") == (None if content == "original" else content)


def test_at_strength_1_the_masked_content_makes_no_difference(components: ComponentCache) -> None:
    original, fill = (_run(components, content, strength=1.0) for content in ("original", "fill"))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(original.images, fill.images))
    assert "Masked content" not in fill.images[0].info["parameters"]
