"""x4 upscaling on the tiny checkpoint: parity with diffusers, and tiles that blend without seams."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import (ComponentCache, assert_matches_reference, reference_pipeline, reference_run,
                                    sample_image)
from torch import nn

from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.loop import Conditioning, Tiling, run_sampling
from sd2_app.pipelines.tiling import run_tiled, tile_starts
from sd2_app.pipelines.upscale import upscale
from sd2_app.pipelines.vae_io import decode
from sd2_app.api.requests import Sampling, UpscaleRequest
from sd2_app.samplers import SAMPLERS, SchedulerConfig, make_schedule

pytest.importorskip("diffusers")



@pytest.mark.parametrize(("sampler", "size", "batch", "negative", "noise_level", "cfg"), [
    ("DDIM", (22, 13), 2, "blurry", 30, 9.0),  # sides not multiples of 8 (nor of 4: floored to 20x12)
    ("Euler a", (24, 16), 1, "", 0, 9.0),
    ("DDIM", (24, 16), 2, "", 20, 1.0),  # guidance off: low-res channels and labels not doubled
])
def test_upscale_matches_diffusers(
    components: ComponentCache, sampler: str, size: tuple[int, int], batch: int, negative: str, noise_level: int,
    cfg: float,
) -> None:
    image = sample_image(*size)
    sampling = Sampling(sampler=sampler, steps=4, seed=11, batch_size=batch, cfg_scale=cfg)
    ours = upscale(components("x4-upscaler"), UpscaleRequest(
        prompt="sharp photo", negative_prompt=negative, image=image, noise_level=noise_level, sampling=sampling))
    pipe = reference_pipeline("x4-upscaler", sampler)
    assert_matches_reference(ours, reference_run(
        pipe, 11, prompt="sharp photo", negative_prompt=negative or None, image=image, noise_level=noise_level,
        num_inference_steps=4, guidance_scale=cfg, num_images_per_prompt=batch,
    ))
    width, height = size[0] // 4 * 4, size[1] // 4 * 4
    assert (ours.width, ours.height) == (4 * width, 4 * height) and ours.images[0].size == (4 * width, 4 * height)


def test_run_tiled_reassembles_a_local_function_exactly() -> None:
    x = torch.randn(2, 3, 37, 50)

    def local(top: int, left: int, h: int, w: int) -> torch.Tensor:
        piece = x[:, :, top : top + h, left : left + w] * 2 + 1
        return piece.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # a "decoder" with factor 4

    expected = (x * 2 + 1).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.allclose(run_tiled(local, 37, 50, tile=16, overlap=6, scale=4), expected, atol=1e-5)
    starts = tile_starts(50, 16, 6)
    assert starts[0] == 0 and starts[-1] == 50 - 16 and tile_starts(10, 16, 6) == [0]
    assert all(16 - (b - a) >= 6 for a, b in zip(starts, starts[1:], strict=False))  # overlaps of >= 6


class _PointwiseUNet(nn.Module):
    """A UNet stand-in without spatial context: tiling must then change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(7, 4, 1)

    def forward(self, x: torch.Tensor, t: float, context: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        scale = 1 + context.mean(dim=(1, 2))[:, None, None, None] + class_labels[:, None, None, None] / 100
        return torch.tanh(self.mix(x)) * scale


def test_tiled_sampling_equals_untiled_for_a_local_model() -> None:
    torch.manual_seed(0)
    unet = _PointwiseUNet()
    cond = Conditioning(context=torch.randn(2, 77, 8), concat=torch.randn(2, 3, 40, 56),
                        class_labels=torch.tensor([20, 20]))
    config = SchedulerConfig(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02,
                             prediction_type="v_prediction", steps_offset=1)
    schedule = make_schedule(config, "DDIM", 4)
    x = torch.randn(1, 4, 40, 56)

    def run(tiling: Tiling | None) -> torch.Tensor:
        return run_sampling(unet, cond, x, schedule, SAMPLERS["DDIM"], cfg_scale=9.0, guidance_rescale=0.0,
                            prediction_type="v_prediction", generator=None, tiling=tiling)

    assert torch.allclose(run(Tiling(tile=16, overlap=8)), run(None), atol=1e-5)


def _column_jumps(image: np.ndarray) -> np.ndarray:
    """Mean |horizontal difference| per column boundary, (W-1,)."""
    return np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))


