"""Pixels <-> scaled latents through the VAE, with the precision and tiling rules of each task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sd2_app.pipelines.run_mode import NonFiniteError, RunMode
from sd2_app.pipelines.tiling import run_tiled
from sd2_app.samplers.base import NoiseSource, randn_from

# x4 VAE configs that lack it (or say 0.18215) mean this (diffusers pipeline_stable_diffusion_upscale.py)
X4_SCALING_FACTOR = 0.08333


def vae_factor(vae: torch.nn.Module) -> int:
    """Pixels per latent pixel: 8 for the SD2 VAE (4 levels), 4 for the x4 upscaler's (3 levels)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def scaling_factor(vae: torch.nn.Module) -> float:
    """The latent scale; the x4 VAE's old configs carry SD's 0.18215 or nothing, diffusers forces 0.08333."""
    factor = float(vae.config.scaling_factor)
    if vae_factor(vae) == 4 and factor == 0.18215:
        return X4_SCALING_FACTOR
    return factor


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _decoding_half(vae: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """The modules `vae.decode` runs: the encoder never takes part in a decode."""
    return (vae.post_quant_conv, vae.decoder)


@contextlib.contextmanager
def fp32_decoder(vae: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Decode in fp32 for a while (the x4 VAE overflows in fp16), then give the modules their dtype back.

    Only the decoding half is converted: the encoder (about 40% of the weights) would be cast there and back
    for nothing, with its fp32 copy adding to the decode's peak memory.
    """
    dtype = _dtype(vae.post_quant_conv)
    if dtype == torch.float32:
        yield vae
        return
    parts = _decoding_half(vae)
    for part in parts:
        part.float()
    try:
        yield vae
    finally:
        for part in parts:
            part.to(dtype)


def encode(vae: torch.nn.Module, image: torch.Tensor, generator: NoiseSource, rows: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) fp32 scaled latents, sampling the posterior like the
    reference (one draw of the posterior's shape from `generator`). `rows`: a batch of that many images sampled
    from the posterior of one (1, 3, H, W) image, each with its own draw (`generator` one per image)."""
    posterior = vae.encode(image.to(device=next(vae.parameters()).device, dtype=_dtype(vae)))
    shape = (rows or posterior.mean.shape[0], *posterior.mean.shape[1:])
    return (posterior.sample_with(randn_from(shape, generator, posterior.mean.dtype)) * scaling_factor(vae)).float()


def _decode_once(
    vae: torch.nn.Module, latents: torch.Tensor, force_fp32: bool, tile: int | None, overlap: int
) -> torch.Tensor:
    factor = vae_factor(vae)
    scale = scaling_factor(vae)
    context = fp32_decoder(vae) if force_fp32 else contextlib.nullcontext(vae)
    with context as model:
        dtype = _dtype(model.post_quant_conv)
        z = (latents / scale).to(dtype)

        def one_tile(top: int, left: int, h: int, w: int) -> torch.Tensor:
            return model.decode(z[:, :, top : top + h, left : left + w]).float()

        height, width = z.shape[-2:]
        if tile is None or max(height, width) <= tile:
            return model.decode(z).float()
        return run_tiled(one_tile, height, width, tile, overlap, scale=factor)


def decode(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    *,
    force_fp32: bool = False,
    tile: int | None = None,
    overlap: int = 0,
    quarter_tiles: bool = False,
) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, h*f, w*f) fp32 in [-1, 1].

    With `tile`, latents larger than a tile are decoded in overlapping tiles and cross-faded, which bounds
    the decoder's memory (a 512x512 x4 latent would need tens of GB in one pass). `quarter_tiles` (the
    fallback ladder's low-memory rung) tiles any decode without its own `tile` in 2x2 tiles. NaN/inf never
    becomes pixels: non-finite latents raise `NonFiniteError("latents")`, a non-finite result
    `NonFiniteError("image")`; the fallback ladder (sd2_app/api/fallback.py) decides what to try next.

    The latents' check is read together with the decode's (one host synchronisation, after the decode):
    waiting for it before decoding would let the GPU finish the sampling loop and idle while the host
    launches the decoder's first kernels. Non-finite latents (rare) cost a wasted decode instead.
    """
    latents_finite = torch.isfinite(latents).all()  # on the device; read below
    if tile is None and quarter_tiles:
        tile = max(2, (max(latents.shape[-2:]) + 1) // 2)  # 2x2 tiles: about a quarter of the activations
        overlap = tile // 4
    pixels = _decode_once(vae, latents, force_fp32, tile, overlap)
    latents_ok, pixels_ok = torch.stack([latents_finite, torch.isfinite(pixels).all()]).tolist()
    if not latents_ok:
        raise NonFiniteError("latents")
    if not pixels_ok:
        raise NonFiniteError("image")
    return pixels


def decode_in(mode: RunMode, vae: torch.nn.Module, latents: torch.Tensor, *, force_fp32: bool = False,
              tile: int | None = None, overlap: int = 0) -> torch.Tensor:
    """`decode` with one attempt's switches of the fallback ladder (an fp32 decode, quarter tiles)."""
    return decode(vae, latents, force_fp32=force_fp32 or mode.fp32_decode, tile=tile, overlap=overlap,
                  quarter_tiles=mode.tiled_decode)
