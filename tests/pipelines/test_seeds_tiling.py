"""Variation seeds, seed resize and seamless tiling on the tiny checkpoints.

Variation and resize: the start noise is built here independently (torch.randn and a slerp written out
with numpy) and fed to diffusers' pipeline as its `latents`; our run with the options must match it.
Tiling: the wrap-around seam is as smooth as the interior, a tiled view of the networks is exactly
equivariant to circular shifts, it shares the live modules' tensors, and the live modules pad with zeros
while it exists and afterwards.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, reference_run

from sd2_app.api.requests import Sampling, SeedExtras, Txt2ImgRequest
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.seamless import tiled_components, tiled_view
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


def test_tiled_view_makes_unet_and_decoder_shift_equivariant(components: ComponentCache) -> None:
    c = components("sd2-base")
    tiled = tiled_components(c)
    x = _randn((1, 4, 16, 16), 3)
    context = _randn((1, 77, c.text_encoder.config.hidden_size), 4)
    t = torch.tensor([500.0])

    def shifted_error(fn: object, rows: int, cols: int, scale: int) -> float:
        """fn(x rolled) against fn(x) rolled by `scale` times as many pixels."""
        out = fn(x)
        rolled = fn(torch.roll(x, shifts=(rows, cols), dims=(2, 3)))
        return float((rolled - torch.roll(out, shifts=(rows * scale, cols * scale), dims=(2, 3))).abs().max())

    def unet(parts: object) -> object:
        return lambda latents: parts.unet(latents, t, context)

    def decoder(parts: object) -> object:
        return lambda latents: parts.vae.decode(latents)

    with torch.inference_mode():
        assert shifted_error(unet(tiled), 8, 8, 1) < 1e-4  # three stride-2 levels: shifts of 8 latent pixels
        assert shifted_error(decoder(tiled), 3, 5, 8) < 1e-4
        assert shifted_error(unet(c), 8, 8, 1) > 1e-2  # the live modules, zero padding: the edges differ
        assert shifted_error(decoder(c), 3, 5, 8) > 1e-2


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
    assert _conv_modes(c.unet, c.vae) == {"zeros"}


def _conv_modes(*modules: torch.nn.Module) -> set[str]:
    return {m.padding_mode for net in modules for m in net.modules() if isinstance(m, torch.nn.Conv2d)}


def test_tiled_view_shares_every_tensor_and_leaves_the_live_modules_padding_with_zeros(
    components: ComponentCache
) -> None:
    c = components("sd2-base")
    x, t = _randn((1, 4, 16, 16), 3), torch.tensor([500.0])
    context = _randn((1, 77, c.text_encoder.config.hidden_size), 4)
    with torch.inference_mode():
        before = c.unet(x, t, context), c.vae.decode(x)
        tiled = tiled_components(c)
        during = c.unet(x, t, context), c.vae.decode(x)  # an untiled job's calls while the view exists
        viewed = tiled.unet(x, t, context), tiled.vae.decode(x)
    assert all(torch.equal(a, b) for a, b in zip(before, during))
    assert not any(torch.equal(a, b) for a, b in zip(before, viewed))
    assert _conv_modes(c.unet, c.vae) == {"zeros"} and _conv_modes(tiled.unet, tiled.vae) == {"circular"}
    for live, view in ((c.unet, tiled.unet), (c.vae, tiled.vae)):
        assert view is not live and not set(map(id, view.modules())) & set(map(id, live.modules()))
        live_tensors = [*live.named_parameters(), *live.named_buffers()]
        view_tensors = [*view.named_parameters(), *view.named_buffers()]
        assert [name for name, _ in view_tensors] == [name for name, _ in live_tensors] and live_tensors
        assert all(a is b and a.data_ptr() == b.data_ptr() for (_, a), (_, b) in zip(live_tensors, view_tensors))


def test_tiled_view_shares_tensors_held_in_plain_attributes() -> None:
    """The manager keeps a pinned host copy of a module's tensors as a list attribute: the view shares it."""
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    conv.host_copy = [conv.weight.detach().clone(), conv.bias.detach().clone()]
    view = tiled_view(conv)
    assert view.padding_mode == "circular" and conv.padding_mode == "zeros"
    assert len(view.host_copy) == 2 and all(a is b for a, b in zip(view.host_copy, conv.host_copy))


def test_tiled_view_of_a_graph_wrapped_unet_is_the_plain_network(components: ComponentCache) -> None:
    """A tiled job never replays (or records) the live UNet's CUDA graphs: its view is of the network."""
    from sd2_app.accel.graphs.unet import CudaGraphUNet

    c = components("sd2-base")
    wrapped = CudaGraphUNet(c.unet)
    view = tiled_components(replace(c, unet=wrapped)).unet
    assert type(view) is type(c.unet) and _conv_modes(view) == {"circular"}
    assert next(view.parameters()) is next(c.unet.parameters())


