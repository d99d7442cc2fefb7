"""Variation seeds, seed resize and seamless tiling on the tiny checkpoints.

Variation and resize: the start noise is built here independently (torch.randn and a slerp written out
with numpy) and fed to diffusers' pipeline as its `latents`; our run with the options must match it.
Tiling: the wrap-around seam is as smooth as the interior, the networks are exactly equivariant to circular
shifts while it is on, and nothing of it is left afterwards.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, reference_run

from sd2_app.api.requests import Sampling, SeedExtras, Txt2ImgRequest
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.seamless import circular_padding
from sd2_app.pipelines.txt2img import txt2img

SAMPLING = Sampling(sampler="DPM++ 2M", steps=4, seed=21)


def _run(components: ComponentCache, **fields: object) -> object:
    request = Txt2ImgRequest(prompt="a red house", width=64, height=64, sampling=SAMPLING)
    return txt2img(components("sd2-base"), replace(request, **fields))


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shoemake's slerp of two flattened vectors, in float64."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    omega = np.arccos(np.clip(a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64), -1, 1))
    mixed = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return mixed.astype(np.float32).reshape(a.shape)


def test_variation_strength_0_is_the_seed_and_1_is_the_variation_seed(components: ComponentCache) -> None:
    plain = _run(components)
    zero = _run(components, seed_extras=SeedExtras(variation_seed=99, variation_strength=0.0))
    one = _run(components, seed_extras=SeedExtras(variation_seed=99, variation_strength=1.0))
    other_seed = _run(components, sampling=replace(SAMPLING, seed=99))
    assert torch.equal(zero.latents, plain.latents)
    assert torch.equal(one.latents, other_seed.latents)
    assert not torch.equal(one.latents, plain.latents)
    params = parse_parameters(one.images[0].info["parameters"])
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == (21, 99, 1.0)


def test_variation_strength_half_is_the_slerp_of_the_two_noises(components: ComponentCache) -> None:
    ours = _run(components, seed_extras=SeedExtras(variation_seed=99, variation_strength=0.5))
    noise = _slerp(0.5, _randn((1, 4, 8, 8), 21).numpy(), _randn((1, 4, 8, 8), 99).numpy())
    pipe = reference_pipeline("sd2-base", "DPM++ 2M")
    assert_matches_reference(ours, reference_run(pipe, 21, prompt="a red house", width=64, height=64,
                                                 num_inference_steps=4, guidance_scale=7.5,
                                                 latents=torch.from_numpy(noise)))


@pytest.mark.parametrize(("size", "resize_from", "placed"), [
    ((96, 64), (64, 64), (slice(None), slice(2, 10))),  # wider: the 8x8 noise in the middle columns
    ((64, 64), (128, 64), None),  # narrower: the middle 8 columns of an 8x16 draw
])
def test_seed_resize_centres_the_noise_of_the_old_size(
    components: ComponentCache, size: tuple[int, int], resize_from: tuple[int, int], placed: object
) -> None:
    width, height = size
    ours = _run(components, width=width, height=height, seed_extras=SeedExtras(resize_from=resize_from))
    small = _randn((1, 4, resize_from[1] // 8, resize_from[0] // 8), 21)
    if placed is None:
        noise = small[..., 4:12]
    else:
        noise = _randn((1, 4, height // 8, width // 8), 21)
        noise[..., 2:10] = small
    pipe = reference_pipeline("sd2-base", "DPM++ 2M")
    assert_matches_reference(ours, reference_run(pipe, 21, prompt="a red house", width=width, height=height,
                                                 num_inference_steps=4, guidance_scale=7.5, latents=noise))
    assert parse_parameters(ours.images[0].info["parameters"])["Seed resize from"] == f"{resize_from[0]}x{resize_from[1]}"


def _seams(image: object) -> list[tuple[float, float]]:
    """For the left/right, then the top/bottom wrap-around seam: (its mean gradient over the steepest interior
    column (row) pair's, the share of interior pairs less steep than the seam)."""
    a = np.asarray(image, dtype=np.float64)
    found = []
    for axis, seam in ((1, np.abs(a[:, 0] - a[:, -1]).mean()), (0, np.abs(a[0] - a[-1]).mean())):
        pairs = np.abs(np.diff(a, axis=axis)).mean(axis=(0, 2) if axis == 1 else (1, 2))  # one per pair
        found.append((float(seam / pairs.max()), float((pairs < seam).mean())))
    return found


def test_tiled_image_edges_continue_each_other(components: ComponentCache) -> None:
    tiled, plain = [], []
    for seed in (1, 2, 3):
        sampling = Sampling(sampler="Euler", steps=4, seed=seed)
        tiled += _seams(_run(components, width=128, height=128, sampling=sampling, tiling=True).images[0])
        plain += _seams(_run(components, width=128, height=128, sampling=sampling).images[0])
    assert max(ratio for ratio, _ in tiled) < 0.85  # every tiled seam is inside the interior's range
    tiled_rank = np.mean([rank for _, rank in tiled])  # 0.36 on the tiny checkpoint: an ordinary pair
    plain_rank = np.mean([rank for _, rank in plain])  # 0.85: the untiled seam is among the steepest
    assert plain_rank - tiled_rank > 0.3, (plain_rank, tiled_rank)


def test_circular_padding_makes_unet_and_decoder_shift_equivariant(components: ComponentCache) -> None:
    c = components("sd2-base")
    x = _randn((1, 4, 16, 16), 3)
    context = _randn((1, 77, c.text_encoder.config.hidden_size), 4)
    t = torch.tensor([500.0])

    def shifted_error(fn: object, rows: int, cols: int, scale: int) -> float:
        """fn(x rolled) against fn(x) rolled by `scale` times as many pixels."""
        out = fn(x)
        rolled = fn(torch.roll(x, shifts=(rows, cols), dims=(2, 3)))
        return float((rolled - torch.roll(out, shifts=(rows * scale, cols * scale), dims=(2, 3))).abs().max())

    def unet(latents: torch.Tensor) -> torch.Tensor:
        return c.unet(latents, t, context)

    def decoder(latents: torch.Tensor) -> torch.Tensor:
        return c.vae.decode(latents)

    with torch.inference_mode():
        with circular_padding(c.unet, c.vae):
            assert shifted_error(unet, 8, 8, 1) < 1e-4  # three stride-2 levels: shifts of 8 latent pixels
            assert shifted_error(decoder, 3, 5, 8) < 1e-4
        assert shifted_error(unet, 8, 8, 1) > 1e-2  # zero padding: the edges differ
        assert shifted_error(decoder, 3, 5, 8) > 1e-2


def test_next_untiled_job_equals_a_clean_run_even_after_a_stopped_tiled_job(components: ComponentCache) -> None:
    clean = _run(components)
    tiled = _run(components, tiling=True)
    assert parse_parameters(tiled.images[0].info["parameters"])["Tiling"] is True
    assert not torch.equal(tiled.latents, clean.latents)

    def stop(done: int, total: int, x0: torch.Tensor) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        txt2img(components("sd2-base"), Txt2ImgRequest(prompt="x", width=64, height=64, sampling=SAMPLING,
                                                        tiling=True), on_step=stop)
    after = _run(components)
    assert torch.equal(after.latents, clean.latents)
    assert np.array_equal(np.asarray(after.images[0]), np.asarray(clean.images[0]))
    c = components("sd2-base")
    modes = {m.padding_mode for net in (c.unet, c.vae) for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    assert modes == {"zeros"}


def test_cuda_graph_key_tells_tiled_from_plain_calls(components: ComponentCache) -> None:
    from sd2_app.accel.graphs.unet import CudaGraphUNet

    c = components("sd2-base")
    wrapped = CudaGraphUNet(c.unet)
    args = (torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 77, 32))
    plain = wrapped.key(*args)
    with circular_padding(wrapped):
        tiled = wrapped.key(*args)
    assert plain != tiled and wrapped.key(*args) == plain


def test_fused_modules_pad_circularly_too() -> None:
    """The accel twins (sub-pixel upsampler, fused resnets) follow the tiling switch like the plain modules."""
    from sd2_app.accel.fused import fuse_modules
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.testing.configs import tiny_vae_config

    torch.manual_seed(0)
    plain = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2"))).eval()
    fused = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2"))).eval()
    fused.load_state_dict(plain.state_dict())
    assert fuse_modules(fused) > 0
    z = _randn((1, 4, 6, 5), 1)
    with torch.no_grad(), circular_padding(plain), circular_padding(fused):
        expected, got = plain.decode(z), fused.decode(z)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    with torch.no_grad():
        assert (fused.decode(z) - expected).abs().max().item() > 1e-2  # and back to zero padding after


@pytest.mark.parametrize(("extras", "message"), [
    (SeedExtras(variation_seed=3, variation_strength=1.5), "Variation strength must be between 0 and 1, got 1.5."),
    (SeedExtras(variation_seed=-7, variation_strength=0.5), "Seed must be between 0 and 4294967295, got -7."),
    (SeedExtras(resize_from=(96, 0)), "Seed resize from needs both a width and a height (0 for both turns it off)."),
    (SeedExtras(resize_from=(4096, 64)), "Seed resize from width must be between 64 and 1024, got 4096."),
])
def test_seed_extras_validation_messages(extras: SeedExtras, message: str) -> None:
    from sd2_app.api.validation import validate
    from sd2_app.errors import InvalidRequest
    from tests.ui_doubles import fake_catalog

    with pytest.raises(InvalidRequest) as error:
        validate(Txt2ImgRequest(prompt="p", checkpoint="sd2-base", seed_extras=extras), fake_catalog())
    assert str(error.value) == message


def test_variation_seed_is_drawn_when_left_random_and_dropped_when_unused() -> None:
    from sd2_app.api.validation import validate
    from tests.ui_doubles import fake_catalog

    drawn, _ = validate(Txt2ImgRequest(prompt="p", checkpoint="sd2-base",
                                       seed_extras=SeedExtras(variation_seed=-1, variation_strength=0.2)), fake_catalog())
    assert 0 <= drawn.seed_extras.variation_seed <= 2**32 - 1
    unused, _ = validate(Txt2ImgRequest(prompt="p", checkpoint="sd2-base", seed_extras=SeedExtras(variation_seed=4)),
                         fake_catalog())
    assert unused.seed_extras == SeedExtras()


def test_image_to_image_variation_and_tiling(components: ComponentCache) -> None:
    from pipeline_fixtures import sample_image

    from sd2_app.api.requests import Img2ImgRequest
    from sd2_app.pipelines.img2img import img2img

    c = components("sd2-base")
    base = Img2ImgRequest(prompt="a house", image=sample_image(64, 64), strength=0.8, sampling=SAMPLING)
    plain = img2img(c, base)
    zero = img2img(c, replace(base, seed_extras=SeedExtras(variation_seed=99, variation_strength=0.0)))
    varied = img2img(c, replace(base, seed_extras=SeedExtras(variation_seed=99, variation_strength=0.5)))
    tiled = img2img(c, replace(base, tiling=True))
    after = img2img(c, base)
    assert torch.equal(zero.latents, plain.latents) and torch.equal(after.latents, plain.latents)
    assert not torch.equal(varied.latents, plain.latents) and not torch.equal(tiled.latents, plain.latents)
    params = parse_parameters(varied.images[0].info["parameters"])
    assert (params["Variation seed"], params["Variation seed strength"]) == (99, 0.5)
    assert parse_parameters(tiled.images[0].info["parameters"])["Tiling"] is True


def test_image_to_image_refuses_seed_resize() -> None:
    from pipeline_fixtures import sample_image

    from sd2_app.api.requests import Img2ImgRequest
    from sd2_app.api.validation import validate
    from sd2_app.errors import InvalidRequest
    from tests.ui_doubles import fake_catalog

    request = Img2ImgRequest(prompt="p", image=sample_image(64, 64), checkpoint="sd2-base",
                             seed_extras=SeedExtras(resize_from=(96, 64)))
    with pytest.raises(InvalidRequest, match=r"^Seed resize applies to text to image only; leave it at 0 for image to image\.$"):
        validate(request, fake_catalog())