def test_tiled_upscale_has_no_seams_and_stays_close(components: ComponentCache) -> None:
    image = sample_image(48, 40)
    sampling = Sampling(sampler="DDIM", steps=3, seed=3, cfg_scale=9.0)
    whole = upscale(components("x4-upscaler"), UpscaleRequest(prompt="p", image=image, tile_size=128,
                                                              sampling=sampling))
    tiled = upscale(components("x4-upscaler"), UpscaleRequest(prompt="p", image=image, tile_size=32,
                                                              sampling=sampling))
    assert tiled.images[0].size == whole.images[0].size == (192, 160)
    a, b = np.asarray(tiled.images[0]), np.asarray(whole.images[0])
    # Tile transitions (latent columns 16..32 blend the two tiles) are no rougher than the rest of the image.
    jumps = _column_jumps(a)
    edges = [4 * s - 1 for s in (16, 32)]
    assert jumps[edges].max() <= np.percentile(_column_jumps(b), 99)
    # The tiny random UNet has no real notion of locality; still, the mean colour of 16x16 blocks agrees.
    pooled = lambda x: x.astype(np.float32).reshape(10, 16, 12, 16, 3).mean(axis=(1, 3))  # noqa: E731
    assert np.abs(pooled(a) - pooled(b)).mean() < 12
    assert "Tile size" in tiled.images[0].info["parameters"]


def test_tiled_vae_decode_is_close(components: ComponentCache) -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 4, 40, 48) * 0.25
    vae = components("x4-upscaler").vae
    full, tiled = decode(vae, z), decode(vae, z, tile=32, overlap=8)
    assert tiled.shape == full.shape == (1, 3, 160, 192)
    assert (tiled - full).abs().mean() < 0.02 * (full.max() - full.min())


def test_fp32_decode_converts_only_the_decoding_half_and_gives_it_back(components: ComponentCache) -> None:
    """The x4 VAE decodes in fp32: the same pixels as an fp32 copy of the same (fp16) weights, the encoder
    left in fp16 meanwhile (it takes no part), and every weight back in fp16 afterwards."""
    torch.manual_seed(0)
    z = torch.randn(1, 4, 6, 5) * 0.25
    vae = copy.deepcopy(components("x4-upscaler").vae).half()
    as_fp32 = copy.deepcopy(vae).float()
    during: list[tuple[torch.dtype, torch.dtype]] = []
    vae.decoder.register_forward_pre_hook(
        lambda module, args: during.append((vae.encoder.conv_in.weight.dtype, vae.decoder.conv_in.weight.dtype)))
    assert torch.equal(decode(vae, z, force_fp32=True), decode(as_fp32, z))
    assert during == [(torch.float16, torch.float32)]
    assert {p.dtype for p in vae.parameters()} == {torch.float16}


def test_upscale_rejects_noise_level_over_max_and_cancels(components: ComponentCache) -> None:
    image = sample_image(24, 16)
    with pytest.raises(InvalidRequest, match="noise level"):
        upscale(components("x4-upscaler"), UpscaleRequest(prompt="p", image=image, noise_level=351))

    def cancel(step: int, total: int, latents: torch.Tensor) -> None:
        if step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        upscale(components("x4-upscaler"), UpscaleRequest(prompt="p", image=image, tile_size=8,
                                                          sampling=Sampling(sampler="DDIM", steps=4, seed=1)),
                on_step=cancel)
