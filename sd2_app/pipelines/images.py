"""Pixel <-> tensor conversions that reproduce the reference pipelines' image handling.

Everything here follows diffusers' `VaeImageProcessor` (diffusers image_processor.py) so a seed gives the reference's
image: sizes are floored to a multiple of the VAE factor, PIL resamples (Lanczos; bicubic for the x4
upscaler), values go to [-1, 1]; masks are grayscale and binarised at 0.5; outputs are rounded to uint8.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LANCZOS = Image.Resampling.LANCZOS
BICUBIC = Image.Resampling.BICUBIC


def floor_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """The largest (width, height) not above the input that the VAE can encode."""
    return width - width % factor, height - height % factor


def round_size(width: int, height: int, factor: int = 8) -> tuple[int, int]:
    """Nearest multiple of `factor` (at least one factor) for user-typed sizes; the caller reports a change."""
    return (max(factor, int(round(width / factor)) * factor), max(factor, int(round(height / factor)) * factor))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image).astype(np.float32) / 255.0  # (H, W, C) or (H, W)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]  # (1, C, H, W)


def resize(image: Image.Image, width: int, height: int, resample: Image.Resampling = LANCZOS) -> Image.Image:
    """Resize like the reference: always through PIL, which copies when the size already matches."""
    return image.resize((width, height), resample=resample)


def preprocess_image(
    image: Image.Image,
    width: int | None = None,
    height: int | None = None,
    *,
    factor: int = 8,
    resample: Image.Resampling = LANCZOS,
) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 in [-1, 1]; H, W default to the image's size floored to `factor`."""
    width = image.width if width is None else width
    height = image.height if height is None else height
    width, height = floor_size(width, height, factor)
    resized = resize(image, width, height, resample)
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    return _to_tensor(resized) * 2.0 - 1.0


def preprocess_mask(mask: Image.Image, width: int, height: int, *, factor: int = 8) -> torch.Tensor:
    """PIL mask -> (1, 1, H, W) float32 of 0/1: resized (Lanczos), then grayscale, then binarised at 0.5."""
    width, height = floor_size(width, height, factor)
    resized = resize(mask, width, height, LANCZOS)
    if resized.mode != "L":
        resized = resized.convert("L")
    values = _to_tensor(resized)
    return (values >= 0.5).to(torch.float32)


def postprocess(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images: round(clamp(x/2 + 0.5) * 255).

    The arithmetic runs where the images are (the GPU) and only uint8 crosses to the host: a quarter of
    the bytes, and no float pass over every pixel in numpy. The same fp32 operations and the same
    round-half-to-even as the reference's numpy code, so the bytes are identical.
    """
    x = (images.detach().float() / 2 + 0.5).clamp(0, 1)
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # (B, H, W, 3)
    return [Image.fromarray(a) for a in pixels.cpu().numpy()]


def grayscale_to_tensor(image: Image.Image) -> torch.Tensor:
    """A user depth map -> (1, H, W) float32, white = near: a float ("F") image's values as they are (16-bit
    and float maps, see api/image_inputs.py `to_depth`), any other mode as 8-bit grayscale in [0, 1]."""
    if image.mode == "F":
        return torch.from_numpy(np.array(image, dtype=np.float32))[None]
    return _to_tensor(image.convert("L"))[:, 0]
