"""Start noise with A1111's "Extra" seed options: a variation seed and "resize seed from width/height".

Learned from A1111 modules/processing.py (`create_random_tensors`) and its `slerp`; written for this app:

- Variation (text and image to image): the start noise is the spherical interpolation from the seed's noise to the variation seed's
  noise at `variation_strength` (0 = the seed's noise exactly, 1 = the variation seed's exactly). A1111
  interpolates each (channel, column) slice separately; here each image's noise is one vector, the
  textbook slerp (Shoemake 1985) of two unit-normal draws.
- Seed resize (text to image): the noise is drawn at the latent size of `resize_from` and centred on a draw at the real size
  (both from the seed), cropping where the real size is smaller, so the composition a seed gave at one size
  survives a change of size.

The seed's draw comes first from the job's generator, like a plain text-to-image job's start noise, so the
sampler's later draws (ancestral samplers) follow the same stream as they would without the extras.
"""

from __future__ import annotations

import torch

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import SeedExtras, numbered_variation_seeds
from sd2_app.pipelines.metadata import Settings
from sd2_app.pipelines.sampling import draw_noise, noise_source, restarted
from sd2_app.samplers.base import NoiseSource, device_of

PARALLEL_DOT = 0.9995  # above this cosine the two draws are almost parallel: interpolate linearly


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of each image's noise, (B, ...) -> (B, ...); t=0 gives `low`, t=1 `high`."""
    if t <= 0.0:
        return low
    if t >= 1.0:
        return high
    flat_low, flat_high = low.flatten(1).double(), high.flatten(1).double()  # (B, N)
    cos = (flat_low / flat_low.norm(dim=1, keepdim=True) * flat_high / flat_high.norm(dim=1, keepdim=True)).sum(1)
    omega = torch.acos(cos.clamp(-1.0, 1.0))[:, None]  # (B, 1)
    linear = cos[:, None] > PARALLEL_DOT
    sin_omega = torch.sin(omega).clamp_min(1e-12)
    w_low = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * omega) / sin_omega)
    w_high = torch.where(linear, t, torch.sin(t * omega) / sin_omega)
    return (w_low * flat_low + w_high * flat_high).to(low.dtype).reshape(low.shape)


def place_centred(noise: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """`canvas` (B, C, H, W) with `noise` (B, C, h, w) centred on it; the parts outside are cropped off."""
    out = canvas.clone()
    (h, w), (big_h, big_w) = noise.shape[-2:], canvas.shape[-2:]
    rows, cols = min(h, big_h), min(w, big_w)
    top, left = max(big_h - h, 0) // 2, max(big_w - w, 0) // 2  # where the noise goes on the canvas
    crop_top, crop_left = max(h - big_h, 0) // 2, max(w - big_w, 0) // 2  # what of the noise is kept
    out[:, :, top : top + rows, left : left + cols] = noise[:, :, crop_top : crop_top + rows,
                                                            crop_left : crop_left + cols]
    return out


def uses_extras(extras: SeedExtras) -> bool:
    """Whether `extras` changes the start noise at all."""
    return extras.variation_strength > 0 or extras.resize_from is not None


def seeded_noise(
    shape: tuple[int, ...],
    generator: NoiseSource,
    extras: SeedExtras,
    factor: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Unit start noise of `shape` (B, C, h, w), fp32, with the variation and resize of `extras` applied.

    `generator` is the job's (seeded with its images' seeds, nothing drawn yet); `factor` is the VAE's.
    """
    noise_shape = shape
    if extras.resize_from is not None:
        width, height = extras.resize_from
        noise_shape = (*shape[:2], height // factor, width // factor)
    noise = vary(draw_noise(noise_shape, generator, device, dtype), generator, extras, dtype)
    if noise_shape != shape:
        canvas = draw_noise(shape, restarted(generator), device, dtype)
        noise = place_centred(noise, canvas)
    return noise


def vary(noise: torch.Tensor, generator: NoiseSource, extras: SeedExtras, dtype: torch.dtype) -> torch.Tensor:
    """`noise` (B, ...) slerped towards the variation seeds' draw of the same shape, image x's from the variation
    seed + x (api/requests.py, `numbered_variation_seeds`), on `generator`'s device; unchanged at strength 0."""
    if extras.variation_strength <= 0:
        return noise
    assert extras.variation_seed is not None, "the service resolves the variation seed"
    seeds = numbered_variation_seeds(extras.variation_seed, noise.shape[0])
    other = draw_noise(tuple(noise.shape), noise_source(device_of(generator), seeds), noise.device, dtype)
    return slerp(extras.variation_strength, noise, other)


def seed_settings(extras: SeedExtras) -> Settings:
    """The parameters text's keys for the seed extras in use (A1111's names)."""
    settings: Settings = {}
    if extras.variation_strength > 0:
        settings[keys.VARIATION_SEED] = extras.variation_seed
        settings[keys.VARIATION_SEED_STRENGTH] = extras.variation_strength
    if extras.resize_from is not None:
        settings[keys.SEED_RESIZE_FROM] = f"{extras.resize_from[0]}x{extras.resize_from[1]}"
    return settings