def test_tiled_view_of_a_compiled_module_runs_eagerly() -> None:
    """Module.compile's forward is bound to the live module: the view must not call it."""
    from sd2_app.nn.config import VAEConfig
    from sd2_app.nn.vae import AutoencoderKL
    from sd2_app.testing.configs import tiny_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.from_dict(tiny_vae_config("sd2"))).eval()
    expected = tiled_view(vae)
    vae.decoder.conv_in.compile(backend="eager")
    view = tiled_view(vae)
    assert vae.decoder.conv_in._compiled_call_impl is not None
    assert view.decoder.conv_in._compiled_call_impl is None and view.decoder.conv_in.padding_mode == "circular"
    z = _randn((1, 4, 6, 5), 1)
    with torch.no_grad():
        assert torch.equal(view.decode(z), expected.decode(z))


def test_tiled_view_of_a_fused_unet_has_its_own_shared_projections() -> None:
    """The fused twins' shared-projection caches are state: the view's are its own (so are the layers they
    read, which share the weights), and the network's pre-hook clears the view's, not the live one's."""
    from sd2_app.accel.fused import fuse_modules
    from sd2_app.accel.fused.attention import FusedAttention
    from sd2_app.nn.config import UNetConfig
    from sd2_app.nn.unet import UNet
    from sd2_app.testing.configs import tiny_unet_config

    torch.manual_seed(0)
    plain = UNet(UNetConfig.from_dict(tiny_unet_config("sd2"))).eval()
    fused = UNet(UNetConfig.from_dict(tiny_unet_config("sd2"))).eval()
    fused.load_state_dict(plain.state_dict())
    assert fuse_modules(fused) > 0
    view = tiled_view(fused)

    def shared(net: torch.nn.Module) -> object:
        return next(m.context_projection[0] for m in net.modules()
                    if isinstance(m, FusedAttention) and m.context_projection is not None)

    live_shared, view_shared = shared(fused), shared(view)
    assert view_shared is not live_shared
    view_layers = set(map(id, view.modules()))
    assert all(id(linear) in view_layers for linear in view_shared.linears)
    assert all(a.weight is b.weight for a, b in zip(live_shared.linears, view_shared.linears))
    assert [hook.__self__ for hook in view._forward_pre_hooks.values()] == [view_shared]
    x, t, context = _randn((1, 4, 16, 16), 3), torch.tensor([500.0]), _randn((1, 77, 32), 4)
    with torch.no_grad():
        got, expected = view(x, t, context), tiled_view(plain)(x, t, context)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert live_shared._output is None  # the view's forward never filled the live cache


def test_a_tiled_request_never_shares_a_batch_loop_with_untiled_ones(components: ComponentCache) -> None:
    """Cross-request batching (pipelines/batch.py) runs one loop over its first run's UNet: a tiled request's
    run has its own view, so it runs alone and equals its solo run exactly; the untiled ones stay untiled."""
    from sd2_app.pipelines.batch import run_batch
    from sd2_app.pipelines.txt2img import prepare_txt2img

    c = components("sd2-base")
    base = Txt2ImgRequest(prompt="a red house", width=64, height=64, sampling=SAMPLING)
    requests = [base, replace(base, tiling=True, sampling=replace(SAMPLING, seed=22)),
                replace(base, sampling=replace(SAMPLING, seed=23))]
    solo = [txt2img(c, request) for request in requests]
    batched = run_batch(c, requests, [None] * 3, prepare_txt2img)
    assert torch.equal(batched[1].latents, solo[1].latents)
    assert parse_parameters(batched[1].images[0].info["parameters"])["Tiling"] is True
    for index in (0, 2):  # batched together: within the CPU kernels' row-block rounding (tests/pipelines/test_batch.py)
        assert (batched[index].latents - solo[index].latents).abs().max().item() < 1e-3
    assert _conv_modes(c.unet, c.vae) == {"zeros"}


def test_fused_modules_pad_circularly_too() -> None:
    """The accel twins (sub-pixel upsampler, fused resnets) in a tiled view pad circularly like the plain
    modules; the fused live VAE keeps padding with zeros."""
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
    with torch.no_grad():
        expected, got = tiled_view(plain).decode(z), tiled_view(fused).decode(z)
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
        assert (fused.decode(z) - expected).abs().max().item() > 1e-2  # the live twins pad with zeros


@pytest.mark.parametrize(("extras", "message"), [
    (SeedExtras(variation_seed=3, variation_strength=1.5), "Variation strength must be between 0 and 1, got 1.5."),
    (SeedExtras(variation_seed=-7, variation_strength=0.5),
     "Variation seed must be -1 (random) or between 0 and 4294967295, got -7."),
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
    from tests.pipeline_fixtures import sample_image

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
    from tests.pipeline_fixtures import sample_image

    from sd2_app.api.requests import Img2ImgRequest
    from sd2_app.api.validation import validate
    from sd2_app.errors import InvalidRequest
    from tests.ui_doubles import fake_catalog

    request = Img2ImgRequest(prompt="p", image=sample_image(64, 64), checkpoint="sd2-base",
                             seed_extras=SeedExtras(resize_from=(96, 64)))
    with pytest.raises(InvalidRequest, match=r"^Seed resize applies to text to image only; leave it at 0 for image to image\.$"):
        validate(request, fake_catalog())
